/*
 * hal_esp32s3.c - ESP32-S3 HAL of the EdgeSmith firmware app on ESP-IDF (>= 5.1).
 *
 * UART0 (the USB-UART bridge of the DevKitC) at 115200 via the IDF driver, esp_timer for
 * milliseconds, the LX7 CCOUNT (esp_cpu_get_cycle_count) for INFER cycles, and a data
 * partition named "es_slots" (partitions.csv of the example) as the slot storage: memory-mapped
 * with esp_partition_mmap for reading blobs in place, erased/programmed with esp_partition_*.
 * Not compiled here (no Xtensa toolchain); the app code it drives is tested through the host build.
 */
#include <stdint.h>

#include "driver/uart.h"
#include "esp_cpu.h"
#include "esp_partition.h"
#include "esp_system.h"
#include "esp_timer.h"
#include "freertos/FreeRTOS.h"

#include "es_app.h"
#include "es_hal.h"

#define ES_UART UART_NUM_0
#define ES_BAUD 115200
#define ES_SECTOR 4096u

static const esp_partition_t *slots_part;
static const uint8_t *slots_map;
static esp_partition_mmap_handle_t slots_handle;
static uint32_t flash_ops;

void hal_init(void)
{
    const uart_config_t cfg = {
        .baud_rate = ES_BAUD,
        .data_bits = UART_DATA_8_BITS,
        .parity = UART_PARITY_DISABLE,
        .stop_bits = UART_STOP_BITS_1,
        .flow_ctrl = UART_HW_FLOWCTRL_DISABLE,
        .source_clk = UART_SCLK_DEFAULT,
    };
    const void *map = NULL;
    uart_driver_install(ES_UART, 4096, 4096, 0, NULL, 0);
    uart_param_config(ES_UART, &cfg);
    slots_part = esp_partition_find_first(ESP_PARTITION_TYPE_DATA, ESP_PARTITION_SUBTYPE_ANY, "es_slots");
    if (slots_part != NULL &&
        esp_partition_mmap(slots_part, 0, slots_part->size, ESP_PARTITION_MMAP_DATA, &map, &slots_handle) == ESP_OK) {
        slots_map = (const uint8_t *)map;
    }
}

uint32_t hal_millis(void)
{
    return (uint32_t)(esp_timer_get_time() / 1000);
}

uint32_t hal_cycles(void)
{
    return (uint32_t)esp_cpu_get_cycle_count();
}

int hal_uart_read(uint8_t *byte, uint32_t timeout_ms)
{
    return uart_read_bytes(ES_UART, byte, 1, pdMS_TO_TICKS(timeout_ms)) == 1;
}

void hal_uart_write(const uint8_t *data, uint32_t len)
{
    uart_write_bytes(ES_UART, (const char *)data, len);
    uart_wait_tx_done(ES_UART, pdMS_TO_TICKS(100));
}

const char *hal_board_name(void)
{
    return "esp32s3";
}

const uint8_t *hal_flash_base(void)
{
    return slots_map;
}

uint32_t hal_flash_size(void)
{
    return slots_map != NULL ? (uint32_t)slots_part->size : 0u;
}

uint32_t hal_flash_sector_size(void)
{
    return ES_SECTOR;
}

uint32_t hal_flash_program_unit(void)
{
    return 1;
}

uint32_t hal_flash_op_count(void)
{
    return flash_ops;
}

int hal_flash_erase(uint32_t offset, uint32_t len)
{
    flash_ops++;
    return slots_part != NULL && esp_partition_erase_range(slots_part, offset, len) == ESP_OK ? 0 : -1;
}

int hal_flash_write(uint32_t offset, const uint8_t *data, uint32_t len)
{
    flash_ops++;
    return slots_part != NULL && esp_partition_write(slots_part, offset, data, len) == ESP_OK ? 0 : -1;
}

void hal_reset(void)
{
    esp_restart();
}
