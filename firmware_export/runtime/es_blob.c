/*
 * es_blob.c - weight-blob verifier; layout in es_blob.h and firmware_export/blob.py.
 *
 * Every check here has a twin in blob.py (same order), and the fuzz test in
 * tests/firmware_export/test_fe_blob_c.py asserts both accept and reject the same inputs.
 */
#include "es_blob.h"

#define ES_BLOB_NAME_(name, text) #name,
#define ES_BLOB_TEXT_(name, text) text,
static const char *const es_blob_status_names[] = {ES_BLOB_STATUS_LIST(ES_BLOB_NAME_)};
static const char *const es_blob_status_texts[] = {ES_BLOB_STATUS_LIST(ES_BLOB_TEXT_)};
#undef ES_BLOB_NAME_
#undef ES_BLOB_TEXT_

/* Header field offsets. */
#define OFF_MAGIC 0u
#define OFF_VERSION 4u
#define OFF_HEADER_SIZE 6u
#define OFF_FLAGS 8u
#define OFF_COUNT 12u
#define OFF_TOTAL 16u
#define OFF_PAYLOAD_OFFSET 20u
#define OFF_PAYLOAD_SIZE 24u
#define OFF_CONSTANT_COUNT 28u
#define OFF_STRUCTURE_HASH 32u
#define OFF_GRAPH_HASH 64u

/* Table entry field offsets. */
#define ENT_ID 0u
#define ENT_DTYPE 4u
#define ENT_BITS 5u
#define ENT_NDIM 6u
#define ENT_RESERVED8 7u
#define ENT_OFFSET 8u
#define ENT_SIZE 12u
#define ENT_CRC 16u
#define ENT_DIMS 20u
#define ENT_RESERVED32 36u

#define U32_MAX_ 0xFFFFFFFFu

static uint32_t rd16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

/* Nibble table for the reflected polynomial 0xEDB88320: 64 bytes instead of 1 KiB. */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};

uint32_t es_blob_crc32(uint32_t crc, const uint8_t *data, size_t len)
{
    size_t i;
    crc = ~crc;
    for (i = 0; i < len; ++i) {
        crc ^= data[i];
        crc = (crc >> 4) ^ crc_nibble[crc & 0xFu];
        crc = (crc >> 4) ^ crc_nibble[crc & 0xFu];
    }
    return ~crc;
}

const char *es_blob_status_str(es_blob_status status)
{
    if ((unsigned)status >= (unsigned)ES_BLOB_STATUS_COUNT) {
        return "unknown status";
    }
    return es_blob_status_texts[status];
}

const char *es_blob_status_name(es_blob_status status)
{
    if ((unsigned)status >= (unsigned)ES_BLOB_STATUS_COUNT) {
        return "ES_BLOB_UNKNOWN_STATUS";
    }
    return es_blob_status_names[status];
}

static uint64_t align16(uint64_t n)
{
    return (n + (ES_BLOB_ALIGN - 1u)) / ES_BLOB_ALIGN * ES_BLOB_ALIGN;
}

static uint32_t dtype_width_bits(uint32_t code)
{
    switch (code) {
    case ES_BLOB_DTYPE_INT8:
    case ES_BLOB_DTYPE_UINT8:
        return 8u;
    case ES_BLOB_DTYPE_INT16:
        return 16u;
    case ES_BLOB_DTYPE_INT32:
    case ES_BLOB_DTYPE_FLOAT32:
        return 32u;
    default:
        return 0u; /* unknown dtype */
    }
}

static void read_entry(const uint8_t *e, es_blob_tensor_desc *d)
{
    uint32_t k;
    d->id = rd32(e + ENT_ID);
    d->dtype = e[ENT_DTYPE];
    d->bits = e[ENT_BITS];
    d->ndim = e[ENT_NDIM];
    d->offset = rd32(e + ENT_OFFSET);
    d->size = rd32(e + ENT_SIZE);
    d->crc32 = rd32(e + ENT_CRC);
    for (k = 0; k < ES_BLOB_MAX_NDIM; ++k) {
        d->dims[k] = rd32(e + ENT_DIMS + 4u * k);
    }
}

/* Bytes a tensor needs; values above 0xFFFFFFFF are clamped there (they can never match). */
static uint64_t expected_size(const es_blob_tensor_desc *d)
{
    uint64_t count = 1u;
    uint32_t k;
    uint32_t full_dims = (d->bits == 1u) ? d->ndim - 1u : d->ndim;
    for (k = 0; k < full_dims; ++k) {
        count *= d->dims[k]; /* count <= 2^32 and dims < 2^32: no 64-bit overflow */
        if (count > U32_MAX_) {
            return (uint64_t)U32_MAX_ + 1u;
        }
    }
    if (d->bits == 1u) {
        return count * (((uint64_t)d->dims[d->ndim - 1u] + 7u) / 8u);
    }
    return count * (dtype_width_bits(d->dtype) / 8u);
}

static es_blob_status check_entry(const uint8_t *blob, uint32_t index, uint32_t prev_end,
                                  uint32_t payload_end, uint32_t *end)
{
    const uint8_t *e = blob + ES_BLOB_HEADER_SIZE + (size_t)ES_BLOB_ENTRY_SIZE * index;
    es_blob_tensor_desc d;
    uint32_t width;
    uint32_t k;
    read_entry(e, &d);
    if (d.id != index) {
        return ES_BLOB_ERR_BAD_ID;
    }
    if (e[ENT_RESERVED8] != 0u || rd32(e + ENT_RESERVED32) != 0u) {
        return ES_BLOB_ERR_RESERVED;
    }
    width = dtype_width_bits(d.dtype);
    if (width == 0u) {
        return ES_BLOB_ERR_BAD_DTYPE;
    }
    if (d.bits != width && !(d.bits == 1u && d.dtype == ES_BLOB_DTYPE_INT8)) {
        return ES_BLOB_ERR_BAD_BITS;
    }
    if (d.ndim > ES_BLOB_MAX_NDIM) {
        return ES_BLOB_ERR_BAD_SHAPE;
    }
    for (k = 0; k < ES_BLOB_MAX_NDIM; ++k) {
        if ((k < d.ndim && d.dims[k] == 0u) || (k >= d.ndim && d.dims[k] != 0u)) {
            return ES_BLOB_ERR_BAD_SHAPE;
        }
    }
    if (d.bits == 1u && d.ndim == 0u) {
        return ES_BLOB_ERR_BAD_SHAPE;
    }
    if (expected_size(&d) != (uint64_t)d.size) {
        return ES_BLOB_ERR_TENSOR_SIZE;
    }
    if (d.offset % ES_BLOB_ALIGN != 0u) {
        return ES_BLOB_ERR_MISALIGNED;
    }
    if (d.offset < prev_end) {
        return ES_BLOB_ERR_OVERLAP;
    }
    if ((uint64_t)d.offset + d.size > payload_end) {
        return ES_BLOB_ERR_OUT_OF_RANGE;
    }
    if (es_blob_crc32(0u, blob + d.offset, d.size) != d.crc32) {
        return ES_BLOB_ERR_TENSOR_CRC;
    }
    *end = d.offset + d.size;
    return ES_BLOB_OK;
}

static es_blob_status check_header(const uint8_t *blob, size_t len, es_blob_info *info)
{
    uint32_t header_size;
    uint32_t trailer;
    uint32_t max_count;
    uint64_t table_end;
    if (len < ES_BLOB_HEADER_SIZE) {
        return ES_BLOB_ERR_TRUNCATED;
    }
    if (blob[OFF_MAGIC] != 'E' || blob[OFF_MAGIC + 1u] != 'S' || blob[OFF_MAGIC + 2u] != 'W' ||
        blob[OFF_MAGIC + 3u] != 'B') {
        return ES_BLOB_ERR_BAD_MAGIC;
    }
    info->version = rd16(blob + OFF_VERSION);
    if (info->version != ES_BLOB_FORMAT_VERSION) {
        return ES_BLOB_ERR_BAD_VERSION;
    }
    header_size = rd16(blob + OFF_HEADER_SIZE);
    if (header_size != ES_BLOB_HEADER_SIZE) {
        return ES_BLOB_ERR_BAD_HEADER_SIZE;
    }
    info->flags = rd32(blob + OFF_FLAGS);
    if ((info->flags & ~ES_BLOB_FLAG_SIGNED) != 0u) {
        return ES_BLOB_ERR_BAD_FLAGS;
    }
    info->total_size = rd32(blob + OFF_TOTAL);
    if ((uint64_t)info->total_size != (uint64_t)len) {
        return ES_BLOB_ERR_SIZE_MISMATCH;
    }
    trailer = ES_BLOB_CRC_SIZE +
              (((info->flags & ES_BLOB_FLAG_SIGNED) != 0u) ? ES_BLOB_SIGNATURE_SIZE : 0u);
    max_count = (info->total_size >= ES_BLOB_HEADER_SIZE + trailer)
                    ? (info->total_size - ES_BLOB_HEADER_SIZE - trailer) / ES_BLOB_ENTRY_SIZE
                    : 0u;
    info->tensor_count = rd32(blob + OFF_COUNT);
    if (info->tensor_count > max_count) {
        return ES_BLOB_ERR_TOO_MANY_TENSORS;
    }
    info->constant_count = rd32(blob + OFF_CONSTANT_COUNT);
    if (info->constant_count > info->tensor_count) {
        return ES_BLOB_ERR_BAD_CONSTANT_COUNT;
    }
    table_end = (uint64_t)ES_BLOB_HEADER_SIZE + (uint64_t)ES_BLOB_ENTRY_SIZE * info->tensor_count;
    info->payload_offset = rd32(blob + OFF_PAYLOAD_OFFSET);
    if ((uint64_t)info->payload_offset != align16(table_end)) {
        return ES_BLOB_ERR_BAD_PAYLOAD_OFFSET;
    }
    info->payload_size = rd32(blob + OFF_PAYLOAD_SIZE);
    if ((uint64_t)info->payload_offset + info->payload_size + trailer != (uint64_t)len) {
        return ES_BLOB_ERR_BAD_PAYLOAD_SIZE;
    }
    return ES_BLOB_OK;
}

static void zero_info(es_blob_info *info)
{
    info->blob = NULL;
    info->total_size = 0u;
    info->version = 0u;
    info->flags = 0u;
    info->tensor_count = 0u;
    info->payload_offset = 0u;
    info->payload_size = 0u;
    info->crc32 = 0u;
    info->constant_count = 0u;
    info->structure_hash = NULL;
    info->graph_hash = NULL;
}

es_blob_status es_blob_verify(const uint8_t *blob, size_t len,
                              const uint8_t expected_structure_hash[ES_BLOB_HASH_SIZE],
                              es_blob_info *out)
{
    es_blob_info info;
    es_blob_status status;
    uint32_t crc_at;
    uint32_t prev_end;
    uint32_t i;
    uint32_t k;
    if (out == NULL) {
        return ES_BLOB_ERR_NULL_ARG;
    }
    zero_info(out);
    if (blob == NULL) {
        return ES_BLOB_ERR_NULL_ARG;
    }
    zero_info(&info);
    status = check_header(blob, len, &info);
    if (status != ES_BLOB_OK) {
        return status;
    }
    crc_at = info.payload_offset + info.payload_size;
    info.crc32 = rd32(blob + crc_at);
    if (es_blob_crc32(0u, blob, crc_at) != info.crc32) {
        return ES_BLOB_ERR_CRC;
    }
    prev_end = info.payload_offset;
    for (i = 0; i < info.tensor_count; ++i) {
        status = check_entry(blob, i, prev_end, crc_at, &prev_end);
        if (status != ES_BLOB_OK) {
            return status;
        }
    }
    if (expected_structure_hash != NULL) {
        for (k = 0; k < ES_BLOB_HASH_SIZE; ++k) {
            if (blob[OFF_STRUCTURE_HASH + k] != expected_structure_hash[k]) {
                return ES_BLOB_ERR_STRUCTURE_HASH;
            }
        }
    }
    info.blob = blob;
    info.structure_hash = blob + OFF_STRUCTURE_HASH;
    info.graph_hash = blob + OFF_GRAPH_HASH;
    *out = info;
    return ES_BLOB_OK;
}

es_blob_status es_blob_tensor_desc_get(const es_blob_info *info, uint32_t id,
                                       es_blob_tensor_desc *desc)
{
    if (info == NULL || info->blob == NULL || desc == NULL) {
        return ES_BLOB_ERR_NULL_ARG;
    }
    if (id >= info->tensor_count) {
        return ES_BLOB_ERR_NO_TENSOR;
    }
    read_entry(info->blob + ES_BLOB_HEADER_SIZE + (size_t)ES_BLOB_ENTRY_SIZE * id, desc);
    return ES_BLOB_OK;
}

es_blob_status es_blob_tensor(const es_blob_info *info, uint32_t id, const uint8_t **data,
                              uint32_t *size)
{
    es_blob_tensor_desc desc;
    es_blob_status status;
    if (data == NULL || size == NULL) {
        return ES_BLOB_ERR_NULL_ARG;
    }
    status = es_blob_tensor_desc_get(info, id, &desc);
    if (status != ES_BLOB_OK) {
        *data = NULL;
        *size = 0u;
        return status;
    }
    *data = info->blob + desc.offset;
    *size = desc.size;
    return ES_BLOB_OK;
}

es_blob_status es_blob_fill_table(const es_blob_info *info, const uint32_t *expected_bytes,
                                  uint32_t count, const void **table)
{
    es_blob_tensor_desc desc;
    uint32_t i;
    if (info == NULL || info->blob == NULL || expected_bytes == NULL || table == NULL) {
        return ES_BLOB_ERR_NULL_ARG;
    }
    /* int32 biases and records are read in place: the entries (16-aligned from the blob
     * start) are aligned only if the blob is */
    if (((uintptr_t)info->blob & 3u) != 0u) {
        return ES_BLOB_ERR_BUFFER_ALIGN;
    }
    if (info->tensor_count != count) {
        return ES_BLOB_ERR_TABLE_COUNT;
    }
    for (i = 0; i < count; ++i) {  /* check every entry before writing any */
        read_entry(info->blob + ES_BLOB_HEADER_SIZE + (size_t)ES_BLOB_ENTRY_SIZE * i, &desc);
        if (desc.size != expected_bytes[i]) {
            return ES_BLOB_ERR_TABLE_SIZE;
        }
    }
    for (i = 0; i < count; ++i) {
        read_entry(info->blob + ES_BLOB_HEADER_SIZE + (size_t)ES_BLOB_ENTRY_SIZE * i, &desc);
        table[i] = info->blob + desc.offset;
    }
    return ES_BLOB_OK;
}
