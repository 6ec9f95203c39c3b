/*
 * es_reply.h - the app's response buffer: OK / ERR frames and short ERR messages built without
 * printf. The last response stays in the buffer so a retried command gets it again (dedupe).
 */
#ifndef ES_REPLY_H
#define ES_REPLY_H

#include <stdint.h>

#include "es_proto.h"

#define ES_MSG_MAX 120u

/* ERR message under construction (points into the response payload). */
typedef struct {
    uint8_t *p;
    uint32_t n;
} es_msg;

/* The payload area of the response being built (ES_MAX_PAYLOAD bytes). */
uint8_t *es_reply_payload(void);

/* Send OK for command f with `length` payload bytes already in es_reply_payload(). */
void es_reply_ok(const es_frame *f, uint16_t length);

/* ERR: begin a message with an error code, append text / numbers, send. */
es_msg es_reply_err_begin(uint8_t code);
void es_msg_str(es_msg *m, const char *s);
void es_msg_u32(es_msg *m, uint32_t v);
void es_reply_err_send(const es_frame *f, const es_msg *m);
void es_reply_err(const es_frame *f, uint8_t code, const char *text);

/* Send the last response again (a retry of the same command frame). */
void es_reply_resend(void);

#endif /* ES_REPLY_H */
