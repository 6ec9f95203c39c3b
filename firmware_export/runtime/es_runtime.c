/*
 * es_runtime.c - status strings, generated from the one list in es_runtime.h.
 */
#include "es_runtime.h"

#define ES_STATUS_STRING_ENTRY(name, text) #name ": " text,
static const char *const es_status_strings[ES_STATUS_COUNT] = {
    ES_STATUS_LIST(ES_STATUS_STRING_ENTRY)
};
#undef ES_STATUS_STRING_ENTRY

const char *es_status_str(int status)
{
    if (status < 0 || status >= (int)ES_STATUS_COUNT) {
        return "unknown status";
    }
    return es_status_strings[status];
}
