/*
 * es_detect.c - NanoDet / GFL decode + class-aware NMS on int8 outputs (see es_detect.h).
 *
 * Work buffer, in 4-byte words:
 *   magic, score_thr bits, levels | per level: cls zp, cls scale bits, reg zp, reg scale bits
 *   (what the tables were built for)
 *   | per level: lowest class logit whose score passes | sigmoid tables L x 256 | exp tables
 *   L x 256 | candidates capacity x {index, score} | boxes capacity x 4 | NMS areas capacity
 *   | suppressed flags (capacity bytes).
 *
 * Candidates are (prior, class) pairs, index = prior * num_classes + class over all levels.
 * A bounded min-heap keeps the best `capacity` of them (better = higher score, then lower
 * index), then heap sort leaves them best first: the order in which postprocess_np's
 * stable argsort hands them to NMS.
 *
 * Scores and clipped box corners are never negative (and never -0.0), so their IEEE bit
 * patterns order as the numbers do: comparisons that only pick or rank use uint32 compares,
 * which matters where floats are soft-float library calls (RV32, Cortex-M without FPU).
 */
#include "es_detect.h"

#define PREPARED_MAGIC 0x45534454u /* "ESDT" */
#define TABLE_SIZE 256
#define HEADER_WORDS 3u
#define CACHE_WORDS_PER_LEVEL 4u

typedef struct {
    uint32_t index;
    uint32_t score_bits; /* float bits of a score >= +0.0 */
} es_candidate;

typedef struct {
    uint32_t *magic; /* then score_thr bits, number of levels */
    int32_t *cache;
    int32_t *qmin;
    float *sigmoid;
    float *exp_neg;
    es_candidate *cand;
    float *box;
    float *area;
    uint8_t *suppressed;
} es_detect_work;

typedef union {
    uint32_t u;
    float f;
} es_bits32;

typedef union {
    uint64_t u;
    double d;
} es_bits64;

uint32_t es_detect_work_bytes(uint32_t num_levels, uint32_t capacity)
{
    uint32_t words = HEADER_WORDS + (CACHE_WORDS_PER_LEVEL + 1u + 2u * TABLE_SIZE) * num_levels + 7u * capacity +
                     (capacity + 3u) / 4u;
    return 4u * words;
}

static void layout(const es_detect_config *cfg, void *work, es_detect_work *w)
{
    uint32_t *p = (uint32_t *)work;
    uint32_t levels = cfg->num_levels;
    uint32_t cap = cfg->capacity;
    w->magic = p;
    p += HEADER_WORDS;
    w->cache = (int32_t *)p;
    p += CACHE_WORDS_PER_LEVEL * levels;
    w->qmin = (int32_t *)p;
    p += levels;
    w->sigmoid = (float *)p;
    p += TABLE_SIZE * levels;
    w->exp_neg = (float *)p;
    p += TABLE_SIZE * levels;
    w->cand = (es_candidate *)p;
    p += 2u * cap;
    w->box = (float *)p;
    p += 4u * cap;
    w->area = (float *)p;
    p += cap;
    w->suppressed = (uint8_t *)p;
}

/* ------------------------------------------------------------------ exp without libm */

/* exp(x) for -110 < x < 90 in double: x = k ln2 + r, |r| <= ln2 / 2, Taylor series to r^13. */
static double exp_double(double x)
{
    const double ln2_hi = 6.93147180369123816490e-01;
    const double ln2_lo = 1.90821492927058770002e-10;
    const double inv_ln2 = 1.44269504088896338700e+00;
    double kf = x * inv_ln2;
    int32_t k = (int32_t)(kf < 0.0 ? kf - 0.5 : kf + 0.5);
    double r = (x - (double)k * ln2_hi) - (double)k * ln2_lo;
    double p = 1.0 / 6227020800.0; /* 1/13! */
    es_bits64 scale;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    scale.u = (uint64_t)(k + 1023) << 52; /* 2^k, k in [-159, 130]: a normal double */
    return p * scale.d;
}

float es_detect_expf(float x)
{
    /* float: exp(x) is 0 below -103.98 (under half the smallest subnormal), inf above 88.73 */
    const double float_overflow = 3.4028235677973366e38; /* FLT_MAX + half an ulp: rounds to inf */
    es_bits32 inf;
    double y;
    inf.u = 0x7F800000u;
    if (x != x) {
        return x; /* NaN */
    }
    if (x < -105.0f) {
        return 0.0f;
    }
    if (x > 89.0f) {
        return inf.f;
    }
    y = exp_double((double)x);
    if (y >= float_overflow) {
        return inf.f;
    }
    return (float)y;
}

static uint32_t float_bits(float v)
{
    es_bits32 b;
    b.f = v;
    return b.u;
}

static float bits_float(uint32_t u)
{
    es_bits32 b;
    b.u = u;
    return b.f;
}

/* ------------------------------------------------------------------ checks and tables */

static int scale_ok(int32_t bits)
{
    uint32_t u = (uint32_t)bits;
    /* positive, non-zero, finite */
    return (u & 0x80000000u) == 0u && u != 0u && (u & 0x7F800000u) != 0x7F800000u;
}

static int config_ok(const es_detect_config *cfg, const void *work, uint32_t work_bytes)
{
    uint32_t l;
    if (cfg->num_levels < 1u || cfg->num_levels > ES_DETECT_MAX_LEVELS || cfg->levels == NULL ||
        cfg->num_classes < 1 || cfg->reg_max < 0 || cfg->reg_max > ES_DETECT_MAX_REG_MAX ||
        cfg->capacity < 1u || cfg->input_h < 1 || cfg->input_w < 1 || !(cfg->iou_thr >= 0.0f) ||
        !(cfg->score_thr == cfg->score_thr)) {
        return 0;
    }
    if (((uintptr_t)work & 3u) != 0u || work_bytes < es_detect_work_bytes(cfg->num_levels, cfg->capacity)) {
        return 0;
    }
    for (l = 0; l < cfg->num_levels; ++l) {
        const es_detect_level *lv = &cfg->levels[l];
        if (lv->stride < 1 || lv->height < 1 || lv->width < 1 || lv->cls_output >= cfg->num_outputs ||
            lv->reg_output >= cfg->num_outputs) {
            return 0;
        }
    }
    return 1;
}

/* The I/O record words (zero point, scale bits) of graph output `o`. */
static const int32_t *output_quant(const es_detect_config *cfg, const int32_t *io_record, uint32_t o)
{
    return io_record + 2u * (cfg->num_inputs + o);
}


static int tables_current(const es_detect_config *cfg, const int32_t *io_record, const es_detect_work *w)
{
    uint32_t l;
    if (w->magic[0] != PREPARED_MAGIC || w->magic[1] != float_bits(cfg->score_thr) ||
        w->magic[2] != cfg->num_levels) {
        return 0;
    }
    for (l = 0; l < cfg->num_levels; ++l) {
        const int32_t *cls = output_quant(cfg, io_record, cfg->levels[l].cls_output);
        const int32_t *reg = output_quant(cfg, io_record, cfg->levels[l].reg_output);
        const int32_t *c = w->cache + CACHE_WORDS_PER_LEVEL * l;
        if (c[0] != cls[0] || c[1] != cls[1] || c[2] != reg[0] || c[3] != reg[1]) {
            return 0;
        }
    }
    return 1;
}

static int build_tables(const es_detect_config *cfg, const int32_t *io_record, es_detect_work *w)
{
    uint32_t l;
    int32_t q, k;
    w->magic[0] = 0u;
    for (l = 0; l < cfg->num_levels; ++l) {
        const int32_t *cls = output_quant(cfg, io_record, cfg->levels[l].cls_output);
        const int32_t *reg = output_quant(cfg, io_record, cfg->levels[l].reg_output);
        float *sig = w->sigmoid + TABLE_SIZE * l;
        float *ex = w->exp_neg + TABLE_SIZE * l;
        es_bits32 cls_scale, reg_scale;
        if (!scale_ok(cls[1]) || !scale_ok(reg[1]) || cls[0] < -128 || cls[0] > 127 || reg[0] < -128 ||
            reg[0] > 127) {
            return ES_ERR_PARAM;
        }
        cls_scale.u = (uint32_t)cls[1];
        reg_scale.u = (uint32_t)reg[1];
        for (q = -128; q < 128; ++q) {
            /* dequantize exactly as numpy does in float32, then 1 / (1 + exp(-x)) */
            float x = (float)(q - cls[0]) * cls_scale.f;
            sig[q + 128] = 1.0f / (1.0f + es_detect_expf(-x));
        }
        /* sigmoid is monotonic: candidates are the logits from qmin up (128: none) */
        q = 127;
        while (q >= -128 && sig[q + 128] > cfg->score_thr) {
            --q;
        }
        w->qmin[l] = q + 1;
        for (k = 0; k < TABLE_SIZE; ++k) {
            ex[k] = es_detect_expf(-((float)k * reg_scale.f));
        }
        w->cache[CACHE_WORDS_PER_LEVEL * l + 0] = cls[0];
        w->cache[CACHE_WORDS_PER_LEVEL * l + 1] = cls[1];
        w->cache[CACHE_WORDS_PER_LEVEL * l + 2] = reg[0];
        w->cache[CACHE_WORDS_PER_LEVEL * l + 3] = reg[1];
    }
    w->magic[0] = PREPARED_MAGIC;
    w->magic[1] = float_bits(cfg->score_thr);
    w->magic[2] = cfg->num_levels;
    return ES_OK;
}

int es_detect_prepare(const es_detect_config *cfg, const int32_t *io_record, void *work,
                      uint32_t work_bytes)
{
    es_detect_work w;
    if (cfg == NULL || io_record == NULL || work == NULL) {
        return ES_ERR_NULL;
    }
    if (!config_ok(cfg, work, work_bytes)) {
        return ES_ERR_PARAM;
    }
    layout(cfg, work, &w);
    return build_tables(cfg, io_record, &w);
}

/* ------------------------------------------------------------------ candidates: bounded heap */

/* a ranks below b: lower score, or the same score and a higher index */
static int worse(const es_candidate *a, const es_candidate *b)
{
    return a->score_bits < b->score_bits || (a->score_bits == b->score_bits && a->index > b->index);
}

static void swap_cand(es_candidate *a, es_candidate *b)
{
    es_candidate t = *a;
    *a = *b;
    *b = t;
}

/* min-heap on "worse": the root is the worst kept candidate */
static void sift_down(es_candidate *h, uint32_t n, uint32_t i)
{
    for (;;) {
        uint32_t left = 2u * i + 1u, right = left + 1u, low = i;
        if (left < n && worse(&h[left], &h[low])) {
            low = left;
        }
        if (right < n && worse(&h[right], &h[low])) {
            low = right;
        }
        if (low == i) {
            return;
        }
        swap_cand(&h[i], &h[low]);
        i = low;
    }
}

static void sift_up(es_candidate *h, uint32_t i)
{
    while (i > 0u) {
        uint32_t parent = (i - 1u) / 2u;
        if (!worse(&h[i], &h[parent])) {
            return;
        }
        swap_cand(&h[i], &h[parent]);
        i = parent;
    }
}

/* Scan every level's class logits; returns the number of candidates kept, best first. */
static uint32_t collect(const es_detect_config *cfg, const int8_t *const *outputs, es_detect_work *w)
{
    uint32_t n = 0, prior0 = 0, l;
    uint32_t classes = (uint32_t)cfg->num_classes;
    es_candidate *h = w->cand;
    for (l = 0; l < cfg->num_levels; ++l) {
        const es_detect_level *lv = &cfg->levels[l];
        uint32_t cells = (uint32_t)lv->height * (uint32_t)lv->width;
        int32_t qmin = w->qmin[l];
        if (qmin <= 127) {
            const int8_t *cls = outputs[lv->cls_output];
            const float *sig = w->sigmoid + TABLE_SIZE * l;
            uint32_t i, count = cells * classes;
            for (i = 0; i < count; ++i) {
                es_candidate c;
                if (cls[i] < qmin) {
                    continue;
                }
                c.index = prior0 * classes + i;
                c.score_bits = float_bits(sig[cls[i] + 128]);
                if (n < cfg->capacity) {
                    h[n] = c;
                    sift_up(h, n);
                    ++n;
                } else if (worse(&h[0], &c)) {
                    h[0] = c;
                    sift_down(h, n, 0);
                }
            }
        }
        prior0 += cells;
    }
    /* heap sort: the worst goes to the back each round, so the array ends best first */
    {
        uint32_t end = n;
        while (end > 1u) {
            --end;
            swap_cand(&h[0], &h[end]);
            sift_down(h, end, 0);
        }
    }
    return n;
}

/* ------------------------------------------------------------------ decode */

/* Expected bin of one side's distribution: sum_j softmax_j * j, as (sum_j e_j * j) / sum_j e_j
 * with e_j = exp(x_j - max x): one division instead of one per bin (numpy divides first; the
 * results differ by float rounding only). */
static float side_distance(const int8_t *logits, int32_t bins, const float *exp_neg)
{
    float sum = 0.0f, weighted = 0.0f;
    int32_t j, qmax = logits[0];
    for (j = 1; j < bins; ++j) {
        if (logits[j] > qmax) {
            qmax = logits[j];
        }
    }
    for (j = 0; j < bins; ++j) {
        float e = exp_neg[qmax - logits[j]];
        sum += e;
        weighted += e * (float)j;
    }
    return weighted / sum; /* sum >= exp(0) = 1 */
}

static float clampf(float v, float hi)
{
    v = v > 0.0f ? v : 0.0f;
    return v < hi ? v : hi;
}

/* Box of candidate i (xyxy, clipped to the input) and its area in the class-shifted plane. */
static void decode(const es_detect_config *cfg, const int8_t *const *outputs, es_detect_work *w, uint32_t i)
{
    const es_candidate *c = &w->cand[i];
    uint32_t classes = (uint32_t)cfg->num_classes;
    uint32_t prior = c->index / classes, label = c->index % classes, l = 0, cell;
    int32_t bins = cfg->reg_max + 1, side;
    const es_detect_level *lv = &cfg->levels[0];
    const int8_t *reg;
    float cx, cy, stride, d[4], *box = w->box + 4u * i;
    float w_in = (float)cfg->input_w, h_in = (float)cfg->input_h;
    float offset, sx1, sy1, sx2, sy2, bw, bh;
    cell = prior;
    while (cell >= (uint32_t)lv->height * (uint32_t)lv->width) { /* collect() kept in-range priors */
        cell -= (uint32_t)lv->height * (uint32_t)lv->width;
        lv = &cfg->levels[++l];
    }
    stride = (float)lv->stride;
    cx = ((float)(cell % (uint32_t)lv->width) + 0.5f) * stride;
    cy = ((float)(cell / (uint32_t)lv->width) + 0.5f) * stride;
    reg = outputs[lv->reg_output] + (size_t)cell * (size_t)(4 * bins);
    for (side = 0; side < 4; ++side) {
        d[side] = side_distance(reg + side * bins, bins, w->exp_neg + TABLE_SIZE * l) * stride;
    }
    box[0] = clampf(cx - d[0], w_in);
    box[1] = clampf(cy - d[1], h_in);
    box[2] = clampf(cx + d[2], w_in);
    box[3] = clampf(cy + d[3], h_in);
    /* class-aware NMS as postprocess_np does it: shift each class to its own region */
    offset = (float)label * (float)((cfg->input_h > cfg->input_w ? cfg->input_h : cfg->input_w) + 1);
    sx1 = box[0] + offset;
    sy1 = box[1] + offset;
    sx2 = box[2] + offset;
    sy2 = box[3] + offset;
    bw = sx2 - sx1;
    bh = sy2 - sy1;
    w->area[i] = (bw > 0.0f ? bw : 0.0f) * (bh > 0.0f ? bh : 0.0f);
}

/* Whether the clipped boxes of i and j overlap (bit compares: corners are >= +0.0). Adding the
 * class offset rounds monotonically, so boxes apart here are apart in the shifted plane too,
 * where numpy's IoU is then 0 and suppresses nothing. */
static int may_overlap(const es_detect_work *w, uint32_t i, uint32_t j)
{
    const float *a = w->box + 4u * i, *b = w->box + 4u * j;
    uint32_t lt, rb, k;
    for (k = 0; k < 2u; ++k) {
        uint32_t a1 = float_bits(a[k]), b1 = float_bits(b[k]), a2 = float_bits(a[k + 2u]), b2 = float_bits(b[k + 2u]);
        lt = a1 > b1 ? a1 : b1;
        rb = a2 < b2 ? a2 : b2;
        if (rb <= lt) {
            return 0;
        }
    }
    return 1;
}

/* IoU of candidates i and j (same class) in the shifted plane, rounded as numpy rounds it. */
static float iou(const es_detect_work *w, uint32_t i, uint32_t j, float offset)
{
    const float *a = w->box + 4u * i, *b = w->box + 4u * j;
    float ax1 = a[0] + offset, ay1 = a[1] + offset, ax2 = a[2] + offset, ay2 = a[3] + offset;
    float bx1 = b[0] + offset, by1 = b[1] + offset, bx2 = b[2] + offset, by2 = b[3] + offset;
    float ltx = ax1 > bx1 ? ax1 : bx1, lty = ay1 > by1 ? ay1 : by1;
    float rbx = ax2 < bx2 ? ax2 : bx2, rby = ay2 < by2 ? ay2 : by2;
    float iw = rbx - ltx, ih = rby - lty, inter, denom;
    iw = iw > 0.0f ? iw : 0.0f;
    ih = ih > 0.0f ? ih : 0.0f;
    inter = iw * ih;
    denom = w->area[i] + w->area[j] - inter;
    denom = denom > 1e-7f ? denom : 1e-7f;
    return inter / denom;
}

/* ------------------------------------------------------------------ run */

int es_detect_run(const es_detect_config *cfg, const int32_t *io_record, const int8_t *const *outputs,
                  void *work, uint32_t work_bytes, es_detection *dets, uint32_t max_dets, uint32_t *count)
{
    es_detect_work w;
    uint32_t n, i, j, kept = 0, l;
    uint32_t classes;
    float shift;
    int rc;
    if (cfg == NULL || io_record == NULL || outputs == NULL || work == NULL || dets == NULL || count == NULL) {
        return ES_ERR_NULL;
    }
    *count = 0;
    if (!config_ok(cfg, work, work_bytes) || max_dets < cfg->max_det) {
        return ES_ERR_PARAM;
    }
    for (l = 0; l < cfg->num_levels; ++l) {
        if (outputs[cfg->levels[l].cls_output] == NULL || outputs[cfg->levels[l].reg_output] == NULL) {
            return ES_ERR_NULL;
        }
    }
    layout(cfg, work, &w);
    if (!tables_current(cfg, io_record, &w)) {
        rc = build_tables(cfg, io_record, &w);
        if (rc != ES_OK) {
            return rc;
        }
    }
    n = collect(cfg, outputs, &w);
    for (i = 0; i < n; ++i) {
        decode(cfg, outputs, &w, i);
        w.suppressed[i] = 0u;
    }
    classes = (uint32_t)cfg->num_classes;
    shift = (float)((cfg->input_h > cfg->input_w ? cfg->input_h : cfg->input_w) + 1);
    for (i = 0; i < n && kept < cfg->max_det; ++i) {
        uint32_t label = w.cand[i].index % classes;
        float offset = (float)label * shift;
        es_detection *d;
        if (w.suppressed[i]) {
            continue;
        }
        d = &dets[kept++];
        d->x1 = w.box[4u * i + 0u];
        d->y1 = w.box[4u * i + 1u];
        d->x2 = w.box[4u * i + 2u];
        d->y2 = w.box[4u * i + 3u];
        d->score = bits_float(w.cand[i].score_bits);
        d->label = (int32_t)label;
        for (j = i + 1u; j < n; ++j) {
            /* other classes live in disjoint shifted regions: IoU 0, never above iou_thr >= 0 */
            if (!w.suppressed[j] && w.cand[j].index % classes == label && may_overlap(&w, i, j) &&
                iou(&w, i, j, offset) > cfg->iou_thr) {
                w.suppressed[j] = 1u;
            }
        }
    }
    *count = kept;
    return ES_OK;
}
