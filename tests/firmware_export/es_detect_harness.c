/*
 * es_detect_harness.c - runs es_detect_run() on cases written by test_fe_c_detect.py.
 *
 * argv[1]: a jobs file (or --expf IN OUT: es_detect_expf of each float32 of IN), one "CASE_IN CASE_OUT" per line. All cases share one work buffer (as the
 * firmware's does), so a case with other quantization than the one before must rebuild the
 * tables. Case file (little-endian): int32 num_levels, num_classes, reg_max, input_h, input_w,
 * float32 score_thr, iou_thr, int32 max_det, capacity, num_inputs, num_outputs; per level int32
 * stride, height, width, cls_output, reg_output; the I/O record (int32 x 2 x (inputs + outputs));
 * then every output's int8 bytes in output order. Output file: int32 status, int32 count, then
 * per detection float32 x1, y1, x2, y2, score and int32 label.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_detect.h"

#define MAX_OUTPUTS (2 * ES_DETECT_MAX_LEVELS)
#define WORK_WORDS (1u << 20)

static uint32_t work[WORK_WORDS];

static int read_exact(FILE *f, void *dst, size_t n)
{
    return fread(dst, 1, n, f) == n;
}

static int run_case(const char *in_path, const char *out_path)
{
    FILE *f = fopen(in_path, "rb");
    FILE *o;
    int32_t head[11], io[2 * (MAX_OUTPUTS + 4)];
    es_detect_level levels[ES_DETECT_MAX_LEVELS];
    es_detect_config cfg;
    int8_t *outputs[MAX_OUTPUTS];
    es_detection *dets;
    uint32_t i, count = 0, need;
    int32_t status;
    if (f == NULL || !read_exact(f, head, sizeof head)) {
        fprintf(stderr, "cannot read %s\n", in_path);
        return 1;
    }
    memset(&cfg, 0, sizeof cfg);
    cfg.num_levels = (uint32_t)head[0];
    cfg.num_classes = head[1];
    cfg.reg_max = head[2];
    cfg.input_h = head[3];
    cfg.input_w = head[4];
    memcpy(&cfg.score_thr, &head[5], 4);
    memcpy(&cfg.iou_thr, &head[6], 4);
    cfg.max_det = (uint32_t)head[7];
    cfg.capacity = (uint32_t)head[8];
    cfg.num_inputs = (uint32_t)head[9];
    cfg.num_outputs = (uint32_t)head[10];
    cfg.levels = levels;
    if (cfg.num_levels > ES_DETECT_MAX_LEVELS || cfg.num_outputs != 2u * cfg.num_levels || cfg.num_inputs > 4u ||
        !read_exact(f, levels, sizeof(es_detect_level) * cfg.num_levels) ||
        !read_exact(f, io, 8u * (cfg.num_inputs + cfg.num_outputs))) {
        fprintf(stderr, "bad case header in %s\n", in_path);
        return 1;
    }
    for (i = 0; i < cfg.num_levels; ++i) {
        size_t cells = (size_t)levels[i].height * (size_t)levels[i].width;
        size_t sizes[2];
        uint32_t k;
        sizes[0] = cells * (size_t)cfg.num_classes;
        sizes[1] = cells * 4u * (size_t)(cfg.reg_max + 1);
        for (k = 0; k < 2; ++k) {
            uint32_t idx = k == 0 ? levels[i].cls_output : levels[i].reg_output;
            outputs[idx] = (int8_t *)malloc(sizes[k]); /* exact sizes: ASan catches any overread */
            if (outputs[idx] == NULL || !read_exact(f, outputs[idx], sizes[k])) {
                fprintf(stderr, "short output data in %s\n", in_path);
                return 1;
            }
        }
    }
    fclose(f);
    need = es_detect_work_bytes(cfg.num_levels, cfg.capacity);
    if (need > sizeof work) {
        fprintf(stderr, "case needs %u work bytes, harness has %u\n", (unsigned)need, (unsigned)sizeof work);
        return 1;
    }
    dets = (es_detection *)malloc(sizeof(es_detection) * cfg.max_det);
    /* a work buffer one byte short is refused */
    if (es_detect_run(&cfg, io, (const int8_t *const *)outputs, work, need - 1u, dets, cfg.max_det, &count) !=
        ES_ERR_PARAM) {
        fprintf(stderr, "short work buffer accepted\n");
        return 1;
    }
    status = es_detect_run(&cfg, io, (const int8_t *const *)outputs, work, need, dets, cfg.max_det, &count);
    o = fopen(out_path, "wb");
    if (o == NULL) {
        return 1;
    }
    fwrite(&status, 4, 1, o);
    fwrite(&count, 4, 1, o);
    for (i = 0; i < count; ++i) {
        fwrite(&dets[i].x1, 4, 1, o);
        fwrite(&dets[i].y1, 4, 1, o);
        fwrite(&dets[i].x2, 4, 1, o);
        fwrite(&dets[i].y2, 4, 1, o);
        fwrite(&dets[i].score, 4, 1, o);
        fwrite(&dets[i].label, 4, 1, o);
    }
    fclose(o);
    free(dets);
    for (i = 0; i < cfg.num_outputs; ++i) {
        free(outputs[i]);
    }
    return 0;
}

/* --expf IN OUT: es_detect_expf of every float32 in IN */
static int run_expf(const char *in_path, const char *out_path)
{
    FILE *f = fopen(in_path, "rb"), *o = fopen(out_path, "wb");
    float x, y;
    if (f == NULL || o == NULL) {
        return 1;
    }
    while (fread(&x, 4, 1, f) == 1) {
        y = es_detect_expf(x);
        fwrite(&y, 4, 1, o);
    }
    fclose(f);
    fclose(o);
    return 0;
}

int main(int argc, char **argv)
{
    char in_path[1024], out_path[1024];
    FILE *jobs;
    if (argc == 4 && strcmp(argv[1], "--expf") == 0) {
        return run_expf(argv[2], argv[3]);
    }
    if (argc != 2 || (jobs = fopen(argv[1], "r")) == NULL) {
        fprintf(stderr, "usage: %s JOBS_FILE\n", argv[0]);
        return 2;
    }
    while (fscanf(jobs, "%1023s %1023s", in_path, out_path) == 2) {
        if (run_case(in_path, out_path) != 0) {
            return 1;
        }
    }
    fclose(jobs);
    return 0;
}
