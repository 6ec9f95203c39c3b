/* main.c - ESP-IDF entry: run the EdgeSmith firmware app in its own task (the app loop blocks
 * on the UART with timeouts, so other tasks keep running). */
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"

#include "es_app.h"
#include "es_hal.h"

static void edgesmith_task(void *arg)
{
    (void)arg;
    hal_init();
    es_app_run();
}

void app_main(void)
{
    /* stack: the app keeps frames and buffers static; 16 KiB covers the kernels' locals */
    xTaskCreatePinnedToCore(edgesmith_task, "edgesmith", 16384, NULL, 5, NULL, 1);
}
