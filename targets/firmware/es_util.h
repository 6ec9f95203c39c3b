/*
 * es_util.h - byte helpers for the firmware app without <string.h> (the RISC-V toolchain ships
 * no C library) and little-endian field access.
 */
#ifndef ES_UTIL_H
#define ES_UTIL_H

#include <stddef.h>
#include <stdint.h>
#if __STDC_HOSTED__
#include <string.h>
#endif

static inline void es_mem_copy(void *dst, const void *src, size_t n)
{
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    while (n-- > 0) {
        *d++ = *s++;
    }
}

static inline void es_mem_set(void *dst, uint8_t value, size_t n)
{
    uint8_t *d = (uint8_t *)dst;
    while (n-- > 0) {
        *d++ = value;
    }
}

static inline int es_mem_equal(const void *a, const void *b, size_t n)
{
#if __STDC_HOSTED__
    /* hosted builds have a C library: its memcmp compares words (the read-back of every WRITE
     * on the host build, where the byte loop cost as much as the frame's CRC) */
    return memcmp(a, b, n) == 0;
#else
    const uint8_t *x = (const uint8_t *)a;
    const uint8_t *y = (const uint8_t *)b;
    size_t i;
    for (i = 0; i < n; ++i) {
        if (x[i] != y[i]) {
            return 0;
        }
    }
    return 1;
#endif
}

static inline uint32_t es_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint16_t es_get_u16(const uint8_t *p)
{
    return (uint16_t)((uint32_t)p[0] | ((uint32_t)p[1] << 8));
}

static inline void es_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void es_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* Copy a NUL-terminated string into a field of n bytes, NUL-padded (truncating). */
static inline void es_put_str(uint8_t *field, const char *s, size_t n)
{
    size_t i = 0;
    for (; i < n && s != NULL && s[i] != '\0'; ++i) {
        field[i] = (uint8_t)s[i];
    }
    for (; i < n; ++i) {
        field[i] = 0;
    }
}

#endif /* ES_UTIL_H */
