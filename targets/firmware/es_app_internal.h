/*
 * es_app_internal.h - what the firmware app's command files share (not a public API).
 *
 * es_app.c owns the input/output buffers, the arena, the counters and the dispatcher;
 * es_app_update.c owns the weight-slot storage and the running slot's weights table and answers
 * the slot commands (ERASE, WRITE, VERIFY, COMMIT, CONFIRM, READ); es_app_detect.c adds the
 * detector commands (DETECT, DETECTIONS) on top of the same input, model run and counters.
 */
#ifndef ES_APP_INTERNAL_H
#define ES_APP_INTERNAL_H

#include <stdint.h>

#include "es_proto.h"
#include "es_slots.h"

/* es_app.c */
/* INFER / DETECT payload: the whole input, or nothing after INPUT. 0 (after an ERR) if neither. */
int es_app_take_input(const es_frame *f);
/* Run the network on the input buffer, timing it; 0 (after an ERR) when the model fails. */
int es_app_timed_run(const es_frame *f, uint32_t *cycles);
/* Pointers to each graph output inside the output buffer (model.h's MODEL_NUM_OUTPUTS of them). */
void es_app_output_ptrs(int8_t **outs);
/* Count one inference in STATS. */
void es_app_count_inference(uint32_t cycles);

/* es_app_update.c */
/* Called at every boot: open the slot storage and pick the slot to run (trial / revert), or
 * leave the compiled-in weights running when the board has no room for two slots. */
void es_app_update_boot(void);
/* The slot storage as it stands (boot record, slot size, next WRITE offsets, running slot). */
const es_store *es_app_store(void);
/* The weights table that runs now: a committed slot's, or NULL for the compiled-in weights. */
const void *const *es_app_running_table(void);
void es_app_cmd_erase(const es_frame *f);
void es_app_cmd_write(const es_frame *f);
void es_app_cmd_verify(const es_frame *f);
void es_app_cmd_commit(const es_frame *f);
void es_app_cmd_confirm(const es_frame *f);
void es_app_cmd_read(const es_frame *f);

/* es_app_detect.c: called at every boot, after the slot to run was chosen. */
void es_app_detect_boot(void);
void es_app_cmd_detect(const es_frame *f);
void es_app_cmd_detections(const es_frame *f);

#endif /* ES_APP_INTERNAL_H */
