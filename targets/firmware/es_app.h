/*
 * es_app.h - the EdgeSmith firmware app: protocol dispatcher, A/B weight slots, INFER.
 *
 * A board's main() calls hal_init() then es_app_run(), which never returns. es_app_boot() and
 * es_app_handle() are exposed for boards that drive their own loop (ESP-IDF task).
 */
#ifndef ES_APP_H
#define ES_APP_H

#include <stdint.h>

#include "es_proto.h"

#ifndef ES_FW_VERSION
#define ES_FW_VERSION "edgesmith-fw 1.0"
#endif

/* Read the boot record, pick the slot to run (trial / revert), reset per-boot state. */
void es_app_boot(void);

/* Execute one received frame and send its response. */
void es_app_handle(const es_frame *frame);

/* es_app_boot() then serve frames forever. */
void es_app_run(void);

#endif /* ES_APP_H */
