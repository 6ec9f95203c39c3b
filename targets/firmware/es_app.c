/*
 * es_app.c - command dispatcher of the firmware app (targets/protocol.md, "Commands").
 *
 * Compiled together with one exported model (model.h / model.c from firmware_export): the
 * compiled-in weights run when no slot holds a valid blob; a committed slot's blob runs through
 * model_invoke_table() once es_blob_verify accepted it (CRCs + this code's structure hash).
 * The detector commands (DETECT, DETECTIONS) live in es_app_detect.c; es_app_internal.h is
 * what the two files share.
 *
 * Signed blobs: a build with a release public key compiled in (-DES_BLOB_PUBLIC_KEY={0x..,...},
 * its 32 raw bytes, from targets/build.py --public-key) runs only blobs that carry a valid
 * Ed25519 signature by that key (es_ed25519.c; the signed bytes are defined in
 * firmware_export/blob.py): COMMIT refuses others, and boot skips a slot whose signature no
 * longer verifies. Without a key, signatures are left to the host (flasher, edge agent).
 */
#include "es_app.h"
#include "es_app_internal.h"

#include "es_blob.h"
#ifdef ES_BLOB_PUBLIC_KEY
#include "es_ed25519.h"
#endif
#include "es_hal.h"
#include "es_reply.h"
#include "es_sha256.h"
#include "es_slots.h"
#include "es_util.h"
#include "model.h"

/* Boards put the arena in their fastest large RAM (e.g. ".axisram" on STM32H747). */
#ifdef ES_ARENA_SECTION
#define ES_ARENA_ATTR __attribute__((section(ES_ARENA_SECTION), aligned(16)))
#else
#define ES_ARENA_ATTR __attribute__((aligned(16)))
#endif

#define NUM_TABLE (MODEL_NUM_WEIGHTS > 0 ? MODEL_NUM_WEIGHTS : 1)
#define INFO_BYTES 168u
#define STATS_BYTES 32u
/* INFO byte 81 (slot 0's first reserved byte): device flags (targets/protocol.md, Clarifications) */
#define INFO_FLAGS_OFFSET 81u
#define INFO_FLAG_SIGNATURE_REQUIRED 0x01u

#ifdef ES_BLOB_PUBLIC_KEY
static const uint8_t blob_public_key[ES_ED25519_PUBLIC_KEY_SIZE] = ES_BLOB_PUBLIC_KEY;
#endif

/* Everything below lives in .bss: no malloc. */
static es_store store;
static es_proto_counters counters;
static const void *slot_table[NUM_TABLE];
static const void *check_table[NUM_TABLE]; /* COMMIT checks a blob without touching slot_table */
static uint8_t arena[MODEL_ARENA_BYTES > 0 ? MODEL_ARENA_BYTES : 16] ES_ARENA_ATTR;
static int8_t input_buf[MODEL_INPUTS_TOTAL_BYTES] __attribute__((aligned(16)));
static int8_t output_buf[MODEL_OUTPUTS_TOTAL_BYTES] __attribute__((aligned(16)));
static int have_last_seq;
static uint8_t last_seq;
static uint32_t last_crc;
static uint32_t stat_inferences, stat_last_cycles, stat_boots;


/* ------------------------------------------------------------------ model */

/*
 * NULL when a blob that es_blob_verify accepted may run on this build, else why not (the start of
 * the COMMIT error message; *detail, when not NULL, says more). Builds without a public key
 * accept every blob here.
 */
static const char *signature_problem(const es_blob_info *info, const char **detail)
{
#ifdef ES_BLOB_PUBLIC_KEY
    uint32_t signed_bytes;
    es_ed25519_status st;
    *detail = NULL;
    if ((info->flags & ES_BLOB_FLAG_SIGNED) == 0u) {
        return "signature missing: this firmware runs only blobs signed with its release key "
               "(export --sign-key)"; /* ERR messages stop at ES_MSG_MAX = 120 characters */
    }
    /* the signature covers every byte before it: header through CRC32 (blob.py, "Layout") */
    signed_bytes = info->total_size - ES_BLOB_SIGNATURE_SIZE;
    st = es_ed25519_verify(info->blob + signed_bytes, info->blob, signed_bytes, blob_public_key);
    if (st != ES_ED25519_OK) {
        *detail = es_ed25519_status_str(st);
        return "signature invalid: ";
    }
    return NULL;
#else
    (void)info;
    *detail = NULL;
    return NULL;
#endif
}

static int blob_usable(const uint8_t *blob, uint32_t length, void *ctx)
{
    es_blob_info info;
    const char *detail;
    (void)ctx;
    if (es_blob_verify(blob, length, model_structure_hash, &info) != ES_BLOB_OK ||
        signature_problem(&info, &detail) != NULL) {
        return 0; /* the boot falls back as for a bad CRC */
    }
    return es_blob_fill_table(&info, model_weight_bytes, MODEL_NUM_WEIGHTS, slot_table) == ES_BLOB_OK;
}

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
    uint32_t i, off = 0;
    for (i = 0; i < MODEL_NUM_INPUTS; ++i) {
        ins[i] = input_buf + off;
        off += model_desc.input_bytes[i];
    }
    es_app_output_ptrs(outs);
    if (store.running == ES_SLOT_NONE) {
        return model_invoke_multi(ins, outs, arena);
    }
    return model_invoke_table(slot_table, ins, outs, arena);
}

/* The weights table that runs now: a committed slot's, or NULL for the compiled-in weights. */
const void *const *es_app_running_table(void)
{
    return store.running == ES_SLOT_NONE ? NULL : (const void *const *)slot_table;
}

void es_app_count_inference(uint32_t cycles)
{
    stat_inferences++;
    stat_last_cycles = cycles;
}

/* ------------------------------------------------------------------ helpers */

static int store_ok; /* the board has room for two records and two slots */

static int slot_arg(const es_frame *f, uint32_t min_len, uint8_t *slot)
{
    if (!store_ok) {
        es_reply_err(f, ES_ERR_FLASH, "no weight-slot storage on this build: only the compiled-in model runs");
        return 0;
    }
    if (f->length < min_len || f->payload[0] >= ES_SLOT_COUNT) {
        es_reply_err(f, ES_ERR_BAD_ARGS, "bad payload: expected slot 0 or 1 and the command's fields");
        return 0;
    }
    *slot = f->payload[0];
    return 1;
}

/* Slots that must not be touched: the running one and, during a trial, the revert target. */
static int slot_protected(uint8_t slot)
{
    if (slot == store.running) {
        return 1;
    }
    return store.rec.trial != ES_SLOT_NONE && store.running == store.rec.trial &&
           slot == store.rec.active;
}

static int refuse_protected(const es_frame *f, uint8_t slot)
{
    es_msg m;
    if (!slot_protected(slot)) {
        return 0;
    }
    m = es_reply_err_begin(ES_ERR_SLOT_ACTIVE);
    es_msg_str(&m, "slot ");
    es_msg_u32(&m, slot);
    es_msg_str(&m, slot == store.running ? " is running; write the other slot"
                                      : " is the fallback of the unconfirmed trial; CONFIRM first");
    es_reply_err_send(f, &m);
    return 1;
}

static void sha256_slot(uint8_t slot, uint32_t length, uint8_t digest[32])
{
    es_sha256(es_store_slot_data(&store, slot), length, digest);
}

/* ------------------------------------------------------------------ commands */

static void cmd_info(const es_frame *f)
{
    uint8_t *p = es_reply_payload();
    uint32_t i;
    p[0] = ES_PROTO_VERSION;
    es_put_str(p + 1, ES_FW_VERSION, 16);
    es_put_str(p + 17, hal_board_name(), 16);
    es_put_u16(p + 33, ES_MAX_COMMAND_PAYLOAD);
    p[35] = store.running;
    es_mem_copy(p + 36, model_structure_hash, 32);
    es_put_u32(p + 68, MODEL_INPUTS_TOTAL_BYTES);
    es_put_u32(p + 72, MODEL_OUTPUTS_TOTAL_BYTES);
    es_put_u32(p + 76, store.slot_size);
    for (i = 0; i < ES_SLOT_COUNT; ++i) {
        uint8_t *s = p + 80 + 44 * i;
        s[0] = store.rec.slot[i].state;
        s[1] = s[2] = s[3] = 0;
        es_put_u32(s + 4, store.next_offset[i]);
        es_put_u32(s + 8, store.rec.slot[i].length);
        es_mem_copy(s + 12, store.rec.slot[i].graph_hash, 32);
    }
#ifdef ES_BLOB_PUBLIC_KEY
    p[INFO_FLAGS_OFFSET] = INFO_FLAG_SIGNATURE_REQUIRED;
#endif
    es_reply_ok(f, INFO_BYTES);
}

static void cmd_erase(const es_frame *f)
{
    uint8_t slot;
    if (!slot_arg(f, 1, &slot) || refuse_protected(f, slot)) {
        return;
    }
    if (es_store_erase_slot(&store, slot) != 0) {
        es_reply_err(f, ES_ERR_FLASH, "flash erase failed");
        return;
    }
    es_reply_ok(f, 0);
}

static void cmd_write(const es_frame *f)
{
    uint8_t slot;
    uint32_t offset, len, next, skip;
    const uint8_t *data = f->payload + 5;
    const uint8_t *flash;
    es_msg m;
    if (!slot_arg(f, 6, &slot) || refuse_protected(f, slot)) {
        return;
    }
    if (store.rec.slot[slot].state != ES_SLOT_WRITING) {
        es_reply_err(f, ES_ERR_BAD_ARGS, "slot is not being written: ERASE it before WRITE");
        return;
    }
    offset = es_get_u32(f->payload + 1);
    len = f->length - 5u;
    next = store.next_offset[slot];
    flash = es_store_slot_data(&store, slot);
    if (offset > next || offset + len > store.slot_size || offset + len < offset) {
        m = es_reply_err_begin(offset + len > store.slot_size ? ES_ERR_BAD_ARGS : ES_ERR_BAD_OFFSET);
        es_msg_str(&m, "expected ");
        es_msg_u32(&m, next);
        es_msg_str(&m, ", got offset ");
        es_msg_u32(&m, offset);
        es_msg_str(&m, " length ");
        es_msg_u32(&m, len);
        es_msg_str(&m, "; slot size ");
        es_msg_u32(&m, store.slot_size);
        es_reply_err_send(f, &m);
        return;
    }
    /* bytes below next must already be there (a retry after a lost ACK) */
    skip = next - offset < len ? next - offset : len;
    if (!es_mem_equal(flash + offset, data, skip)) {
        m = es_reply_err_begin(ES_ERR_BAD_OFFSET);
        es_msg_str(&m, "expected ");
        es_msg_u32(&m, next);
        es_msg_str(&m, ": data at offset ");
        es_msg_u32(&m, offset);
        es_msg_str(&m, " differs from flash");
        es_reply_err_send(f, &m);
        return;
    }
    if (skip < len) {
        uint32_t unit = hal_flash_program_unit();
        if (unit > 1u && next % unit != 0u) {
            es_reply_err(f, ES_ERR_BAD_ARGS, "write offset is not a multiple of the flash program unit; "
                                         "send chunks of 992 bytes");
            return;
        }
        if (hal_flash_write(store.slot_offset[slot] + next, data + skip, len - skip) != 0 ||
            !es_mem_equal(flash + next, data + skip, len - skip)) {
            es_reply_err(f, ES_ERR_FLASH, "flash program failed or read back differs");
            return;
        }
        store.next_offset[slot] = next + (len - skip);
    }
    es_put_u32(es_reply_payload(), store.next_offset[slot]);
    es_reply_ok(f, 4);
}

static void cmd_verify(const es_frame *f)
{
    uint8_t slot;
    uint32_t length;
    if (!slot_arg(f, 5, &slot)) {
        return;
    }
    length = es_get_u32(f->payload + 1);
    if (length > store.slot_size) {
        es_reply_err(f, ES_ERR_BAD_ARGS, "length is larger than the slot");
        return;
    }
    sha256_slot(slot, length, es_reply_payload());
    es_reply_ok(f, 32);
}

static void cmd_commit(const es_frame *f)
{
    uint8_t slot, digest[32];
    uint32_t length;
    es_blob_info info;
    es_blob_status st;
    es_slot_record *r;
    es_msg m;
    const char *problem, *detail;
    if (!slot_arg(f, 37, &slot) || refuse_protected(f, slot)) {
        return;
    }
    r = &store.rec.slot[slot];
    length = es_get_u32(f->payload + 1);
    if (r->state != ES_SLOT_WRITING || length == 0u || length > store.next_offset[slot]) {
        es_reply_err(f, ES_ERR_BAD_ARGS, "nothing written to commit: length exceeds the written bytes");
        return;
    }
    sha256_slot(slot, length, digest);
    if (!es_mem_equal(digest, f->payload + 5, 32)) {
        es_reply_err(f, ES_ERR_HASH_MISMATCH, "sha256 of the slot differs from the host's: rewrite the slot");
        return;
    }
    st = es_blob_verify(es_store_slot_data(&store, slot), length, model_structure_hash, &info);
    if (st == ES_BLOB_OK) {
        st = es_blob_fill_table(&info, model_weight_bytes, MODEL_NUM_WEIGHTS, check_table);
    }
    if (st != ES_BLOB_OK) {
        m = es_reply_err_begin(ES_ERR_BLOB_INVALID);
        es_msg_str(&m, es_blob_status_name(st));
        es_reply_err_send(f, &m);
        return;
    }
    problem = signature_problem(&info, &detail);
    if (problem != NULL) {
        m = es_reply_err_begin(ES_ERR_BLOB_INVALID);
        es_msg_str(&m, problem);
        if (detail != NULL) {
            es_msg_str(&m, detail);
        }
        es_reply_err_send(f, &m);
        return;
    }
    if (store.rec.trial != ES_SLOT_NONE && store.rec.trial != slot) {
        store.rec.slot[store.rec.trial].state = ES_SLOT_BAD;
    }
    r->state = ES_SLOT_TRIAL;
    r->length = length;
    es_mem_copy(r->sha256, digest, 32);
    es_mem_copy(r->graph_hash, info.graph_hash, 32);
    store.rec.trial = slot;
    store.rec.trial_boots = 1;
    store.next_offset[slot] = 0; /* only WRITING slots have a next offset */
    if (es_store_write_record(&store) != 0) {
        es_reply_err(f, ES_ERR_FLASH, "boot record write failed");
        return;
    }
    es_reply_ok(f, 0);
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

static void cmd_confirm(const es_frame *f)
{
    uint8_t trial = store.rec.trial;
    if (trial == ES_SLOT_NONE || store.running != trial) {
        es_reply_err(f, ES_ERR_NOT_TRIAL, "no trial boot to confirm");
        return;
    }
    store.rec.slot[trial].state = ES_SLOT_VALID;
    store.rec.active = trial;
    store.rec.trial = ES_SLOT_NONE;
    store.rec.trial_boots = 0;
    if (es_store_write_record(&store) != 0) {
        es_reply_err(f, ES_ERR_FLASH, "boot record write failed");
        return;
    }
    es_reply_ok(f, 0);
}

static void cmd_read(const es_frame *f)
{
    uint8_t slot;
    uint32_t offset, len;
    if (!slot_arg(f, 7, &slot)) {
        return;
    }
    offset = es_get_u32(f->payload + 1);
    len = es_get_u16(f->payload + 5);
    if (len > ES_MAX_PAYLOAD || offset > store.slot_size || len > store.slot_size - offset) {
        es_reply_err(f, ES_ERR_BAD_ARGS, "READ range runs past the slot (or over MAX_PAYLOAD)");
        return;
    }
    es_mem_copy(es_reply_payload(), es_store_slot_data(&store, slot) + offset, len);
    es_reply_ok(f, (uint16_t)len);
}

/* ------------------------------------------------------------------ loop */

void es_app_boot(void)
{
    have_last_seq = 0;
    stat_boots++;
    store_ok = es_store_open(&store) == 0;
    if (!store_ok) {
        store.running = ES_SLOT_NONE; /* storage too small: compiled-in weights only */
        store.rec.active = ES_SLOT_NONE;
        store.rec.trial = ES_SLOT_NONE;
        es_app_detect_boot();
        return;
    }
    es_store_boot(&store, blob_usable, NULL);
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
    case ES_CMD_ERASE: cmd_erase(f); break;
    case ES_CMD_WRITE: cmd_write(f); break;
    case ES_CMD_VERIFY: cmd_verify(f); break;
    case ES_CMD_COMMIT: cmd_commit(f); break;
    case ES_CMD_INFER: cmd_infer(f); break;
    case ES_CMD_STATS: cmd_stats(f); break;
    case ES_CMD_CONFIRM: cmd_confirm(f); break;
    case ES_CMD_READ: cmd_read(f); break;
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
