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
 * and take bytes from a pty at tens of MB/s: there an 8 KiB slice-by-8 table, built on first use,
 * does eight bytes per step, and on x86-64 CPUs with PCLMULQDQ the bulk of a frame goes through
 * crc32_clmul below (9 GB/s against 1.4 GB/s on the benchmark machine; the CRC of every 16 KiB
 * WRITE was the largest part of the host firmware's own time while flashing). The freestanding
 * MCU builds keep es_blob_crc32's 64-byte nibble table (their UART, not the CRC, limits them).
 * Same result every way. */
#if __STDC_HOSTED__ && defined(__x86_64__) && defined(__GNUC__)
#define ES_CRC_CLMUL 1
#include <immintrin.h>

#define ES_CLMUL_TARGET __attribute__((target("pclmul,sse4.1")))

ES_CLMUL_TARGET static inline __m128i load16(const uint8_t *p)
{
    return _mm_loadu_si128((const __m128i *)(const void *)p);
}

/* The 128-bit lane a carried forward over the distance whose two constants k holds, plus next */
ES_CLMUL_TARGET static inline __m128i fold(__m128i a, __m128i k, __m128i next)
{
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(a, k, 0x00), _mm_clmulepi64_si128(a, k, 0x11)),
                         next);
}

/* CRC32 (zlib's reflected polynomial) by carry-less multiplication, after Gopal et al., "Fast
 * CRC Computation for Generic Polynomials Using PCLMULQDQ Instruction" (Intel, 2009): four
 * 128-bit lanes fold 64 bytes per step, then fold into one lane, to 64 and to 32 bits, and a
 * Barrett reduction gives the remainder. state is the running CRC register (inverted, as inside
 * frame_crc32); len >= 64 and a multiple of 16. */
ES_CLMUL_TARGET static uint32_t crc32_clmul(uint32_t state, const uint8_t *data, uint32_t len)
{
    /* the paper's constants for this polynomial, bit-reflected and shifted left by one:
     * x^(512+32) and x^(512-32) mod P (fold by 512 bits), x^(128+32) and x^(128-32) (by 128
     * bits), x^64 (64 to 32 bits), then P' and mu' for the Barrett reduction */
    const __m128i by512 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
    const __m128i by128 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
    const __m128i by64 = _mm_set_epi64x(0, 0x0163cd6124);
    const __m128i barrett = _mm_set_epi64x(0x01f7011641, 0x01db710641);
    const __m128i low32 = _mm_setr_epi32(-1, 0, -1, 0);
    __m128i a = _mm_xor_si128(load16(data), _mm_cvtsi32_si128((int)state));
    __m128i b = load16(data + 16);
    __m128i c = load16(data + 32);
    __m128i d = load16(data + 48);
    __m128i t;
    for (data += 64, len -= 64u; len >= 64u; data += 64, len -= 64u) {
        a = fold(a, by512, load16(data));
        b = fold(b, by512, load16(data + 16));
        c = fold(c, by512, load16(data + 32));
        d = fold(d, by512, load16(data + 48));
    }
    a = fold(fold(fold(a, by128, b), by128, c), by128, d);
    for (; len >= 16u; data += 16, len -= 16u) {
        a = fold(a, by128, load16(data));
    }
    /* 128 -> 64 bits, 64 -> 32 bits */
    a = _mm_xor_si128(_mm_srli_si128(a, 8), _mm_clmulepi64_si128(a, by128, 0x10));
    t = _mm_srli_si128(a, 4);
    a = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(a, low32), by64, 0x00), t);
    /* Barrett reduction to the 32-bit remainder */
    t = _mm_and_si128(_mm_clmulepi64_si128(_mm_and_si128(a, low32), barrett, 0x10), low32);
    t = _mm_clmulepi64_si128(t, barrett, 0x00);
    return (uint32_t)_mm_extract_epi32(_mm_xor_si128(a, t), 1);
}

/* 1 when the CPU has PCLMULQDQ and SSE4.1 (asked once) */
static int clmul_usable(void)
{
    static int usable = -1;
    if (usable < 0) {
        __builtin_cpu_init();
        usable = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
    }
    return usable;
}
#endif

static uint32_t frame_crc32(uint32_t crc, const uint8_t *data, uint32_t len)
{
#if __STDC_HOSTED__
    static uint32_t table[8][256];
    static int table_ready;
    uint32_t i, k;
    if (!table_ready) {
        for (i = 0; i < 256u; ++i) {
            uint32_t c = i;
            for (k = 0; k < 8u; ++k) {
                c = (c & 1u) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
            }
            table[0][i] = c;
        }
        for (k = 1; k < 8u; ++k) {
            for (i = 0; i < 256u; ++i) {
                table[k][i] = (table[k - 1][i] >> 8) ^ table[0][table[k - 1][i] & 0xFFu];
            }
        }
        table_ready = 1;
    }
    crc = ~crc;
#ifdef ES_CRC_CLMUL
    if (len >= 64u && clmul_usable()) {
        uint32_t bulk = len & ~15u;
        crc = crc32_clmul(crc, data, bulk);
        data += bulk;
        len -= bulk;
    }
#endif
    for (; len >= 8u; len -= 8u, data += 8) {
        uint32_t lo = crc ^ es_get_u32(data);
        uint32_t hi = es_get_u32(data + 4);
        crc = table[7][lo & 0xFFu] ^ table[6][(lo >> 8) & 0xFFu] ^ table[5][(lo >> 16) & 0xFFu] ^
              table[4][lo >> 24] ^ table[3][hi & 0xFFu] ^ table[2][(hi >> 8) & 0xFFu] ^
              table[1][(hi >> 16) & 0xFFu] ^ table[0][hi >> 24];
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

/* The default of hal_uart_skip_to (es_hal.h): drop nothing, the scanner goes byte by byte. */
__attribute__((weak)) uint32_t hal_uart_skip_to(uint8_t value)
{
    (void)value;
    return 0u;
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

    /* find the start of frame: A5 then 5A (A5 A5 5A still syncs); bytes before an A5 that
     * the board already holds are dropped in bulk (a per-byte loop over line noise made the
     * scanner, not the link, the limit of how fast junk is taken in) */
    for (;;) {
        (void)hal_uart_skip_to(ES_SOF0);
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
