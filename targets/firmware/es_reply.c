/* es_reply.c - response frames of the firmware app (see es_reply.h). */
#include "es_reply.h"

#include "es_hal.h"

static uint8_t tx[ES_FRAME_OVERHEAD + ES_MAX_PAYLOAD];
static uint32_t tx_len;

uint8_t *es_reply_payload(void)
{
    return tx + 6;
}

static void send(uint8_t type, uint8_t seq, uint16_t length)
{
    tx_len = es_proto_encode(type, seq, es_reply_payload(), length, tx);
    hal_uart_write(tx, tx_len);
}

void es_reply_ok(const es_frame *f, uint16_t length)
{
    send(ES_RESP_OK(f->type), f->seq, length);
}

es_msg es_reply_err_begin(uint8_t code)
{
    es_msg m;
    es_reply_payload()[0] = code;
    m.p = es_reply_payload() + 1;
    m.n = 0;
    return m;
}

void es_msg_str(es_msg *m, const char *s)
{
    while (s != 0 && *s != '\0' && m->n < ES_MSG_MAX) {
        m->p[m->n++] = (uint8_t)*s++;
    }
}

void es_msg_u32(es_msg *m, uint32_t v)
{
    char digits[10];
    int k = 0;
    do {
        digits[k++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v != 0u);
    while (k > 0 && m->n < ES_MSG_MAX) {
        m->p[m->n++] = (uint8_t)digits[--k];
    }
}

void es_reply_err_send(const es_frame *f, const es_msg *m)
{
    send(ES_RESP_ERR, f->seq, (uint16_t)(1u + m->n));
}

void es_reply_err(const es_frame *f, uint8_t code, const char *text)
{
    es_msg m = es_reply_err_begin(code);
    es_msg_str(&m, text);
    es_reply_err_send(f, &m);
}

void es_reply_resend(void)
{
    hal_uart_write(tx, tx_len);
}
