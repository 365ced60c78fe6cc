/* The model file (docs/FORMAT.md): every check of section 3 in its order, so that nothing is
 * allocated from an unchecked size, then the tensors as float32 values and int32 indices; and
 * the writer of section 5.  The messages follow proxcl.modelfile's.
 *
 * cJSON builds the JSON trees; a strict lexical pass first holds each JSON text to what Python's
 * json module accepts (RFC 8259 numbers, escapes and whitespace, UTF-8, no NaN), which cJSON
 * alone is lenient about, and tells whether the text has a number that is not an integer. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "px.h"

#define MAX_HEADER 104857600ULL
#define MAX_DIM 2147483647LL
#define U16_MAX_COLS 65536

static const char *const META_KEYS[6] = {"format", "format_version", "spec", "metadata", "tensors", "checksum"};

/* ---- strict JSON lexing ---- */

static int utf8_ok(const unsigned char *s, size_t n)
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

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

/* NULL when `s` (length n) lexes as JSON the way Python's json module reads it, else why not.
 * *fraction is set when a number has a fraction or an exponent (Python reads it as a float). */
static const char *json_lex(const char *s, size_t n, int *fraction)
{
    *fraction = 0;
    if (!utf8_ok((const unsigned char *)s, n)) return "not UTF-8";
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        if (is_ws(c) || c == '{' || c == '}' || c == '[' || c == ']' || c == ':' || c == ',') { ++i; continue; }
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
static proxcl_status json_parse(const char *text, size_t n, const char *name, const char *what, cJSON **out,
                                int *fraction, proxcl_error *err)
{
    *out = NULL;
    const char *why = json_lex(text, n, fraction);
    if (why) return px_fail(err, PROXCL_ERR_FORMAT, "%s: %s is not valid JSON (%s)", name, what, why);
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    if (!j) return px_fail(err, PROXCL_ERR_FORMAT, "%s: %s is not valid JSON", name, what);
    while (end && (size_t)(end - text) < n && is_ws(*end)) ++end;
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
static int json_int(const cJSON *v, int floats, double lo, double hi, int64_t *out)
{
    if (!cJSON_IsNumber(v) || floats || cJSON_IsBool(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= lo && d <= hi) || d != floor(d)) return 0;
    *out = (int64_t)d;
    return 1;
}

static int key_count(const cJSON *obj)
{
    int n = 0;
    for (const cJSON *c = obj->child; c; c = c->next) ++n;
    return n;
}

/* obj is an object with exactly these keys */
static int exact_keys(const cJSON *obj, const char *const *keys, int nkeys)
{
    if (!cJSON_IsObject(obj) || key_count(obj) != nkeys) return 0;
    for (int i = 0; i < nkeys; ++i)
        if (!cJSON_GetObjectItemCaseSensitive(obj, keys[i])) return 0;
    return 1;
}

/* ---- the safetensors entries ---- */

typedef struct { const char *key; int dtype; int rank; int64_t shape[8]; uint64_t begin, end; } entry;
enum { F32, F16, I32, U16, NDTYPES };
static const char *const DTYPE_NAMES[NDTYPES] = {"F32", "F16", "I32", "U16"};
static const int DTYPE_SIZE[NDTYPES] = {4, 2, 4, 2};

static int dtype_of(const char *s)
{
    for (int i = 0; i < NDTYPES; ++i)
        if (s && !strcmp(s, DTYPE_NAMES[i])) return i;
    return -1;
}

static int parse_shape(const cJSON *v, int floats, int max_rank, int64_t *shape, int *rank)
{
    if (!cJSON_IsArray(v)) return 0;
    int n = cJSON_GetArraySize(v);
    if (n > max_rank) return 0;
    int i = 0;
    for (const cJSON *c = v->child; c; c = c->next, ++i)
        if (!json_int(c, floats, 0, (double)MAX_DIM, &shape[i])) return 0;
    *rank = n;
    return 1;
}

static uint64_t elements(const int64_t *shape, int rank, int *overflow)
{
    uint64_t p = 1;
    *overflow = 0;
    for (int i = 0; i < rank; ++i) {
        if (shape[i] && p > UINT64_MAX / (uint64_t)shape[i]) *overflow = 1;
        p *= (uint64_t)shape[i];
    }
    return *overflow ? UINT64_MAX : p;
}

static proxcl_status check_entry(const cJSON *e, int floats, uint64_t data_len, const char *name, entry *out,
                                 proxcl_error *err)
{
    static const char *const keys[3] = {"dtype", "shape", "data_offsets"};
    const char *key = e->string;
    if (!exact_keys(e, keys, 3)) return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor entry '%s' is malformed", name, key);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    out->key = key;
    out->dtype = dtype_of(cJSON_IsString(dt) ? dt->valuestring : NULL);
    if (out->dtype < 0) return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' has an unsupported dtype", name, key);
    if (!parse_shape(cJSON_GetObjectItemCaseSensitive(e, "shape"), floats, 8, out->shape, &out->rank))
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' has a bad shape", name, key);
    int64_t b, en;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_int(offs->child, floats, 0, 1e300, &b)
        || !json_int(offs->child->next, floats, 0, 1e300, &en) || b > en)
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' has bad data_offsets", name, key);
    int over;
    uint64_t count = elements(out->shape, out->rank, &over);
    uint64_t nbytes = count * (uint64_t)DTYPE_SIZE[out->dtype];
    if (over || count > UINT64_MAX / 4 || nbytes != (uint64_t)(en - b))
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' declares %s bytes than its offsets span (%lld)", name,
                       key, over || nbytes > (uint64_t)(en - b) ? "more" : "fewer", (long long)(en - b));
    if ((uint64_t)en > data_len)
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' ends at byte %lld of a %llu-byte data section: "
                       "truncated?", name, key, (long long)en, (unsigned long long)data_len);
    out->begin = (uint64_t)b;
    out->end = (uint64_t)en;
    return PROXCL_OK;
}

static int cmp_entry(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* ---- the declarations ---- */

typedef struct { char *key; int owned; int dtype; int rank; int64_t shape[8]; } expected;

static proxcl_status decl_entries(const cJSON *decls, int floats, const char *name, px_file *f, expected *exp,
                                  int *nexp, proxcl_error *err)
{
    static const char *const dense_keys[4] = {"name", "kind", "shape", "dtype"};
    static const char *const csr_keys[6] = {"name", "kind", "shape", "nnz", "index_dtype", "dtype"};
    int t = 0;
    *nexp = 0;
    for (const cJSON *d = decls->child; d; d = d->next, ++t) {
        px_tensor *x = &f->tensors[t];
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(d, "name");
        if (!cJSON_IsObject(d) || !cJSON_IsString(nm) || !nm->valuestring[0])
            return px_fail(err, PROXCL_ERR_FORMAT, "%s: a tensor declaration lacks a name", name);
        const char *tn = nm->valuestring;
        for (int u = 0; u < t; ++u)
            if (!strcmp(f->tensors[u].name, tn))
                return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' declared twice", name, tn);
        if (!(x->name = strdup(tn))) return px_fail(err, PROXCL_ERR_MEMORY, "out of memory");
        f->ntensors = t + 1;
        if (!parse_shape(cJSON_GetObjectItemCaseSensitive(d, "shape"), floats, 8, x->shape, &x->rank))
            return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' declares a bad shape", name, tn);
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(d, "dtype");
        int vdt = dtype_of(cJSON_IsString(dt) ? dt->valuestring : NULL);
        if (vdt != F32 && vdt != F16)
            return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' declares a value dtype other than F32 and F16",
                           name, tn);
        x->half = vdt == F16;
        const cJSON *kind = cJSON_GetObjectItemCaseSensitive(d, "kind");
        const char *k = cJSON_IsString(kind) ? kind->valuestring : "";
        if (!strcmp(k, "dense")) {
            if (!exact_keys(d, dense_keys, 4))
                return px_fail(err, PROXCL_ERR_FORMAT, "%s: dense tensor '%s': unexpected declaration keys", name, tn);
            expected *e = &exp[(*nexp)++];
            e->key = x->name;
            e->dtype = vdt;
            e->rank = x->rank;
            memcpy(e->shape, x->shape, sizeof e->shape);
        } else if (!strcmp(k, "csr")) {
            if (!exact_keys(d, csr_keys, 6))
                return px_fail(err, PROXCL_ERR_FORMAT, "%s: CSR tensor '%s': unexpected declaration keys", name, tn);
            if (x->rank != 2 || x->shape[0] >= MAX_DIM)
                return px_fail(err, PROXCL_ERR_FORMAT, "%s: CSR tensor '%s' declares a shape that is not [rows, cols]",
                               name, tn);
            int64_t m = x->shape[0], n = x->shape[1], nnz;
            double cap = (double)m * (double)n < (double)MAX_DIM ? (double)m * (double)n : (double)MAX_DIM;
            if (!json_int(cJSON_GetObjectItemCaseSensitive(d, "nnz"), floats, 0, cap, &nnz))
                return px_fail(err, PROXCL_ERR_FORMAT, "%s: CSR tensor '%s' declares a bad nnz for shape %lldx%lld",
                               name, tn, (long long)m, (long long)n);
            const cJSON *idt = cJSON_GetObjectItemCaseSensitive(d, "index_dtype");
            const char *want = n <= U16_MAX_COLS ? "U16" : "I32";
            if (!cJSON_IsString(idt) || strcmp(idt->valuestring, want))
                return px_fail(err, PROXCL_ERR_FORMAT, "%s: CSR tensor '%s' with %lld columns declares index dtype "
                               "other than '%s'", name, tn, (long long)n, want);
            x->csr = 1;
            x->nnz = nnz;
            static const char *const parts[3] = {"indptr", "indices", "data"};
            const int dts[3] = {I32, n <= U16_MAX_COLS ? U16 : I32, vdt};
            const int64_t lens[3] = {m + 1, nnz, nnz};
            for (int p = 0; p < 3; ++p) {
                expected *e = &exp[(*nexp)++];
                size_t len = strlen(tn) + strlen(parts[p]) + 2;
                if (!(e->key = malloc(len))) return px_fail(err, PROXCL_ERR_MEMORY, "out of memory");
                e->owned = 1;
                snprintf(e->key, len, "%s.%s", tn, parts[p]);
                e->dtype = dts[p];
                e->rank = 1;
                e->shape[0] = lens[p];
            }
        } else {
            return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' has a kind other than 'dense' or 'csr'", name, tn);
        }
    }
    return PROXCL_OK;
}

/* ---- contents ---- */

static void load_values(const unsigned char *p, int dtype, int64_t n, float *out)
{
    for (int64_t i = 0; i < n; ++i) {
        if (dtype == F16) {
            out[i] = px_half_to_float((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        } else {
            uint32_t b = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16
                         | (uint32_t)p[4 * i + 3] << 24;
            memcpy(&out[i], &b, 4);
        }
    }
}

static void load_indices(const unsigned char *p, int dtype, int64_t n, int32_t *out)
{
    for (int64_t i = 0; i < n; ++i)
        out[i] = dtype == U16 ? (int32_t)(p[2 * i] | p[2 * i + 1] << 8)
                              : (int32_t)((uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8
                                          | (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24);
}

static int all_finite(const float *v, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
        if (!isfinite(v[i])) return 0;
    return 1;
}

/* Why a tensor's CSR arrays are not canonical (ops.sparse.csr_problem), or NULL. */
static const char *csr_problem(const px_tensor *x, char *buf, size_t size)
{
    const int64_t m = x->shape[0], n = x->shape[1], nnz = x->nnz;
    if (x->indptr[0] != 0) { snprintf(buf, size, "indptr starts at %d, not 0", x->indptr[0]); return buf; }
    if (x->indptr[m] != nnz) {
        snprintf(buf, size, "indptr ends at %d, not at nnz = %lld", x->indptr[m], (long long)nnz);
        return buf;
    }
    for (int64_t i = 0; i < m; ++i)
        if (x->indptr[i + 1] < x->indptr[i]) { snprintf(buf, size, "indptr decreases at row %lld", (long long)i); return buf; }
    for (int64_t p = 0; p < nnz; ++p)
        if (x->indices[p] < 0 || x->indices[p] >= n) {
            snprintf(buf, size, "column index %d out of range 0..%lld", x->indices[p], (long long)n - 1);
            return buf;
        }
    for (int64_t i = 0; i < m; ++i)
        for (int32_t p = x->indptr[i] + 1; p < x->indptr[i + 1]; ++p)
            if (x->indices[p] <= x->indices[p - 1]) {
                snprintf(buf, size, "column indices not strictly increasing in row %lld", (long long)i);
                return buf;
            }
    if (!all_finite(x->values, nnz)) return "values not finite (NaN or inf)";
    return NULL;
}

/* ---- reading ---- */

typedef struct {
    cJSON *header, *spec, *metadata, *decls;
    entry *entries;
    expected *exp;
    int nentries, nexp;
} parse_state;

static void state_free(parse_state *st)
{
    cJSON_Delete(st->header);
    cJSON_Delete(st->spec);
    cJSON_Delete(st->metadata);
    cJSON_Delete(st->decls);
    for (int i = 0; i < st->nexp; ++i)
        if (st->exp[i].owned) free(st->exp[i].key);
    free(st->entries);
    free(st->exp);
}

static const entry *find_entry(const parse_state *st, const char *key)
{
    for (int i = 0; i < st->nentries; ++i)
        if (!strcmp(st->entries[i].key, key)) return &st->entries[i];
    return NULL;
}

static proxcl_status read_header(const unsigned char *blob, size_t size, const char *name, parse_state *st,
                                 uint64_t *hlen_out, const cJSON **meta_out, proxcl_error *err)
{
    if (size < 8) return px_fail(err, PROXCL_ERR_FORMAT, "%s: too short for a model file (%zu bytes)", name, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; --i) hlen = hlen << 8 | blob[i];
    if (hlen > MAX_HEADER)
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: header length %llu is over the %llu-byte limit", name,
                       (unsigned long long)hlen, MAX_HEADER);
    if (hlen > size - 8)
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes): "
                       "truncated?", name, (unsigned long long)hlen, size);
    const char *text = (const char *)blob + 8;
    if (!utf8_ok((const unsigned char *)text, (size_t)hlen))
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: header is not UTF-8", name);
    if (!hlen || text[0] != '{')
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: not a safetensors file (header does not start with '{')", name);
    int floats;
    PX_TRY(json_parse(text, (size_t)hlen, name, "header", &st->header, &floats, err));
    if (!cJSON_IsObject(st->header)) return px_fail(err, PROXCL_ERR_FORMAT, "%s: header is not a JSON object", name);
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(st->header, "__metadata__");
    int strings = cJSON_IsObject(meta);
    for (const cJSON *c = strings ? meta->child : NULL; c; c = c->next) strings &= cJSON_IsString(c);
    if (!strings) return px_fail(err, PROXCL_ERR_FORMAT, "%s: no __metadata__ of strings: not a proxcl model file", name);
    if (floats) return px_fail(err, PROXCL_ERR_FORMAT, "%s: header has a number that is not an integer", name);
    *hlen_out = hlen;
    *meta_out = meta;
    return PROXCL_OK;
}

static const char *meta_str(const cJSON *meta, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static proxcl_status check_format(const cJSON *meta, const char *name, proxcl_error *err)
{
    const char *fmt = meta_str(meta, "format"), *ver = meta_str(meta, "format_version");
    if (!fmt || strcmp(fmt, "proxcl"))
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: format is not 'proxcl': not a proxcl model file", name);
    size_t n = ver ? strlen(ver) : 0;
    int digits = n > 0 && n < 10;
    for (size_t i = 0; i < n; ++i) digits &= is_digit(ver[i]);
    if (!digits) return px_fail(err, PROXCL_ERR_FORMAT, "%s: bad format_version", name);
    long v = strtol(ver, NULL, 10);
    if (v > 1)
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: format version %ld is newer than the version 1 this proxcl reads; "
                       "upgrade proxcl", name, v);
    if (v != 1) return px_fail(err, PROXCL_ERR_FORMAT, "%s: format version %ld is not the version 1 this proxcl reads",
                               name, v);
    if (!exact_keys(meta, META_KEYS, 6))
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: __metadata__ keys are not exactly format, format_version, spec, "
                       "metadata, tensors, checksum", name);
    return PROXCL_OK;
}

static proxcl_status check_entries(parse_state *st, uint64_t data_len, const char *name, proxcl_error *err)
{
    int n = key_count(st->header) - 1;
    st->entries = px_alloc((size_t)(n > 0 ? n : 1) * sizeof *st->entries, err);
    if (!st->entries) return PROXCL_ERR_MEMORY;
    for (const cJSON *c = st->header->child; c; c = c->next) {
        if (!strcmp(c->string, "__metadata__")) continue;
        PX_TRY(check_entry(c, 0, data_len, name, &st->entries[st->nentries], err));
        st->nentries++;
    }
    entry *sorted = px_alloc((size_t)(n > 0 ? n : 1) * sizeof *sorted, err);
    if (!sorted) return PROXCL_ERR_MEMORY;
    memcpy(sorted, st->entries, (size_t)st->nentries * sizeof *sorted);
    qsort(sorted, (size_t)st->nentries, sizeof *sorted, cmp_entry);
    uint64_t pos = 0;
    proxcl_status s = PROXCL_OK;
    for (int i = 0; i < st->nentries && s == PROXCL_OK; ++i) {
        if (sorted[i].begin != pos)
            s = px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' starts at byte %llu of the data section, expected %llu "
                        "(overlap or gap)", name, sorted[i].key, (unsigned long long)sorted[i].begin,
                        (unsigned long long)pos);
        pos = sorted[i].end;
    }
    free(sorted);
    if (s == PROXCL_OK && pos != data_len)
        s = px_fail(err, PROXCL_ERR_FORMAT, "%s: %llu bytes after the last tensor", name,
                    (unsigned long long)(data_len - pos));
    return s;
}

static proxcl_status read_declarations(parse_state *st, const cJSON *meta, const char *name, px_file *f,
                                       int *decl_floats, proxcl_error *err)
{
    const char *spec = meta_str(meta, "spec"), *md = meta_str(meta, "metadata"), *tens = meta_str(meta, "tensors");
    int floats;
    PX_TRY(json_parse(spec, strlen(spec), name, "__metadata__ spec", &st->spec, &floats, err));
    PX_TRY(json_parse(md, strlen(md), name, "__metadata__ metadata", &st->metadata, &floats, err));
    PX_TRY(json_parse(tens, strlen(tens), name, "__metadata__ tensors", &st->decls, decl_floats, err));
    if (!cJSON_IsObject(st->spec)) return px_fail(err, PROXCL_ERR_FORMAT, "%s: spec is not a JSON object", name);
    if (!cJSON_IsObject(st->metadata)) return px_fail(err, PROXCL_ERR_FORMAT, "%s: metadata is not a JSON object", name);
    if (!cJSON_IsArray(st->decls)) return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensors is not a JSON list", name);
    if (!(f->spec_text = strdup(spec)) || !(f->metadata_text = strdup(md)))
        return px_fail(err, PROXCL_ERR_MEMORY, "out of memory");
    int nd = cJSON_GetArraySize(st->decls);
    f->tensors = px_alloc((size_t)(nd ? nd : 1) * sizeof *f->tensors, err);
    st->exp = px_alloc((size_t)(3 * nd + 1) * sizeof *st->exp, err);
    if (!f->tensors || !st->exp) return PROXCL_ERR_MEMORY;
    return PROXCL_OK;
}

static proxcl_status match_declarations(parse_state *st, const char *name, proxcl_error *err)
{
    for (int i = 0; i < st->nexp; ++i)
        for (int j = i + 1; j < st->nexp; ++j)
            if (!strcmp(st->exp[i].key, st->exp[j].key))
                return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor declarations collide", name);
    for (int i = 0; i < st->nexp; ++i)
        if (!find_entry(st, st->exp[i].key))
            return px_fail(err, PROXCL_ERR_FORMAT, "%s: declared tensor '%s' is missing from the file", name, st->exp[i].key);
    for (int i = 0; i < st->nentries; ++i) {
        int found = 0;
        for (int j = 0; j < st->nexp && !found; ++j) found = !strcmp(st->entries[i].key, st->exp[j].key);
        if (!found) return px_fail(err, PROXCL_ERR_FORMAT, "%s: undeclared tensor '%s' in the file", name, st->entries[i].key);
    }
    for (int i = 0; i < st->nexp; ++i) {
        const expected *x = &st->exp[i];
        const entry *e = find_entry(st, x->key);
        if (e->dtype != x->dtype)
            return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' is %s, declared %s", name, x->key,
                           DTYPE_NAMES[e->dtype], DTYPE_NAMES[x->dtype]);
        int same = e->rank == x->rank;
        for (int d = 0; same && d < e->rank; ++d) same = e->shape[d] == x->shape[d];
        if (!same) return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' has a shape other than declared", name, x->key);
    }
    return PROXCL_OK;
}

static proxcl_status check_checksum(const parse_state *st, const cJSON *meta, const unsigned char *data,
                                    const char *name, proxcl_error *err)
{
    px_sha256 h;
    px_sha256_init(&h);
    static const char *const keys[4] = {"format_version", "spec", "metadata", "tensors"};
    for (int i = 0; i < 4; ++i) {
        const char *s = meta_str(meta, keys[i]);
        px_sha256_update(&h, s, strlen(s) + 1);            /* the text and a zero byte */
    }
    for (int i = 0; i < st->nexp; ++i) {                   /* declaration order */
        const entry *e = find_entry(st, st->exp[i].key);
        px_sha256_update(&h, data + e->begin, (size_t)(e->end - e->begin));
    }
    char hex[65], want[72];
    px_sha256_hex(&h, hex);
    snprintf(want, sizeof want, "sha256:%s", hex);
    if (strcmp(want, meta_str(meta, "checksum")))
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: checksum mismatch: the file is corrupt", name);
    return PROXCL_OK;
}

static proxcl_status decode_tensors(const parse_state *st, px_file *f, const unsigned char *data, const char *name,
                                    proxcl_error *err)
{
    int at = 0;
    for (int t = 0; t < f->ntensors; ++t) {
        px_tensor *x = &f->tensors[t];
        const entry *e = find_entry(st, st->exp[at].key);
        if (!x->csr) {
            int over;
            x->count = (int64_t)elements(x->shape, x->rank, &over);
            if (!(x->values = px_alloc((size_t)x->count * sizeof(float), err))) return PROXCL_ERR_MEMORY;
            load_values(data + e->begin, e->dtype, x->count, x->values);
            if (!all_finite(x->values, x->count))
                return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s': values not finite (NaN or inf)", name, x->name);
            at += 1;
            continue;
        }
        const entry *ep = e, *ei = find_entry(st, st->exp[at + 1].key), *ev = find_entry(st, st->exp[at + 2].key);
        x->count = x->nnz;
        x->indptr = px_alloc((size_t)(x->shape[0] + 1) * sizeof(int32_t), err);
        x->indices = px_alloc((size_t)x->nnz * sizeof(int32_t), err);
        x->values = px_alloc((size_t)x->nnz * sizeof(float), err);
        if (!x->indptr || !x->indices || !x->values) return PROXCL_ERR_MEMORY;
        load_indices(data + ep->begin, I32, x->shape[0] + 1, x->indptr);
        load_indices(data + ei->begin, ei->dtype, x->nnz, x->indices);
        load_values(data + ev->begin, ev->dtype, x->nnz, x->values);
        char buf[160];
        const char *why = csr_problem(x, buf, sizeof buf);
        if (why) return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s': %s", name, x->name, why);
        at += 3;
    }
    return PROXCL_OK;
}

proxcl_status px_file_parse(const unsigned char *blob, size_t size, const char *name, px_file *f, proxcl_error *err)
{
    parse_state st;
    memset(&st, 0, sizeof st);
    memset(f, 0, sizeof *f);
    uint64_t hlen = 0;
    const cJSON *meta = NULL;
    int decl_floats = 0;
    proxcl_status s = read_header(blob, size, name, &st, &hlen, &meta, err);
    if (s == PROXCL_OK) s = check_format(meta, name, err);
    if (s == PROXCL_OK) s = check_entries(&st, size - 8 - hlen, name, err);
    if (s == PROXCL_OK) s = read_declarations(&st, meta, name, f, &decl_floats, err);
    if (s == PROXCL_OK && decl_floats)
        s = px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor declarations hold a number that is not an integer", name);
    if (s == PROXCL_OK) s = decl_entries(st.decls, 0, name, f, st.exp, &st.nexp, err);
    if (s == PROXCL_OK) s = match_declarations(&st, name, err);
    if (s == PROXCL_OK) s = check_checksum(&st, meta, blob + 8 + hlen, name, err);
    if (s == PROXCL_OK) s = decode_tensors(&st, f, blob + 8 + hlen, name, err);
    state_free(&st);
    if (s != PROXCL_OK) px_file_free(f);
    return s;
}

void px_file_free(px_file *f)
{
    for (int t = 0; t < f->ntensors; ++t) {
        free(f->tensors[t].name);
        free(f->tensors[t].indptr);
        free(f->tensors[t].indices);
        free(f->tensors[t].values);
    }
    free(f->tensors);
    free(f->spec_text);
    free(f->metadata_text);
    memset(f, 0, sizeof *f);
}

proxcl_status px_file_read(const char *path, px_file *f, proxcl_error *err)
{
    memset(f, 0, sizeof *f);
    struct stat sb;
    if (stat(path, &sb) != 0) {
        if (errno == ENOENT) return px_fail(err, PROXCL_ERR_IO, "%s: no such file", path);
        return px_fail(err, PROXCL_ERR_IO, "%s: cannot read (%s)", path, strerror(errno));
    }
    if (S_ISDIR(sb.st_mode)) return px_fail(err, PROXCL_ERR_IO, "%s: is a directory, not a model file", path);
    if (!S_ISREG(sb.st_mode)) return px_fail(err, PROXCL_ERR_IO, "%s: not a regular file", path);
    FILE *fp = fopen(path, "rb");
    if (!fp) return px_fail(err, PROXCL_ERR_IO, "%s: cannot read (%s)", path, strerror(errno));
    size_t size = (size_t)sb.st_size;
    unsigned char *blob = px_alloc(size, err);
    if (!blob) {
        fclose(fp);
        return PROXCL_ERR_MEMORY;
    }
    size_t got = fread(blob, 1, size, fp);
    int bad = ferror(fp);
    fclose(fp);
    if (bad || got != size) {
        free(blob);
        return px_fail(err, PROXCL_ERR_IO, "%s: cannot read (short read)", path);
    }
    proxcl_status s = px_file_parse(blob, size, path, f, err);
    free(blob);
    return s;
}

/* ---- writing ---- */

static cJSON *shape_json(const int64_t *shape, int rank)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < rank; ++i) cJSON_AddItemToArray(a, cJSON_CreateNumber((double)shape[i]));
    return a;
}

typedef struct { const char *key; int dtype; const void *src; int src_kind; int64_t count; int rank; const int64_t *shape; } out_array;
/* src_kind: 0 float values, 1 int32 indices */

static void store(unsigned char *p, const out_array *a, int *ok)
{
    for (int64_t i = 0; i < a->count; ++i) {
        uint32_t b;
        if (a->src_kind == 1) {
            b = (uint32_t)((const int32_t *)a->src)[i];
        } else if (a->dtype == F16) {
            uint16_t h;
            *ok &= px_float_to_half(((const float *)a->src)[i], &h);
            b = h;
        } else {
            memcpy(&b, &((const float *)a->src)[i], 4);
        }
        for (int k = 0; k < DTYPE_SIZE[a->dtype]; ++k) p[DTYPE_SIZE[a->dtype] * i + k] = (unsigned char)(b >> (8 * k));
    }
}

proxcl_status px_file_bytes(const char *spec_text, const char *metadata_text, const px_tensor *tensors,
                            int ntensors, int half, unsigned char **blob, size_t *size, proxcl_error *err)
{
    *blob = NULL;
    int vdt = half ? F16 : F32, na = 0;
    out_array *arrays = px_alloc((size_t)(3 * ntensors + 1) * sizeof *arrays, err);
    char **keys = px_alloc((size_t)(3 * ntensors + 1) * sizeof *keys, err);
    cJSON *decls = cJSON_CreateArray(), *header = cJSON_CreateObject(), *meta = cJSON_CreateObject();
    char *decl_text = NULL, *text = NULL;
    proxcl_status s = arrays && keys && decls && header && meta ? PROXCL_OK : px_fail(err, PROXCL_ERR_MEMORY, "out of memory");
    for (int t = 0; t < ntensors && s == PROXCL_OK; ++t) {
        const px_tensor *x = &tensors[t];
        cJSON *d = cJSON_CreateObject();
        cJSON_AddItemToArray(decls, d);
        cJSON_AddStringToObject(d, "name", x->name);
        cJSON_AddStringToObject(d, "kind", x->csr ? "csr" : "dense");
        cJSON_AddItemToObject(d, "shape", shape_json(x->shape, x->rank));
        if (x->csr) {
            int idt = x->shape[1] <= U16_MAX_COLS ? U16 : I32;
            cJSON_AddNumberToObject(d, "nnz", (double)x->nnz);
            cJSON_AddStringToObject(d, "index_dtype", DTYPE_NAMES[idt]);
            static const char *const parts[3] = {"indptr", "indices", "data"};
            const out_array a[3] = {{NULL, I32, x->indptr, 1, x->shape[0] + 1, 1, NULL},
                                    {NULL, idt, x->indices, 1, x->nnz, 1, NULL}, {NULL, vdt, x->values, 0, x->nnz, 1, NULL}};
            for (int p = 0; p < 3 && s == PROXCL_OK; ++p) {
                size_t len = strlen(x->name) + strlen(parts[p]) + 2;
                if (!(keys[na] = malloc(len))) { s = px_fail(err, PROXCL_ERR_MEMORY, "out of memory"); break; }
                snprintf(keys[na], len, "%s.%s", x->name, parts[p]);
                arrays[na] = a[p];
                arrays[na].key = keys[na];
                ++na;
            }
        } else {
            arrays[na++] = (out_array){x->name, vdt, x->values, 0, x->count, x->rank, x->shape};
        }
        cJSON_AddStringToObject(d, "dtype", DTYPE_NAMES[vdt]);
    }
    if (s == PROXCL_OK && !(decl_text = cJSON_PrintUnformatted(decls))) s = px_fail(err, PROXCL_ERR_MEMORY, "out of memory");
    /* the data: 4-byte arrays first, then 2-byte ones, each group in declaration order */
    size_t data_len = 0;
    int order[3 * 64 + 1], *ord = na <= 3 * 64 ? order : malloc((size_t)na * sizeof *ord), no = 0;
    if (!ord && s == PROXCL_OK) s = px_fail(err, PROXCL_ERR_MEMORY, "out of memory");
    for (int pass = 4; pass >= 2 && s == PROXCL_OK; pass -= 2)
        for (int i = 0; i < na; ++i)
            if (DTYPE_SIZE[arrays[i].dtype] == pass) ord[no++] = i;
    px_sha256 h;
    px_sha256_init(&h);
    if (s == PROXCL_OK) {
        cJSON_AddStringToObject(meta, "format", "proxcl");
        cJSON_AddStringToObject(meta, "format_version", "1");
        cJSON_AddStringToObject(meta, "spec", spec_text);
        cJSON_AddStringToObject(meta, "metadata", metadata_text);
        cJSON_AddStringToObject(meta, "tensors", decl_text);
        const char *parts[4] = {"1", spec_text, metadata_text, decl_text};
        for (int i = 0; i < 4; ++i) px_sha256_update(&h, parts[i], strlen(parts[i]) + 1);
        cJSON_AddItemToObject(header, "__metadata__", meta);
        meta = NULL;
        for (int i = 0; i < no; ++i) {
            const out_array *a = &arrays[ord[i]];
            size_t nbytes = (size_t)a->count * (size_t)DTYPE_SIZE[a->dtype];
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "dtype", DTYPE_NAMES[a->dtype]);
            int64_t sh[1] = {a->count};
            cJSON_AddItemToObject(e, "shape", a->shape ? shape_json(a->shape, a->rank) : shape_json(sh, 1));
            cJSON *offs = cJSON_CreateArray();
            cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)data_len));
            cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(data_len + nbytes)));
            cJSON_AddItemToObject(e, "data_offsets", offs);
            cJSON_AddItemToObject(header, a->key, e);
            data_len += nbytes;
        }
    }
    /* the checksum covers the arrays in declaration order: write them there first */
    unsigned char *data = s == PROXCL_OK ? px_alloc(data_len, err) : NULL;
    if (s == PROXCL_OK && !data) s = PROXCL_ERR_MEMORY;
    if (s == PROXCL_OK) {
        size_t at = 0;
        int ok = 1;
        for (int i = 0; i < no; ++i) {
            const out_array *a = &arrays[ord[i]];
            store(data + at, a, &ok);
            at += (size_t)a->count * (size_t)DTYPE_SIZE[a->dtype];
        }
        if (!ok) s = px_fail(err, PROXCL_ERR_INPUT, "values too large for float16 (|x| > 65504)");
        for (int i = 0; i < na && s == PROXCL_OK; ++i) {
            size_t off = 0;
            for (int j = 0; j < no && ord[j] != i; ++j) off += (size_t)arrays[ord[j]].count * (size_t)DTYPE_SIZE[arrays[ord[j]].dtype];
            px_sha256_update(&h, data + off, (size_t)arrays[i].count * (size_t)DTYPE_SIZE[arrays[i].dtype]);
        }
    }
    if (s == PROXCL_OK) {
        char hex[65], sum[72];
        px_sha256_hex(&h, hex);
        snprintf(sum, sizeof sum, "sha256:%s", hex);
        cJSON_AddStringToObject(cJSON_GetObjectItemCaseSensitive(header, "__metadata__"), "checksum", sum);
        if (!(text = cJSON_PrintUnformatted(header))) s = px_fail(err, PROXCL_ERR_MEMORY, "out of memory");
    }
    if (s == PROXCL_OK) {
        size_t hlen = strlen(text), padded = (hlen + 7) / 8 * 8;
        *size = 8 + padded + data_len;
        if (!(*blob = px_alloc(*size, err))) s = PROXCL_ERR_MEMORY;
        else {
            for (int i = 0; i < 8; ++i) (*blob)[i] = (unsigned char)((uint64_t)padded >> (8 * i));
            memcpy(*blob + 8, text, hlen);
            memset(*blob + 8 + hlen, ' ', padded - hlen);
            memcpy(*blob + 8 + padded, data, data_len);
        }
    }
    if (ord != order) free(ord);
    for (int i = 0; keys && i < 3 * ntensors + 1; ++i) free(keys[i]);
    free(keys);
    free(arrays);
    free(data);
    cJSON_free(decl_text);
    cJSON_free(text);
    cJSON_Delete(decls);
    cJSON_Delete(header);
    cJSON_Delete(meta);
    return s;
}

proxcl_status px_write_atomic(const char *path, const unsigned char *blob, size_t size, proxcl_error *err)
{
    const char *slash = strrchr(path, '/');
    size_t dirlen = slash ? (size_t)(slash - path) + 1 : 0;
    size_t len = strlen(path) + 32;
    char *tmp = malloc(len);
    if (!tmp) return px_fail(err, PROXCL_ERR_MEMORY, "out of memory");
    snprintf(tmp, len, "%.*s.%s.XXXXXX", (int)dirlen, path, path + dirlen);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        proxcl_status s = px_fail(err, PROXCL_ERR_IO, "%s: cannot write (%s)", path, strerror(errno));
        free(tmp);
        return s;
    }
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, blob + done, size - done);
        if (w <= 0) break;
        done += (size_t)w;
    }
    mode_t mask = umask(0);
    umask(mask);
    int ok = done == size && fsync(fd) == 0 && fchmod(fd, 0666 & ~mask) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        proxcl_status s = px_fail(err, PROXCL_ERR_IO, "%s: cannot write (%s)", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return s;
    }
    free(tmp);
    return PROXCL_OK;
}
