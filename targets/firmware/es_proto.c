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

/* CRC32 (zlib) of frame bytes. Hosted builds (the host firmware, ESP-IDF) have memory to spare
 * and take bytes from a pty at tens of MB/s: there a 4 KiB slice-by-4 table, built on first use,
 * does four bytes per step instead of one byte per two lookups in es_blob_crc32's 64-byte
 * nibble table, which the freestanding MCU builds keep (their UART, not the CRC, limits them).
 * Same result either way. */
static uint32_t frame_crc32(uint32_t crc, const uint8_t *data, uint32_t len)
{
#if __STDC_HOSTED__
    static uint32_t table[4][256];
    static int table_ready;
    uint32_t i;
    if (!table_ready) {
        for (i = 0; i < 256u; ++i) {
            uint32_t c = i;
            int k;
            for (k = 0; k < 8; ++k) {
                c = (c & 1u) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
            }
            table[0][i] = c;
        }
        for (i = 0; i < 256u; ++i) {
            table[1][i] = (table[0][i] >> 8) ^ table[0][table[0][i] & 0xFFu];
            table[2][i] = (table[1][i] >> 8) ^ table[0][table[1][i] & 0xFFu];
            table[3][i] = (table[2][i] >> 8) ^ table[0][table[2][i] & 0xFFu];
        }
        table_ready = 1;
    }
    crc = ~crc;
    for (; len >= 4u; len -= 4u, data += 4) {
        crc ^= es_get_u32(data);
        crc = table[3][crc & 0xFFu] ^ table[2][(crc >> 8) & 0xFFu] ^ table[1][(crc >> 16) & 0xFFu] ^
              table[0][crc >> 24];
    }
    for (i = 0; i < len; ++i) {
        crc = table[0][(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
    }
    return ~crc;
#else
    return es_blob_crc32(crc, data, len);
#endif
}

/* The byte-at-a-time default of hal_uart_read_bytes (es_hal.h) for boards without their own. */
__attribute__((weak)) uint32_t hal_uart_read_bytes(uint8_t *buf, uint32_t len, uint32_t gap_ms)
{
    uint32_t i;
    for (i = 0; i < len; ++i) {
        if (!hal_uart_read(&buf[i], gap_ms)) {
            break;
        }
    }
    return i;
}

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
    crc = frame_crc32(0, out + 2, 4u + length);
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

/* n bytes of a frame, each at most FRAME_TIMEOUT_MS after the previous one: 1 when all came. */
static int frame_bytes(uint8_t *buf, uint32_t n)
{
    return hal_uart_read_bytes(buf, n, ES_FRAME_TIMEOUT_MS) == n;
}

/* One byte while looking for a start of frame, at most until idle_deadline. A byte that is
 * already there is taken without reading the clock: on the host build hal_millis() is a
 * clock_gettime() call, and calling it for every byte of line noise made the scan, not the
 * link, the limit of how fast the device takes in bytes. */
static int scan_byte(uint8_t *byte, uint32_t idle_deadline)
{
    return hal_uart_read(byte, 0u) || hal_uart_read(byte, remaining_ms(idle_deadline));
}

es_rx_result es_proto_receive(es_frame *frame, uint32_t idle_ms, es_proto_counters *counters)
{
    uint8_t header[4];
    uint8_t crc_bytes[4];
    uint8_t byte;
    uint32_t crc;
    uint32_t idle_deadline = hal_millis() + idle_ms;

    /* find the start of frame: A5 then 5A (A5 A5 5A still syncs) */
    for (;;) {
        if (!scan_byte(&byte, idle_deadline)) {
            return ES_RX_NONE;
        }
        if (byte != ES_SOF0) {
            continue;
        }
        for (;;) {
            if (!frame_bytes(&byte, 1u)) {
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
    if (!frame_bytes(header, 4u)) {
        return ES_RX_NONE;
    }
    frame->type = header[0];
    frame->seq = header[1];
    frame->length = es_get_u16(header + 2);
    if (frame->length > ES_MAX_COMMAND_PAYLOAD) {
        counters->crc_errors++;
        es_proto_send_nak(frame->seq, ES_NAK_TOO_LONG, counters);
        return ES_RX_NAKED;
    }
    if (!frame_bytes(frame->payload, frame->length) || !frame_bytes(crc_bytes, 4u)) {
        es_proto_send_nak(frame->seq, ES_NAK_TIMEOUT, counters);
        return ES_RX_NAKED;
    }
    crc = frame_crc32(0, header, 4);
    crc = frame_crc32(crc, frame->payload, frame->length);
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
