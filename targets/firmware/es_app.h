/*
 * es_app.h - the EdgeSmith firmware app: protocol dispatcher, A/B weight slots, INFER, DETECT.
 *
 * A board's main() calls hal_init() then es_app_run(), which never returns. es_app_boot() and
 * es_app_handle() are exposed for boards that drive their own loop (ESP-IDF task).
 */
#ifndef ES_APP_H
#define ES_APP_H

#include <stdint.h>

#include "es_proto.h"

/* Detector commands (targets/protocol.md): DETECT runs the model and its post-processing,
 * DETECTIONS pages through the result. Firmware built for a classifier answers both with
 * ERR UNKNOWN_COMMAND. */
#define ES_CMD_DETECT 0x0Du
#define ES_CMD_DETECTIONS 0x0Eu
/* One detection on the wire: x1, y1, x2, y2, score (float32), label u16, reserved u16. */
#define ES_DETECTION_RECORD_BYTES 24u
/* DETECT OK header: network cycles u32, post-processing cycles u32, count u16, inline u16. */
#define ES_DETECT_HEADER_BYTES 12u

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
