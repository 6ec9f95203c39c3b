/*
 * ed25519_verify_main.c - test driver for targets/firmware/es_ed25519.c (built by
 * tests/targets/test_fw_ed25519.py, with ASan/UBSan).
 *
 * stdin: one case per line, "PUBKEY_HEX SIGNATURE_HEX MESSAGE_HEX" ("-" for an empty message);
 * "sha512 MESSAGE_HEX" prints the SHA-512 digest instead. stdout: the es_ed25519_status
 * number of each case (or the digest hex), one per line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_ed25519.h"
#include "es_sha512.h"

#define MAX_MESSAGE 8192

static int unhex(const char *text, uint8_t *out, size_t max, size_t *len)
{
    size_t n = strlen(text), i;
    if (strcmp(text, "-") == 0) {
        *len = 0;
        return 1;
    }
    if (n % 2 != 0 || n / 2 > max) {
        return 0;
    }
    for (i = 0; i < n / 2; ++i) {
        unsigned v;
        if (sscanf(text + 2 * i, "%2x", &v) != 1) {
            return 0;
        }
        out[i] = (uint8_t)v;
    }
    *len = n / 2;
    return 1;
}

int main(void)
{
    static char line[3 * MAX_MESSAGE];
    static uint8_t message[MAX_MESSAGE];
    char a[3 * MAX_MESSAGE], b[3 * MAX_MESSAGE], c[3 * MAX_MESSAGE];
    uint8_t key[32], sig[64], digest[64];
    size_t klen, slen, mlen;
    int i;
    while (fgets(line, sizeof line, stdin) != NULL) {
        if (sscanf(line, "sha512 %s", a) == 1) {
            if (!unhex(a, message, sizeof message, &mlen)) {
                fprintf(stderr, "bad hex: %s\n", line);
                return 2;
            }
            es_sha512(message, mlen, digest);
            for (i = 0; i < 64; ++i) {
                printf("%02x", digest[i]);
            }
            printf("\n");
            continue;
        }
        if (sscanf(line, "%s %s %s", a, b, c) != 3 || !unhex(a, key, 32, &klen) || klen != 32 ||
            !unhex(b, sig, 64, &slen) || slen != 64 || !unhex(c, message, sizeof message, &mlen)) {
            fprintf(stderr, "bad case line: %s\n", line);
            return 2;
        }
        /* the message in a heap buffer of its exact size, so ASan sees any overread */
        {
            uint8_t *exact = (uint8_t *)malloc(mlen ? mlen : 1);
            if (exact == NULL) {
                return 3;
            }
            memcpy(exact, message, mlen);
            printf("%d\n", (int)es_ed25519_verify(sig, exact, mlen, key));
            free(exact);
        }
    }
    return 0;
}
