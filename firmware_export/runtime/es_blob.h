/*
 * es_blob.h - verify a weight blob in place and point a model's weights table into it (C99, no
 * malloc, no floating point).
 *
 * The layout is documented in firmware_export/blob.py (the Python writer/parser); this file
 * mirrors it: a 96-byte header ("ESWB", version 2, flags, entry count, total size, payload
 * offset/size, constant count, 32-byte structure hash, 32-byte graph hash), a table of 40-byte
 * entries (the model's weights table: graph constants, per-op parameter records, I/O record), a
 * payload with every entry 16-byte aligned, a CRC32 (zlib polynomial) over everything before
 * it, and an optional 64-byte Ed25519 signature.
 *
 * Signatures are NOT checked here: the flasher and the edge agent verify them before they
 * write a slot. The device checks structure, bounds, alignment, the CRC32 of the blob and of
 * every entry, and that the blob fits the compiled code: its *structure hash* (op kinds,
 * attributes, shapes; not weights, scales or zero points) must equal the firmware's
 * <prefix>_structure_hash. The graph hash (this exact model) is carried for reports only.
 *
 * Firmware flow for a model update without new code:
 *
 *     es_blob_verify(slot, len, model_structure_hash, &info)          -> ES_BLOB_OK
 *     es_blob_fill_table(&info, model_weight_bytes, MODEL_NUM_WEIGHTS, table) -> ES_BLOB_OK
 *     model_invoke_table(table, inputs, outputs, arena)
 *
 * All header and table fields are little-endian and read byte by byte, so verification works
 * at any address; the entry data is used in place (int32 values in native order, i.e. on a
 * little-endian core), so es_blob_fill_table needs the blob at a 4-byte aligned address
 * (entries are 16-byte aligned relative to the blob start).
 */
#ifndef ES_BLOB_H
#define ES_BLOB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ES_BLOB_FORMAT_VERSION 2u
#define ES_BLOB_HEADER_SIZE 96u
#define ES_BLOB_ENTRY_SIZE 40u
#define ES_BLOB_ALIGN 16u
#define ES_BLOB_MAX_NDIM 4u
#define ES_BLOB_CRC_SIZE 4u
#define ES_BLOB_SIGNATURE_SIZE 64u
#define ES_BLOB_FLAG_SIGNED 0x1u
#define ES_BLOB_HASH_SIZE 32u

/* dtype codes in the tensor table (same numbers as DTYPE_CODES in blob.py) */
#define ES_BLOB_DTYPE_INT8 1u
#define ES_BLOB_DTYPE_INT32 2u
#define ES_BLOB_DTYPE_FLOAT32 3u
#define ES_BLOB_DTYPE_INT16 4u
#define ES_BLOB_DTYPE_UINT8 5u

/* Every result, once: the enum and the strings are generated from this list. */
#define ES_BLOB_STATUS_LIST(X)                                                              \
    X(ES_BLOB_OK, "ok")                                                                     \
    X(ES_BLOB_ERR_NULL_ARG, "a required pointer argument is NULL")                          \
    X(ES_BLOB_ERR_TRUNCATED, "blob is shorter than its 96-byte header")                     \
    X(ES_BLOB_ERR_BAD_MAGIC, "magic is not ESWB: not a weight blob")                        \
    X(ES_BLOB_ERR_BAD_VERSION, "unknown blob format version")                               \
    X(ES_BLOB_ERR_BAD_HEADER_SIZE, "header size field is not 96")                           \
    X(ES_BLOB_ERR_BAD_FLAGS, "unknown flag bits are set")                                   \
    X(ES_BLOB_ERR_RESERVED, "a reserved field is not zero")                                 \
    X(ES_BLOB_ERR_SIZE_MISMATCH, "total size field differs from the blob length")           \
    X(ES_BLOB_ERR_TOO_MANY_TENSORS, "tensor count cannot fit in the blob")                  \
    X(ES_BLOB_ERR_BAD_CONSTANT_COUNT, "constant count is larger than the entry count")      \
    X(ES_BLOB_ERR_BAD_PAYLOAD_OFFSET, "payload offset is not header + table rounded to 16") \
    X(ES_BLOB_ERR_BAD_PAYLOAD_SIZE, "payload offset + size + trailer != total size")        \
    X(ES_BLOB_ERR_CRC, "blob CRC32 mismatch: corrupt or truncated transfer")                \
    X(ES_BLOB_ERR_BAD_ID, "tensor table entry has the wrong id")                            \
    X(ES_BLOB_ERR_BAD_DTYPE, "tensor table entry has an unknown dtype code")                \
    X(ES_BLOB_ERR_BAD_BITS, "tensor bit width does not fit its dtype")                      \
    X(ES_BLOB_ERR_BAD_SHAPE, "tensor ndim/dims are invalid")                                \
    X(ES_BLOB_ERR_TENSOR_SIZE, "tensor byte size does not match its shape")                 \
    X(ES_BLOB_ERR_MISALIGNED, "tensor data is not 16-byte aligned")                         \
    X(ES_BLOB_ERR_OVERLAP, "tensor data overlaps the table or the previous tensor")         \
    X(ES_BLOB_ERR_OUT_OF_RANGE, "tensor data runs past the payload")                        \
    X(ES_BLOB_ERR_TENSOR_CRC, "tensor CRC32 mismatch")                                      \
    X(ES_BLOB_ERR_STRUCTURE_HASH, "blob is for another model structure (structure hash)")   \
    X(ES_BLOB_ERR_NO_TENSOR, "tensor id is out of range")                                   \
    X(ES_BLOB_ERR_TABLE_COUNT, "blob entry count differs from the model's weights table")   \
    X(ES_BLOB_ERR_TABLE_SIZE, "a blob entry's size differs from the model's table entry")   \
    X(ES_BLOB_ERR_BUFFER_ALIGN, "blob buffer is not 4-byte aligned")

#define ES_BLOB_ENUM_ENTRY_(name, text) name,
typedef enum {
    ES_BLOB_STATUS_LIST(ES_BLOB_ENUM_ENTRY_)
    ES_BLOB_STATUS_COUNT
} es_blob_status;
#undef ES_BLOB_ENUM_ENTRY_

/* Header fields of a verified blob; pointers point into the caller's blob buffer. */
typedef struct {
    const uint8_t *blob;
    uint32_t total_size;
    uint32_t version;
    uint32_t flags;
    uint32_t tensor_count;
    uint32_t payload_offset;
    uint32_t payload_size;
    uint32_t crc32;
    uint32_t constant_count;       /* entries [0, constant_count) are graph constants */
    const uint8_t *structure_hash; /* ES_BLOB_HASH_SIZE bytes: what code can run it */
    const uint8_t *graph_hash;     /* ES_BLOB_HASH_SIZE bytes: this exact model */
} es_blob_info;

/* One tensor table entry. */
typedef struct {
    uint32_t id;
    uint32_t dtype;
    uint32_t bits;
    uint32_t ndim;
    uint32_t dims[ES_BLOB_MAX_NDIM];
    uint32_t offset;
    uint32_t size;
    uint32_t crc32;
} es_blob_tensor_desc;

/*
 * Verify `len` bytes at `blob`. `expected_structure_hash` (32 bytes) is the structure hash
 * compiled into the firmware (<prefix>_structure_hash); NULL skips that check (tools only). On
 * ES_BLOB_OK `*out` describes the blob; on any error `*out` is zeroed. Reads only
 * blob[0 .. len-1].
 */
es_blob_status es_blob_verify(const uint8_t *blob, size_t len,
                              const uint8_t expected_structure_hash[ES_BLOB_HASH_SIZE],
                              es_blob_info *out);

/*
 * Point table[0 .. count-1] at the entries of a verified blob: the weights table a generated
 * model's <prefix>_invoke_table() takes. Checks that the blob has exactly `count` entries, that
 * entry i has expected_bytes[i] bytes (<prefix>_weight_bytes) and that the blob sits at a 4-byte
 * aligned address. On any error the table is left untouched. The table stays valid as long as
 * the blob buffer does.
 */
es_blob_status es_blob_fill_table(const es_blob_info *info, const uint32_t *expected_bytes,
                                  uint32_t count, const void **table);

/* Data pointer and byte size of tensor `id` of a blob that es_blob_verify accepted. */
es_blob_status es_blob_tensor(const es_blob_info *info, uint32_t id, const uint8_t **data,
                              uint32_t *size);

/* The full table entry of tensor `id` of a verified blob. */
es_blob_status es_blob_tensor_desc_get(const es_blob_info *info, uint32_t id,
                                       es_blob_tensor_desc *desc);

/* zlib-compatible CRC32: es_blob_crc32(0, p, n) == zlib.crc32(p[:n]); chainable. */
uint32_t es_blob_crc32(uint32_t crc, const uint8_t *data, size_t len);

/* A short English reason for a status ("unknown status" for values outside the enum). */
const char *es_blob_status_str(es_blob_status status);

/* The enum name of a status, e.g. "ES_BLOB_ERR_CRC" (for logs and tests). */
const char *es_blob_status_name(es_blob_status status);

#ifdef __cplusplus
}
#endif

#endif /* ES_BLOB_H */
