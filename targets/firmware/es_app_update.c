/*
 * es_app_update.c - the A/B weight-slot commands of the firmware app (targets/protocol.md,
 * "Commands"): ERASE, WRITE, VERIFY, COMMIT, CONFIRM, READ, and the choice of the slot to run at
 * boot.
 *
 * This file owns the slot storage (es_store, layout in es_slots.h) and the weights table of the
 * running slot; es_app.c reads them through es_app_store() and es_app_running_table()
 * (es_app_internal.h). The running slot, and during a trial its fallback, are never erased or
 * written, so an interrupted or corrupt update leaves the previous model running: COMMIT makes a
 * written, hash-checked blob the trial of the next boot, CONFIRM from that boot keeps it, and
 * es_store_boot() reverts a trial that was not confirmed.
 *
 * Signed blobs: a build with a release public key compiled in (-DES_BLOB_PUBLIC_KEY={0x..,...},
 * its 32 raw bytes, from targets/build.py --public-key) runs only blobs that carry a valid
 * Ed25519 signature by that key (es_ed25519.c; the signed bytes are defined in
 * firmware_export/blob.py): COMMIT refuses others, and boot skips a slot whose signature no
 * longer verifies. Without a key, signatures are left to the host (flasher, edge agent).
 */
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

#define NUM_TABLE (MODEL_NUM_WEIGHTS > 0 ? MODEL_NUM_WEIGHTS : 1)

#ifdef ES_BLOB_PUBLIC_KEY
static const uint8_t blob_public_key[ES_ED25519_PUBLIC_KEY_SIZE] = ES_BLOB_PUBLIC_KEY;
#endif

/* Everything below lives in .bss: no malloc. */
static es_store store;
static int store_ok; /* the board has room for two records and two slots */
static const void *slot_table[NUM_TABLE];
static const void *check_table[NUM_TABLE]; /* COMMIT checks a blob without touching slot_table */

/* ------------------------------------------------------------------ blobs */

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

/* ------------------------------------------------------------------ shared with es_app.c */

void es_app_update_boot(void)
{
    store_ok = es_store_open(&store) == 0;
    if (!store_ok) {
        store.running = ES_SLOT_NONE; /* storage too small: compiled-in weights only */
        store.rec.active = ES_SLOT_NONE;
        store.rec.trial = ES_SLOT_NONE;
        return;
    }
    es_store_boot(&store, blob_usable, NULL);
}

const es_store *es_app_store(void)
{
    return &store;
}

/* The weights table that runs now: a committed slot's, or NULL for the compiled-in weights. */
const void *const *es_app_running_table(void)
{
    return store.running == ES_SLOT_NONE ? NULL : (const void *const *)slot_table;
}

/* ------------------------------------------------------------------ helpers */

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

void es_app_cmd_erase(const es_frame *f)
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

void es_app_cmd_write(const es_frame *f)
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

void es_app_cmd_verify(const es_frame *f)
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

void es_app_cmd_commit(const es_frame *f)
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

void es_app_cmd_confirm(const es_frame *f)
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

void es_app_cmd_read(const es_frame *f)
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
