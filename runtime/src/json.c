/* JSON for the model file: cJSON builds the trees; a strict lexical pass first holds each text to
 * what Python's json module accepts (RFC 8259 numbers, escapes and whitespace, UTF-8, no NaN or
 * Infinity, no NUL), which cJSON alone is lenient about, and tells whether the text has a number
 * that Python would read as a float.  Duplicate keys are refused as proxcl.modelfile refuses them. */
#include <math.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "px.h"
#include "json.h"

/* ---- strict JSON lexing ---- */

int px_utf8_ok(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) { ++i; continue; }
        if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
        else return 0;
        if (i + len > n) return 0;
        for (size_t k = 1; k < len; ++k) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        i += len;
    }
    return 1;
}

int px_json_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

/* NULL when `s` (length n) lexes as JSON the way Python's json module reads it, else why not.
 * *fraction is set when a number has a fraction or an exponent (Python reads it as a float). */
static const char *json_lex(const char *s, size_t n, int *fraction)
{
    *fraction = 0;
    if (!px_utf8_ok((const unsigned char *)s, n)) return "not UTF-8";
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        if (px_json_ws(c) || c == '{' || c == '}' || c == '[' || c == ']' || c == ':' || c == ',') { ++i; continue; }
        if (c == '"') {
            for (++i;; ++i) {
                if (i >= n) return "unterminated string";
                c = s[i];
                if (c == '"') break;
                if ((unsigned char)c < 0x20) return "control character in a string";
                if (c != '\\') continue;
                if (++i >= n) return "unterminated string";
                c = s[i];
                if (c == 'u') {
                    if (i + 4 >= n || !is_hex(s[i + 1]) || !is_hex(s[i + 2]) || !is_hex(s[i + 3]) || !is_hex(s[i + 4]))
                        return "bad \\u escape";
                    if (!strncmp(s + i + 1, "0000", 4)) return "NUL character in a string";
                    i += 4;
                } else if (!strchr("\"\\/bfnrt", c)) {
                    return "bad escape in a string";
                }
            }
            ++i;
            continue;
        }
        if (c == '-' || is_digit(c)) {
            if (c == '-') ++i;
            if (i >= n || !is_digit(s[i])) return "bad number";
            if (s[i] == '0') ++i;
            else while (i < n && is_digit(s[i])) ++i;
            if (i < n && s[i] == '.') {
                *fraction = 1;
                if (++i >= n || !is_digit(s[i])) return "bad number";
                while (i < n && is_digit(s[i])) ++i;
            }
            if (i < n && (s[i] == 'e' || s[i] == 'E')) {
                *fraction = 1;
                ++i;
                if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
                if (i >= n || !is_digit(s[i])) return "bad number";
                while (i < n && is_digit(s[i])) ++i;
            }
            continue;
        }
        if (n - i >= 4 && (!strncmp(s + i, "true", 4) || !strncmp(s + i, "null", 4))) { i += 4; continue; }
        if (n - i >= 5 && !strncmp(s + i, "false", 5)) { i += 5; continue; }
        if (!strncmp(s + i, "NaN", n - i < 3 ? n - i : 3) || c == 'I' || (c == '-' && i + 1 < n && s[i + 1] == 'I'))
            return "NaN and Infinity are not allowed";
        return "unexpected character";
    }
    return NULL;
}

static int has_duplicate_keys(const cJSON *node)
{
    for (const cJSON *c = node ? node->child : NULL; c; c = c->next) {
        if (cJSON_IsObject(node))
            for (const cJSON *d = c->next; d; d = d->next)
                if (!strcmp(c->string, d->string)) return 1;
        if (has_duplicate_keys(c)) return 1;
    }
    return 0;
}

/* Parse a JSON text of length n: lexically strict, one value, then only whitespace. */
proxcl_status px_json_parse(const char *text, size_t n, const char *name, const char *what, cJSON **out,
                                int *fraction, proxcl_error *err)
{
    *out = NULL;
    const char *why = json_lex(text, n, fraction);
    if (why) return px_fail(err, PROXCL_ERR_FORMAT, "%s: %s is not valid JSON (%s)", name, what, why);
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    if (!j) return px_fail(err, PROXCL_ERR_FORMAT, "%s: %s is not valid JSON", name, what);
    while (end && (size_t)(end - text) < n && px_json_ws(*end)) ++end;
    if (!end || (size_t)(end - text) != n) {
        cJSON_Delete(j);
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: %s is not valid JSON (extra data)", name, what);
    }
    if (has_duplicate_keys(j)) {
        cJSON_Delete(j);
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: %s is not valid JSON (duplicate key)", name, what);
    }
    *out = j;
    return PROXCL_OK;
}

/* A JSON number that Python reads as an int in [lo, hi] (the text had no float anywhere). */
int px_json_int(const cJSON *v, int floats, double lo, double hi, int64_t *out)
{
    if (!cJSON_IsNumber(v) || floats || cJSON_IsBool(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= lo && d <= hi) || d != floor(d)) return 0;
    *out = (int64_t)d;
    return 1;
}

int px_json_keys(const cJSON *obj)
{
    int n = 0;
    for (const cJSON *c = obj->child; c; c = c->next) ++n;
    return n;
}

/* obj is an object with exactly these keys */
int px_json_exact_keys(const cJSON *obj, const char *const *keys, int nkeys)
{
    if (!cJSON_IsObject(obj) || px_json_keys(obj) != nkeys) return 0;
    for (int i = 0; i < nkeys; ++i)
        if (!cJSON_GetObjectItemCaseSensitive(obj, keys[i])) return 0;
    return 1;
}

