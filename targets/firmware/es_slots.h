/*
 * es_slots.h - A/B weight slots and the boot record in the board's flash storage area.
 *
 * Layout (offsets in the hal_flash storage area, S = sector size):
 *   [0, S)            boot record copy 0
 *   [S, 2S)           boot record copy 1
 *   [2S, 2S + Z)      slot A (Z = slot size, a whole number of sectors)
 *   [2S + Z, 2S + 2Z) slot B
 *
 * The boot record holds a sequence number and a CRC32; a new record always goes to the copy
 * that does not hold the newest valid one (erase, then program), so a power cut at any step
 * leaves at least one valid record. Before a slot is erased its state becomes WRITING in the
 * record, so a half-erased or half-written slot is never booted. See targets/protocol.md.
 */
#ifndef ES_SLOTS_H
#define ES_SLOTS_H

#include <stdint.h>

#define ES_SLOT_COUNT 2u
#define ES_SLOT_NONE 0xFFu

#define ES_SLOT_EMPTY 0u
#define ES_SLOT_WRITING 1u
#define ES_SLOT_VALID 2u
#define ES_SLOT_TRIAL 3u
#define ES_SLOT_BAD 4u

#define ES_RECORD_MAGIC 0x52425345u /* "ESBR" */
#define ES_RECORD_VERSION 1u
#define ES_RECORD_BYTES 164u

typedef struct {
    uint8_t state;
    uint32_t length;        /* committed blob length */
    uint8_t sha256[32];     /* of the committed blob */
    uint8_t graph_hash[32]; /* from the committed blob's header */
} es_slot_record;

typedef struct {
    uint32_t seq;
    uint8_t active;      /* last confirmed (VALID) slot, or ES_SLOT_NONE */
    uint8_t trial;       /* slot on trial, or ES_SLOT_NONE */
    uint8_t trial_boots; /* boots the trial slot may still take: 1 after COMMIT, 0 once booted */
    es_slot_record slot[ES_SLOT_COUNT];
} es_boot_record;

typedef struct {
    es_boot_record rec;
    int have_record;   /* a valid copy was found or written */
    uint8_t rec_copy;  /* which copy holds rec */
    uint32_t sector;
    uint32_t slot_size;
    uint32_t slot_offset[ES_SLOT_COUNT];
    uint32_t next_offset[ES_SLOT_COUNT]; /* next expected WRITE offset per slot */
    uint8_t running;   /* slot whose weights run now, or ES_SLOT_NONE (compiled-in) */
} es_store;

/* Decides whether a committed slot can run (blob verify + table fill); 1 yes, 0 no. */
typedef int (*es_slot_usable_fn)(const uint8_t *blob, uint32_t length, void *ctx);

/* Compute the layout, read the newest valid record, derive next offsets. 0 on success, -1 when
 * the storage area is too small for two records and two slots. */
int es_store_open(es_store *s);

/* Pick the slot to boot and record the trial attempt or the revert (may write the record). */
void es_store_boot(es_store *s, es_slot_usable_fn usable, void *ctx);

/* Write s->rec (seq + 1) to the other copy. 0 on success. */
int es_store_write_record(es_store *s);

/* Mark the slot WRITING (record) and erase its used sectors. 0 on success. */
int es_store_erase_slot(es_store *s, uint8_t slot);

/* Serialise / parse a record (ES_RECORD_BYTES); parse returns 1 when magic, version, CRC ok. */
void es_record_encode(const es_boot_record *rec, uint8_t *out);
int es_record_decode(const uint8_t *in, es_boot_record *rec);

/* The slot's bytes in place. */
const uint8_t *es_store_slot_data(const es_store *s, uint8_t slot);

#endif /* ES_SLOTS_H */
