/*
 * es_app.c - command dispatcher of the firmware app (targets/protocol.md, "Commands").
 *
 * Compiled together with one exported model (model.h / model.c from firmware_export): the
 * compiled-in weights run when no slot holds a valid blob; a committed slot's blob runs through
 * model_invoke_table() once es_blob_verify accepted it (CRCs + this code's structure hash).
 *
 * What lives where (es_app_internal.h is what the files share):
 *   es_app.c         INFO, INPUT / INFER / OUTPUT, STATS, REBOOT, boot, the dispatcher, the loop
 *   es_app_update.c  the A/B weight slots: ERASE, WRITE, VERIFY, COMMIT, CONFIRM, READ, the
 *                    choice of the slot to run at boot, and the check of signed blobs
 *   es_app_detect.c  the detector commands (DETECT, DETECTIONS)
 */
#include "es_app.h"
#include "es_app_internal.h"

#include "es_hal.h"
#include "es_reply.h"
#include "es_slots.h"
#include "es_util.h"
#include "model.h"

/* Boards put the arena in their fastest large RAM (e.g. ".axisram" on STM32H747). */
#ifdef ES_ARENA_SECTION
#define ES_ARENA_ATTR __attribute__((section(ES_ARENA_SECTION), aligned(16)))
#else
#define ES_ARENA_ATTR __attribute__((aligned(16)))
#endif

#define INFO_BYTES 168u
#define STATS_BYTES 32u
/* INFO byte 81 (slot 0's first reserved byte): device flags (targets/protocol.md, Clarifications) */
#define INFO_FLAGS_OFFSET 81u
#define INFO_FLAG_SIGNATURE_REQUIRED 0x01u

/* Everything below lives in .bss: no malloc. */
static es_proto_counters counters;
static uint8_t arena[MODEL_ARENA_BYTES > 0 ? MODEL_ARENA_BYTES : 16] ES_ARENA_ATTR;
static int8_t input_buf[MODEL_INPUTS_TOTAL_BYTES] __attribute__((aligned(16)));
static int8_t output_buf[MODEL_OUTPUTS_TOTAL_BYTES] __attribute__((aligned(16)));
/* the last frame executed, so that a retry (same seq and CRC) of any command gets the reply
 * resent instead of running twice (WRITE, COMMIT, INFER) */
static int have_last_seq;
static uint8_t last_seq;
static uint32_t last_crc;
static uint32_t stat_inferences, stat_last_cycles, stat_boots;

/* ------------------------------------------------------------------ model */

/* Pointers to each graph output inside output_buf. */
void es_app_output_ptrs(int8_t **outs)
{
    uint32_t i, off = 0;
    for (i = 0; i < MODEL_NUM_OUTPUTS; ++i) {
        outs[i] = output_buf + off;
        off += model_desc.output_bytes[i];
    }
}

static int run_model(void)
{
    const int8_t *ins[MODEL_NUM_INPUTS];
    int8_t *outs[MODEL_NUM_OUTPUTS];
    const void *const *table = es_app_running_table();
    uint32_t i, off = 0;
    for (i = 0; i < MODEL_NUM_INPUTS; ++i) {
        ins[i] = input_buf + off;
        off += model_desc.input_bytes[i];
    }
    es_app_output_ptrs(outs);
    if (table == NULL) {
        return model_invoke_multi(ins, outs, arena);
    }
    return model_invoke_table(table, ins, outs, arena);
}

void es_app_count_inference(uint32_t cycles)
{
    stat_inferences++;
    stat_last_cycles = cycles;
}

/* ------------------------------------------------------------------ commands */

static void cmd_info(const es_frame *f)
{
    const es_store *store = es_app_store();
    uint8_t *p = es_reply_payload();
    uint32_t i;
    p[0] = ES_PROTO_VERSION;
    es_put_str(p + 1, ES_FW_VERSION, 16);
    es_put_str(p + 17, hal_board_name(), 16);
    es_put_u16(p + 33, ES_MAX_COMMAND_PAYLOAD);
    p[35] = store->running;
    es_mem_copy(p + 36, model_structure_hash, 32);
    es_put_u32(p + 68, MODEL_INPUTS_TOTAL_BYTES);
    es_put_u32(p + 72, MODEL_OUTPUTS_TOTAL_BYTES);
    es_put_u32(p + 76, store->slot_size);
    for (i = 0; i < ES_SLOT_COUNT; ++i) {
        uint8_t *s = p + 80 + 44 * i;
        s[0] = store->rec.slot[i].state;
        s[1] = s[2] = s[3] = 0;
        es_put_u32(s + 4, store->next_offset[i]);
        es_put_u32(s + 8, store->rec.slot[i].length);
        es_mem_copy(s + 12, store->rec.slot[i].graph_hash, 32);
    }
#ifdef ES_BLOB_PUBLIC_KEY
    p[INFO_FLAGS_OFFSET] = INFO_FLAG_SIGNATURE_REQUIRED;
#endif
    es_reply_ok(f, INFO_BYTES);
}

static void cmd_input(const es_frame *f)
{
    uint32_t offset, len;
    if (f->length < 4u) {
        es_reply_err(f, ES_ERR_BAD_ARGS, "INPUT needs offset u32 then data");
        return;
    }
    offset = es_get_u32(f->payload);
    len = f->length - 4u;
    if (offset > MODEL_INPUTS_TOTAL_BYTES || len > MODEL_INPUTS_TOTAL_BYTES - offset) {
        es_reply_err(f, ES_ERR_INPUT_SIZE, "INPUT runs past the model's input size");
        return;
    }
    es_mem_copy(input_buf + offset, f->payload + 4, len);
    es_reply_ok(f, 0);
}

/* INFER / DETECT payload: the whole input, or nothing after INPUT. 0 (after ERR) if neither. */
int es_app_take_input(const es_frame *f)
{
    uint32_t len = f->length; /* 32-bit: model inputs may exceed a u16 */
    es_msg m;
    if (len != 0u && len != (uint32_t)MODEL_INPUTS_TOTAL_BYTES) {
        m = es_reply_err_begin(ES_ERR_INPUT_SIZE);
        es_msg_str(&m, "expected ");
        es_msg_u32(&m, MODEL_INPUTS_TOTAL_BYTES);
        es_msg_str(&m, " input bytes (or 0 after INPUT), got ");
        es_msg_u32(&m, len);
        es_reply_err_send(f, &m);
        return 0;
    }
    if (len != 0u) {
        es_mem_copy(input_buf, f->payload, len);
    }
    return 1;
}

/* Run the network, timing it; 0 (after ERR) when the model fails. */
int es_app_timed_run(const es_frame *f, uint32_t *cycles)
{
    uint32_t start = hal_cycles();
    int rc = run_model();
    es_msg m;
    *cycles = hal_cycles() - start;
    if (rc != 0) {
        m = es_reply_err_begin(ES_ERR_BAD_ARGS);
        es_msg_str(&m, "model returned es_status ");
        es_msg_u32(&m, (uint32_t)rc);
        es_reply_err_send(f, &m);
        return 0;
    }
    return 1;
}

static void cmd_infer(const es_frame *f)
{
    uint32_t cycles;
    if (!es_app_take_input(f) || !es_app_timed_run(f, &cycles)) {
        return;
    }
    es_app_count_inference(cycles);
    es_put_u32(es_reply_payload(), cycles);
    if (4u + MODEL_OUTPUTS_TOTAL_BYTES <= ES_MAX_PAYLOAD) {
        es_mem_copy(es_reply_payload() + 4, output_buf, MODEL_OUTPUTS_TOTAL_BYTES);
        es_reply_ok(f, (uint16_t)(4u + MODEL_OUTPUTS_TOTAL_BYTES));
    } else {
        es_put_u32(es_reply_payload() + 4, MODEL_OUTPUTS_TOTAL_BYTES);
        es_reply_ok(f, 8);
    }
}

static void cmd_output(const es_frame *f)
{
    uint32_t offset, len;
    if (f->length != 6u) {
        es_reply_err(f, ES_ERR_BAD_ARGS, "OUTPUT needs offset u32 and length u16");
        return;
    }
    offset = es_get_u32(f->payload);
    len = es_get_u16(f->payload + 4);
    if (len > ES_MAX_PAYLOAD || offset > MODEL_OUTPUTS_TOTAL_BYTES ||
        len > MODEL_OUTPUTS_TOTAL_BYTES - offset) {
        es_reply_err(f, ES_ERR_BAD_ARGS, "OUTPUT range runs past the model's output");
        return;
    }
    es_mem_copy(es_reply_payload(), output_buf + offset, len);
    es_reply_ok(f, (uint16_t)len);
}

static void cmd_stats(const es_frame *f)
{
    uint8_t *p = es_reply_payload();
    es_put_u32(p, stat_inferences);
    es_put_u32(p + 4, stat_last_cycles);
    es_put_u32(p + 8, MODEL_ARENA_BYTES);
    es_put_u32(p + 12, stat_boots);
    es_put_u32(p + 16, counters.frames);
    es_put_u32(p + 20, counters.crc_errors);
    es_put_u32(p + 24, counters.naks);
    es_put_u32(p + 28, hal_flash_op_count());
    es_reply_ok(f, STATS_BYTES);
}

/* ------------------------------------------------------------------ loop */

void es_app_boot(void)
{
    have_last_seq = 0;
    stat_boots++;
    es_app_update_boot();
    es_app_detect_boot();
}

void es_app_handle(const es_frame *f)
{
    if (have_last_seq && f->seq == last_seq && f->crc == last_crc) {
        es_reply_resend(); /* a retry of the same frame: resend, never re-execute */
        return;
    }
    switch (f->type) {
    case ES_CMD_INFO: cmd_info(f); break;
    case ES_CMD_ERASE: es_app_cmd_erase(f); break;
    case ES_CMD_WRITE: es_app_cmd_write(f); break;
    case ES_CMD_VERIFY: es_app_cmd_verify(f); break;
    case ES_CMD_COMMIT: es_app_cmd_commit(f); break;
    case ES_CMD_INFER: cmd_infer(f); break;
    case ES_CMD_STATS: cmd_stats(f); break;
    case ES_CMD_CONFIRM: es_app_cmd_confirm(f); break;
    case ES_CMD_READ: es_app_cmd_read(f); break;
    case ES_CMD_INPUT: cmd_input(f); break;
    case ES_CMD_OUTPUT: cmd_output(f); break;
    case ES_CMD_DETECT: es_app_cmd_detect(f); break;
    case ES_CMD_DETECTIONS: es_app_cmd_detections(f); break;
    case ES_CMD_REBOOT:
        es_reply_ok(f, 0);
        hal_reset();
        return;
    default: es_reply_err(f, ES_ERR_UNKNOWN_COMMAND, "unknown command code"); break;
    }
    have_last_seq = 1;
    last_seq = f->seq;
    last_crc = f->crc;
}

void es_app_run(void)
{
    static es_frame frame;
    es_app_boot();
    for (;;) {
        if (es_proto_receive(&frame, 1000u, &counters) == ES_RX_FRAME) {
            es_app_handle(&frame);
        }
    }
}
