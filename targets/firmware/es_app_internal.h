/*
 * es_app_internal.h - what the firmware app's command files share (not a public API).
 *
 * es_app.c owns the state (weight slots, input/output buffers, counters) and the dispatcher;
 * es_app_detect.c adds the detector commands (DETECT, DETECTIONS) on top of the same input,
 * model run and counters.
 */
#ifndef ES_APP_INTERNAL_H
#define ES_APP_INTERNAL_H

#include <stdint.h>

#include "es_proto.h"

/* INFER / DETECT payload: the whole input, or nothing after INPUT. 0 (after an ERR) if neither. */
int es_app_take_input(const es_frame *f);
/* Run the network on the input buffer, timing it; 0 (after an ERR) when the model fails. */
int es_app_timed_run(const es_frame *f, uint32_t *cycles);
/* Pointers to each graph output inside the output buffer (model.h's MODEL_NUM_OUTPUTS of them). */
void es_app_output_ptrs(int8_t **outs);
/* The weights table that runs now: a committed slot's, or NULL for the compiled-in weights. */
const void *const *es_app_running_table(void);
/* Count one inference in STATS. */
void es_app_count_inference(uint32_t cycles);

/* es_app_detect.c: called at every boot, after the slot to run was chosen. */
void es_app_detect_boot(void);
void es_app_cmd_detect(const es_frame *f);
void es_app_cmd_detections(const es_frame *f);

#endif /* ES_APP_INTERNAL_H */
