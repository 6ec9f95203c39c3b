/*
 * es_proto.c - frame receive state machine and encoder (targets/protocol.md, "Frames").
 *
 * The receiver scans for A5 5A, reads the 4 header bytes, refuses a length over MAX_PAYLOAD at
 * once (NAK 2), then reads payload and CRC. A frame that pauses for more than FRAME_TIMEOUT_MS
 * between two of its bytes is dropped: NAKed (3) after its header, silently before, and the
 * host retries either way. (A gap timeout, not a whole-frame one: QEMU's emulated UARTs move a
 * few KB/s, so a full 1 KiB frame can take longer than 200 ms without any stall.)
 */
#include "es_proto.h"

#include "es_blob.h"
#include "es_hal.h"
#include "es_util.h"

uint32_t es_proto_encode(uint8_t type, uint8_t seq, const uint8_t *payload, uint16_t length,
                         uint8_t *out)
{
    uint32_t crc;
    out[0] = ES_SOF0;
    out[1] = ES_SOF1;
    out[2] = type;
    out[3] = seq;
    es_put_u16(out + 4, length);
    if (length > 0 && payload != out + 6) {
        es_mem_copy(out + 6, payload, length);
    }
    crc = es_blob_crc32(0, out + 2, 4u + length);
    es_put_u32(out + 6 + length, crc);
    return ES_FRAME_OVERHEAD + length;
}

void es_proto_send_nak(uint8_t seq, uint8_t reason, es_proto_counters *counters)
{
    uint8_t frame[ES_FRAME_OVERHEAD + 1];
    uint32_t n = es_proto_encode(ES_RESP_NAK, seq, &reason, 1, frame);
    hal_uart_write(frame, n);
    counters->naks++;
}

/* Milliseconds left until deadline (0 when passed); wrap-safe. */
static uint32_t remaining_ms(uint32_t deadline)
{
    int32_t left = (int32_t)(deadline - hal_millis());
    return left > 0 ? (uint32_t)left : 0u;
}

/* One byte of a frame: at most FRAME_TIMEOUT_MS after the previous one. */
static int frame_byte(uint8_t *byte)
{
    return hal_uart_read(byte, ES_FRAME_TIMEOUT_MS);
}

es_rx_result es_proto_receive(es_frame *frame, uint32_t idle_ms, es_proto_counters *counters)
{
    uint8_t header[4];
    uint8_t crc_bytes[4];
    uint8_t byte;
    uint32_t i, crc;
    uint32_t idle_deadline = hal_millis() + idle_ms;

    /* find the start of frame: A5 then 5A (A5 A5 5A still syncs) */
    for (;;) {
        if (!hal_uart_read(&byte, remaining_ms(idle_deadline))) {
            return ES_RX_NONE;
        }
        if (byte != ES_SOF0) {
            continue;
        }
        for (;;) {
            if (!frame_byte(&byte)) {
                return ES_RX_NONE; /* no header: drop silently */
            }
            if (byte != ES_SOF0) {
                break;
            }
        }
        if (byte == ES_SOF1) {
            break;
        }
    }
    for (i = 0; i < 4; ++i) {
        if (!frame_byte(&header[i])) {
            return ES_RX_NONE;
        }
    }
    frame->type = header[0];
    frame->seq = header[1];
    frame->length = es_get_u16(header + 2);
    if (frame->length > ES_MAX_PAYLOAD) {
        counters->crc_errors++;
        es_proto_send_nak(frame->seq, ES_NAK_TOO_LONG, counters);
        return ES_RX_NAKED;
    }
    for (i = 0; i < frame->length; ++i) {
        if (!frame_byte(&frame->payload[i])) {
            es_proto_send_nak(frame->seq, ES_NAK_TIMEOUT, counters);
            return ES_RX_NAKED;
        }
    }
    for (i = 0; i < 4; ++i) {
        if (!frame_byte(&crc_bytes[i])) {
            es_proto_send_nak(frame->seq, ES_NAK_TIMEOUT, counters);
            return ES_RX_NAKED;
        }
    }
    crc = es_blob_crc32(0, header, 4);
    crc = es_blob_crc32(crc, frame->payload, frame->length);
    if (crc != es_get_u32(crc_bytes)) {
        counters->crc_errors++;
        es_proto_send_nak(frame->seq, ES_NAK_BAD_CRC, counters);
        return ES_RX_NAKED;
    }
    frame->crc = crc;
    counters->frames++;
    if (frame->type == 0u || frame->type >= ES_RESP_ERR) {
        es_proto_send_nak(frame->seq, ES_NAK_UNKNOWN_TYPE, counters);
        return ES_RX_NAKED;
    }
    return ES_RX_FRAME;
}
