/*
 * es_app_detect.c - the detector commands of the firmware app (targets/protocol.md, "Detectors").
 *
 * A detector model (model.h defines MODEL_DETECT, exported with the run's postprocess.json) answers
 * DETECT: the network, then es_detect_run() (decode + NMS) on its int8 outputs with the I/O
 * quantization record of the weights that run now, so a blob update with new output scales needs
 * no new firmware; DETECTIONS pages through the last result. A classifier build answers both with
 * ERR UNKNOWN_COMMAND.
 */
#include "es_app.h"
#include "es_app_internal.h"

#include <stddef.h>

#include "es_hal.h"
#include "es_reply.h"
#include "es_util.h"
#include "model.h"

#ifdef MODEL_DETECT
/* decode + NMS state (lookup tables, candidates, boxes) and the last DETECT's result */
static uint32_t detect_work[(MODEL_DETECT_WORK_BYTES + 3u) / 4u];
static es_detection detections[MODEL_DETECT_MAX_DET];
static uint32_t detection_count;
#endif

#ifdef MODEL_DETECT
/* The I/O quantization record of the weights that run now (a blob's, or the compiled-in ones). */
static const int32_t *running_io_record(void)
{
    const void *const *table = es_app_running_table();
    return table == NULL ? model_io_quant_default : (const int32_t *)table[MODEL_IO_QUANT_INDEX];
}

static void put_f32(uint8_t *p, float v)
{
    union {
        float f;
        uint32_t u;
    } bits;
    bits.f = v;
    es_put_u32(p, bits.u);
}

/* Detections [first, first + n) as wire records at p. */
static void put_detections(uint8_t *p, uint32_t first, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; ++i) {
        const es_detection *d = &detections[first + i];
        uint8_t *r = p + ES_DETECTION_RECORD_BYTES * i;
        put_f32(r, d->x1);
        put_f32(r + 4, d->y1);
        put_f32(r + 8, d->x2);
        put_f32(r + 12, d->y2);
        put_f32(r + 16, d->score);
        es_put_u16(r + 20, (uint16_t)d->label);
        es_put_u16(r + 22, 0u);
    }
}

void es_app_detect_boot(void)
{
    detection_count = 0;
    /* lookup tables for the weights that now run, so DETECT's time is decode + NMS only (a
     * failure here shows up again, with its status, on the first DETECT) */
    (void)es_detect_prepare(&model_detect_config, running_io_record(), detect_work, (uint32_t)sizeof detect_work);
}

#define MAX_RECORDS_PER_FRAME ((ES_MAX_PAYLOAD - ES_DETECT_HEADER_BYTES) / ES_DETECTION_RECORD_BYTES)

void es_app_cmd_detect(const es_frame *f)
{
    uint32_t net_cycles, post_cycles, start, inline_n;
    int8_t *outs[MODEL_NUM_OUTPUTS];
    uint8_t *p = es_reply_payload();
    int rc;
    es_msg m;
    if (!es_app_take_input(f) || !es_app_timed_run(f, &net_cycles)) {
        return;
    }
    es_app_output_ptrs(outs);
    start = hal_cycles();
    rc = es_detect_run(&model_detect_config, running_io_record(), (const int8_t *const *)outs, detect_work,
                       (uint32_t)sizeof detect_work, detections, MODEL_DETECT_MAX_DET, &detection_count);
    post_cycles = hal_cycles() - start;
    if (rc != 0) {
        detection_count = 0;
        m = es_reply_err_begin(ES_ERR_BAD_ARGS);
        es_msg_str(&m, "post-processing returned es_status ");
        es_msg_u32(&m, (uint32_t)rc);
        es_reply_err_send(f, &m);
        return;
    }
    es_app_count_inference(net_cycles);
    inline_n = detection_count < MAX_RECORDS_PER_FRAME ? detection_count : MAX_RECORDS_PER_FRAME;
    es_put_u32(p, net_cycles);
    es_put_u32(p + 4, post_cycles);
    es_put_u16(p + 8, (uint16_t)detection_count);
    es_put_u16(p + 10, (uint16_t)inline_n);
    put_detections(p + ES_DETECT_HEADER_BYTES, 0, inline_n);
    es_reply_ok(f, (uint16_t)(ES_DETECT_HEADER_BYTES + ES_DETECTION_RECORD_BYTES * inline_n));
}

void es_app_cmd_detections(const es_frame *f)
{
    uint32_t first, n;
    if (f->length != 4u) {
        es_reply_err(f, ES_ERR_BAD_ARGS, "DETECTIONS needs first u16 and count u16");
        return;
    }
    first = es_get_u16(f->payload);
    n = es_get_u16(f->payload + 2);
    if (n > ES_MAX_PAYLOAD / ES_DETECTION_RECORD_BYTES || first > detection_count || n > detection_count - first) {
        es_reply_err(f, ES_ERR_BAD_ARGS, "DETECTIONS range runs past the last DETECT's result (or MAX_PAYLOAD)");
        return;
    }
    put_detections(es_reply_payload(), first, n);
    es_reply_ok(f, (uint16_t)(ES_DETECTION_RECORD_BYTES * n));
}
#else
void es_app_detect_boot(void)
{
}

void es_app_cmd_detect(const es_frame *f)
{
    es_reply_err(f, ES_ERR_UNKNOWN_COMMAND, "DETECT: this firmware runs a classifier; use INFER "
                                            "(detectors: export with the run's postprocess.json)");
}

void es_app_cmd_detections(const es_frame *f)
{
    es_reply_err(f, ES_ERR_UNKNOWN_COMMAND, "DETECTIONS: this firmware runs a classifier; use INFER");
}
#endif
