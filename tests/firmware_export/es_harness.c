/*
 * es_harness.c - host test driver for generated C models (used by test_fe_c_runtime.py).
 *
 * Build with the runtime, the generated models and a "models.inc" that lists them, one
 * ES_MODEL(prefix) per line. Run: es_harness JOBS_FILE, where each line of JOBS_FILE is
 * "<prefix> <input file> <output file>": the input file holds the model's inputs back to back
 * (int8), the output file receives its outputs back to back. Every buffer is malloc'ed at its
 * exact size and the arena is filled with garbage first, so AddressSanitizer catches any
 * out-of-bounds access and tests catch reads of memory the model never wrote.
 * Prints "<prefix> <status>" per job; exits 1 if any job failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_runtime.h"

#define ES_MODEL(p) extern const es_model_desc p##_desc;
#include "models.inc"
#undef ES_MODEL

#define ES_MODEL(p) &p##_desc,
static const es_model_desc *const models[] = {
#include "models.inc"
    NULL};
#undef ES_MODEL

static long file_size(FILE *f)
{
    long n;
    if (fseek(f, 0, SEEK_END) != 0) {
        return -1;
    }
    n = ftell(f);
    rewind(f);
    return n;
}

static int run_job(const es_model_desc *m, const char *in_path, const char *out_path)
{
    const int8_t *inputs[16];
    int8_t *outputs[16];
    uint32_t i, total_in = 0;
    uint8_t *arena;
    FILE *f;
    int rc;
    if (m->num_inputs > 16 || m->num_outputs > 16) {
        return -1;
    }
    for (i = 0; i < m->num_inputs; ++i) {
        total_in += m->input_bytes[i];
    }
    f = fopen(in_path, "rb");
    if (f == NULL || file_size(f) != (long)total_in) {
        fprintf(stderr, "%s: input file %s missing or not %u bytes\n", m->name, in_path, total_in);
        if (f != NULL) {
            fclose(f);
        }
        return -1;
    }
    for (i = 0; i < m->num_inputs; ++i) {
        int8_t *buf = (int8_t *)malloc(m->input_bytes[i] ? m->input_bytes[i] : 1);
        if (fread(buf, 1, m->input_bytes[i], f) != m->input_bytes[i]) {
            fclose(f);
            return -1;
        }
        inputs[i] = buf;
    }
    fclose(f);
    for (i = 0; i < m->num_outputs; ++i) {
        outputs[i] = (int8_t *)malloc(m->output_bytes[i] ? m->output_bytes[i] : 1);
        memset(outputs[i], 0x5A, m->output_bytes[i]);
    }
    arena = (uint8_t *)malloc(m->arena_bytes ? m->arena_bytes : 1);
    memset(arena, 0xA5, m->arena_bytes);
    rc = m->invoke_multi(inputs, outputs, arena);
    f = fopen(out_path, "wb");
    for (i = 0; i < m->num_outputs; ++i) {
        if (f != NULL) {
            fwrite(outputs[i], 1, m->output_bytes[i], f);
        }
        free(outputs[i]);
    }
    if (f != NULL) {
        fclose(f);
    }
    for (i = 0; i < m->num_inputs; ++i) {
        free((void *)inputs[i]);
    }
    free(arena);
    return rc;
}

int main(int argc, char **argv)
{
    char name[256], in_path[1024], out_path[1024];
    int failures = 0;
    FILE *jobs;
    if (argc != 2) {
        fprintf(stderr, "usage: %s JOBS_FILE\n", argv[0]);
        return 2;
    }
    jobs = fopen(argv[1], "r");
    if (jobs == NULL) {
        fprintf(stderr, "cannot open %s\n", argv[1]);
        return 2;
    }
    while (fscanf(jobs, "%255s %1023s %1023s", name, in_path, out_path) == 3) {
        const es_model_desc *const *m = models;
        int rc;
        while (*m != NULL && strcmp((*m)->name, name) != 0) {
            ++m;
        }
        if (*m == NULL) {
            fprintf(stderr, "unknown model %s\n", name);
            ++failures;
            continue;
        }
        rc = run_job(*m, in_path, out_path);
        printf("%s %d %s\n", name, rc, rc >= 0 ? es_status_str(rc) : "harness error");
        failures += rc != 0;
    }
    fclose(jobs);
    return failures ? 1 : 0;
}
