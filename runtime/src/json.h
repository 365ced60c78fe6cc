/* The model file's JSON checks (json.c). */
#ifndef PX_JSON_H
#define PX_JSON_H

#include <cjson/cJSON.h>

#include "px.h"

int px_utf8_ok(const unsigned char *s, size_t n);
int px_json_ws(char c);                 /* JSON whitespace: space, tab, newline, carriage return */
/* Parse a JSON text of length n: lexically strict, one value, then only whitespace, no duplicate
 * keys.  *fraction: the text has a number with a fraction or an exponent. */
proxcl_status px_json_parse(const char *text, size_t n, const char *name, const char *what, cJSON **out,
                            int *fraction, proxcl_error *err);
/* A JSON number that Python reads as an int in [lo, hi] (floats: the text had a float anywhere). */
int px_json_int(const cJSON *v, int floats, double lo, double hi, int64_t *out);
int px_json_keys(const cJSON *obj);    /* the number of keys of an object */
int px_json_exact_keys(const cJSON *obj, const char *const *keys, int nkeys);

#endif
