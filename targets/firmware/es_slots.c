/* es_slots.c - boot record copies, slot erase and boot selection (see es_slots.h). */
#include "es_slots.h"

#include "es_blob.h"
#include "es_hal.h"
#include "es_util.h"

#define SLOT_RECORD_BYTES 72u

void es_record_encode(const es_boot_record *rec, uint8_t *out)
{
    uint32_t i;
    es_mem_set(out, 0, ES_RECORD_BYTES);
    es_put_u32(out, ES_RECORD_MAGIC);
    es_put_u16(out + 4, ES_RECORD_VERSION);
    es_put_u16(out + 6, ES_RECORD_BYTES);
    es_put_u32(out + 8, rec->seq);
    out[12] = rec->active;
    out[13] = rec->trial;
    out[14] = rec->trial_boots;
    for (i = 0; i < ES_SLOT_COUNT; ++i) {
        uint8_t *p = out + 16 + i * SLOT_RECORD_BYTES;
        p[0] = rec->slot[i].state;
        es_put_u32(p + 4, rec->slot[i].length);
        es_mem_copy(p + 8, rec->slot[i].sha256, 32);
        es_mem_copy(p + 40, rec->slot[i].graph_hash, 32);
    }
    es_put_u32(out + ES_RECORD_BYTES - 4, es_blob_crc32(0, out, ES_RECORD_BYTES - 4));
}

int es_record_decode(const uint8_t *in, es_boot_record *rec)
{
    uint32_t i;
    if (es_get_u32(in) != ES_RECORD_MAGIC || es_get_u16(in + 4) != ES_RECORD_VERSION ||
        es_get_u16(in + 6) != ES_RECORD_BYTES ||
        es_get_u32(in + ES_RECORD_BYTES - 4) != es_blob_crc32(0, in, ES_RECORD_BYTES - 4)) {
        return 0;
    }
    rec->seq = es_get_u32(in + 8);
    rec->active = in[12];
    rec->trial = in[13];
    rec->trial_boots = in[14];
    for (i = 0; i < ES_SLOT_COUNT; ++i) {
        const uint8_t *p = in + 16 + i * SLOT_RECORD_BYTES;
        rec->slot[i].state = p[0];
        rec->slot[i].length = es_get_u32(p + 4);
        es_mem_copy(rec->slot[i].sha256, p + 8, 32);
        es_mem_copy(rec->slot[i].graph_hash, p + 40, 32);
    }
    /* a record naming slots that do not exist is as good as a corrupt one */
    if ((rec->active != ES_SLOT_NONE && rec->active >= ES_SLOT_COUNT) ||
        (rec->trial != ES_SLOT_NONE && rec->trial >= ES_SLOT_COUNT)) {
        return 0;
    }
    return 1;
}

const uint8_t *es_store_slot_data(const es_store *s, uint8_t slot)
{
    return hal_flash_base() + s->slot_offset[slot];
}

static int is_blank(const uint8_t *p, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; ++i) {
        if (p[i] != 0xFFu) {
            return 0;
        }
    }
    return 1;
}

/* One past the last programmed (non-0xFF) byte, rounded up to the program unit. */
static uint32_t programmed_end(const uint8_t *p, uint32_t size)
{
    uint32_t end = size;
    uint32_t unit = hal_flash_program_unit();
    while (end > 0 && p[end - 1] == 0xFFu) {
        --end;
    }
    if (unit > 1u && end % unit != 0u) {
        end += unit - end % unit;
    }
    return end > size ? size : end;
}

int es_store_open(es_store *s)
{
    const uint8_t *base = hal_flash_base();
    es_boot_record copies[2];
    int ok[2];
    uint32_t i;
    es_mem_set(s, 0, sizeof(*s));
    s->sector = hal_flash_sector_size();
    if (s->sector < ES_RECORD_BYTES || hal_flash_size() < 4u * s->sector) {
        return -1;
    }
    s->slot_size = ((hal_flash_size() - 2u * s->sector) / 2u) / s->sector * s->sector;
    s->slot_offset[0] = 2u * s->sector;
    s->slot_offset[1] = 2u * s->sector + s->slot_size;
    for (i = 0; i < 2; ++i) {
        ok[i] = es_record_decode(base + i * s->sector, &copies[i]);
    }
    if (ok[0] || ok[1]) {
        /* newest by sequence number (serial-number arithmetic survives a wrap) */
        uint8_t pick = (uint8_t)(!ok[0] ? 1 : (!ok[1] ? 0 :
                                 ((int32_t)(copies[1].seq - copies[0].seq) > 0 ? 1 : 0)));
        s->rec = copies[pick];
        s->rec_copy = pick;
        s->have_record = 1;
    } else {
        s->rec.active = ES_SLOT_NONE;
        s->rec.trial = ES_SLOT_NONE;
    }
    for (i = 0; i < ES_SLOT_COUNT; ++i) {
        s->next_offset[i] = s->rec.slot[i].state == ES_SLOT_WRITING
                                ? programmed_end(base + s->slot_offset[i], s->slot_size)
                                : 0u;
    }
    s->running = ES_SLOT_NONE;
    return 0;
}

int es_store_write_record(es_store *s)
{
    uint8_t buf[ES_RECORD_BYTES];
    uint8_t target = s->have_record ? (uint8_t)(1u - s->rec_copy) : 0u;
    uint32_t offset = target * s->sector;
    s->rec.seq += 1u;
    es_record_encode(&s->rec, buf);
    if (!is_blank(hal_flash_base() + offset, s->sector) && hal_flash_erase(offset, s->sector) != 0) {
        return -1;
    }
    if (hal_flash_write(offset, buf, ES_RECORD_BYTES) != 0) {
        return -1;
    }
    s->rec_copy = target;
    s->have_record = 1;
    return 0;
}

int es_store_erase_slot(es_store *s, uint8_t slot)
{
    uint32_t off;
    const uint8_t *base = hal_flash_base();
    es_slot_record *r = &s->rec.slot[slot];
    if (r->state != ES_SLOT_WRITING || r->length != 0u) {
        /* first say "not bootable", then touch the bytes */
        r->state = ES_SLOT_WRITING;
        r->length = 0;
        es_mem_set(r->sha256, 0, 32);
        es_mem_set(r->graph_hash, 0, 32);
        if (s->rec.active == slot) {
            s->rec.active = ES_SLOT_NONE;
        }
        if (s->rec.trial == slot) {
            s->rec.trial = ES_SLOT_NONE;
            s->rec.trial_boots = 0;
        }
        if (es_store_write_record(s) != 0) {
            return -1;
        }
    }
    for (off = 0; off < s->slot_size; off += s->sector) {
        uint32_t at = s->slot_offset[slot] + off;
        if (!is_blank(base + at, s->sector) && hal_flash_erase(at, s->sector) != 0) {
            return -1;
        }
    }
    s->next_offset[slot] = 0;
    return 0;
}

static int slot_runs(es_store *s, uint8_t slot, es_slot_usable_fn usable, void *ctx)
{
    const es_slot_record *r;
    if (slot >= ES_SLOT_COUNT) {
        return 0;
    }
    r = &s->rec.slot[slot];
    if ((r->state != ES_SLOT_VALID && r->state != ES_SLOT_TRIAL) || r->length == 0u ||
        r->length > s->slot_size) {
        return 0;
    }
    return usable(es_store_slot_data(s, slot), r->length, ctx);
}

void es_store_boot(es_store *s, es_slot_usable_fn usable, void *ctx)
{
    uint8_t trial = s->rec.trial;
    uint8_t i;
    s->running = ES_SLOT_NONE;
    if (trial != ES_SLOT_NONE) {
        if (s->rec.trial_boots > 0u && s->rec.slot[trial].state == ES_SLOT_TRIAL) {
            /* spend the one trial boot before running it: a crash now means revert */
            s->rec.trial_boots = 0;
            if (es_store_write_record(s) == 0 && slot_runs(s, trial, usable, ctx)) {
                s->running = trial;
                return;
            }
        }
        /* the trial was not confirmed (or cannot run): revert */
        s->rec.slot[trial].state = ES_SLOT_BAD;
        s->rec.trial = ES_SLOT_NONE;
        s->rec.trial_boots = 0;
        (void)es_store_write_record(s);
    }
    if (slot_runs(s, s->rec.active, usable, ctx) && s->rec.slot[s->rec.active].state == ES_SLOT_VALID) {
        s->running = s->rec.active;
        return;
    }
    for (i = 0; i < ES_SLOT_COUNT; ++i) { /* any other confirmed slot */
        if (s->rec.slot[i].state == ES_SLOT_VALID && slot_runs(s, i, usable, ctx)) {
            s->running = i;
            return;
        }
    }
}
