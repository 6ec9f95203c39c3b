/*
 * es_detect.h - NanoDet / GFL detection post-processing on the model's int8 outputs.
 *
 * Follows trainer/detection/postprocess_np.py step for step: priors at cell centres level by
 * level (row-major), class score = sigmoid(logit) kept when > score_thr, at most pre_nms_topk
 * (prior, class) candidates (highest score first, ties: lower index), box sides = expected value
 * of the softmax over 0..reg_max times the stride, clip to the input, class-aware greedy NMS
 * (IoU > iou_thr suppresses; boxes of different classes never suppress each other), at most
 * max_det results, best first.
 *
 * Outputs are the graph's int8 NHWC tensors, per level: class logits [1, H, W, num_classes] and
 * distribution logits [1, H, W, 4 * (reg_max + 1)] (sides left, top, right, bottom).
 *
 * Quantization: the lookup tables (sigmoid of every int8 class logit, exp(-scale * k) for the
 * softmax) are built on the device from the I/O quantization record of the model that is
 * actually running (the weights table's io entry: int32 zero point + float32 scale bits per
 * input, then per output), so a weight-blob update with new output scales needs no new code.
 * es_detect_run() rebuilds them whenever that record differs from the one they were built for.
 *
 * Float32 arithmetic (an FPU, or libgcc's soft-float), no libm: exp is computed here in double
 * precision (range reduction + polynomial) and rounded once to float, only while building the
 * tables. No malloc: all state lives in a caller-owned work buffer of es_detect_work_bytes().
 * Build the file in an ISO C mode (-std=c99): GCC then does not contract a * b + c into fused
 * multiply-adds, so the IoU arithmetic rounds exactly as numpy's.
 */
#ifndef ES_DETECT_H
#define ES_DETECT_H

#include <stddef.h>
#include <stdint.h>

#include "es_runtime.h"

/* Most pyramid levels a detector may have (NanoDet: 3, NanoDet-Plus: 4). */
#define ES_DETECT_MAX_LEVELS 8
/* Largest reg_max (distribution bins - 1) the decoder takes. */
#define ES_DETECT_MAX_REG_MAX 64

/* One pyramid level: stride, feature map size and which graph outputs hold its logits. */
typedef struct {
    int32_t stride;
    int32_t height, width;  /* ceil(input_h / stride), ceil(input_w / stride) */
    uint32_t cls_output;    /* graph output index of the class logits */
    uint32_t reg_output;    /* graph output index of the distribution logits */
} es_detect_level;

typedef struct {
    uint32_t num_levels;
    const es_detect_level *levels;
    int32_t num_classes;
    int32_t reg_max;
    int32_t input_h, input_w;
    float score_thr;       /* keep scores strictly above this */
    float iou_thr;         /* suppress IoU strictly above this (0..1) */
    uint32_t max_det;      /* results kept after NMS */
    uint32_t capacity;     /* candidates into NMS: min(pre_nms_topk, priors * num_classes) */
    uint32_t num_inputs;   /* graph inputs: their records come first in the I/O record */
    uint32_t num_outputs;  /* graph outputs (levels name outputs below this) */
} es_detect_config;

/* One detection in input pixels (the letterboxed model input), xyxy. */
typedef struct {
    float x1, y1, x2, y2;
    float score;
    int32_t label;
} es_detection;

/* Bytes of work buffer a detector with these sizes needs (4-byte aligned buffer). */
uint32_t es_detect_work_bytes(uint32_t num_levels, uint32_t capacity);

/* Build the lookup tables for the quantization in io_record (the running model's I/O record).
 * Optional: es_detect_run() does it when needed; calling it at boot keeps it out of the first
 * inference's time. */
int es_detect_prepare(const es_detect_config *cfg, const int32_t *io_record, void *work,
                      uint32_t work_bytes);

/* Detections of one inference: outputs[i] is graph output i (int8). Writes at most
 * cfg->max_det results best first into dets (max_dets >= cfg->max_det) and their number into
 * *count. Returns an es_status: ES_ERR_PARAM for a config or work buffer that does not fit. */
int es_detect_run(const es_detect_config *cfg, const int32_t *io_record, const int8_t *const *outputs,
                  void *work, uint32_t work_bytes, es_detection *dets, uint32_t max_dets, uint32_t *count);

/* exp(x) rounded to float, without libm (exposed for tests). */
float es_detect_expf(float x);

#endif /* ES_DETECT_H */
