/*
 * es_proto.h - device side of the EdgeSmith serial protocol framing (targets/protocol.md).
 *
 * Frame: A5 5A | type u8 | seq u8 | length u16 | payload | CRC32 over type..payload (LE).
 */
#ifndef ES_PROTO_H
#define ES_PROTO_H

#include <stdint.h>

#define ES_PROTO_VERSION 1u
#define ES_MAX_PAYLOAD 1024u
/* Largest command payload this build accepts (INFO's "max payload"); answers stay within
 * ES_MAX_PAYLOAD. MCU boards keep 1024; a build for a fast link with RAM to spare (the host
 * build on a pty) may define more, up to 65535, so WRITE bursts carry bigger chunks. */
#ifndef ES_MAX_COMMAND_PAYLOAD
#define ES_MAX_COMMAND_PAYLOAD ES_MAX_PAYLOAD
#endif
#define ES_FRAME_OVERHEAD 10u
#define ES_FRAME_TIMEOUT_MS 200u
#define ES_SOF0 0xA5u
#define ES_SOF1 0x5Au

/* command codes */
#define ES_CMD_INFO 0x01u
#define ES_CMD_ERASE 0x02u
#define ES_CMD_WRITE 0x03u
#define ES_CMD_VERIFY 0x04u
#define ES_CMD_COMMIT 0x05u
#define ES_CMD_INFER 0x06u
#define ES_CMD_STATS 0x07u
#define ES_CMD_REBOOT 0x08u
#define ES_CMD_CONFIRM 0x09u
#define ES_CMD_READ 0x0Au
#define ES_CMD_INPUT 0x0Bu
#define ES_CMD_OUTPUT 0x0Cu

/* response types */
#define ES_RESP_OK(cmd) ((uint8_t)(0x80u | (cmd)))
#define ES_RESP_ERR 0x7Eu
#define ES_RESP_NAK 0x7Fu

/* NAK reasons */
#define ES_NAK_BAD_CRC 1u
#define ES_NAK_TOO_LONG 2u
#define ES_NAK_TIMEOUT 3u
#define ES_NAK_UNKNOWN_TYPE 4u

/* ERR codes */
#define ES_ERR_BAD_ARGS 1u
#define ES_ERR_SLOT_ACTIVE 2u
#define ES_ERR_BAD_OFFSET 3u
#define ES_ERR_FLASH 4u
#define ES_ERR_HASH_MISMATCH 5u
#define ES_ERR_BLOB_INVALID 6u
#define ES_ERR_NO_MODEL 7u
#define ES_ERR_INPUT_SIZE 8u
#define ES_ERR_NOT_TRIAL 9u
#define ES_ERR_UNKNOWN_COMMAND 10u

typedef struct {
    uint8_t type;
    uint8_t seq;
    uint16_t length;
    uint32_t crc; /* the frame's CRC32: with seq, identifies a retry of the same command */
    uint8_t payload[ES_MAX_COMMAND_PAYLOAD];
} es_frame;

/* Receive counters (STATS). */
typedef struct {
    uint32_t frames;
    uint32_t crc_errors;
    uint32_t naks;
} es_proto_counters;

/* Result of es_proto_receive. */
typedef enum {
    ES_RX_NONE = 0,   /* nothing complete within the idle wait */
    ES_RX_FRAME = 1,  /* *frame holds a good frame */
    ES_RX_NAKED = 2   /* a frame was dropped and a NAK sent */
} es_rx_result;

/* Wait up to idle_ms for a frame to start, then read it to the end (FRAME_TIMEOUT_MS after its
 * first byte). Drops bad frames (NAK when a header was read). */
es_rx_result es_proto_receive(es_frame *frame, uint32_t idle_ms, es_proto_counters *counters);

/* Encode a frame into out (ES_FRAME_OVERHEAD + length bytes); returns the frame size. */
uint32_t es_proto_encode(uint8_t type, uint8_t seq, const uint8_t *payload, uint16_t length,
                         uint8_t *out);

/* Send a NAK frame. */
void es_proto_send_nak(uint8_t seq, uint8_t reason, es_proto_counters *counters);

#endif /* ES_PROTO_H */
