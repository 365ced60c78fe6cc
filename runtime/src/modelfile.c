/* Reading the model file (docs/FORMAT.md): every check of section 3 in its order, so that nothing
 * is allocated from an unchecked size, then the tensors as float32 values and int32 indices.  The
 * messages follow proxcl.modelfile's.  json.c checks the JSON texts; modelfile_write.c writes. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "px.h"
#include "json.h"

#define PX_DIGIT(c) ((c) >= '0' && (c) <= '9')

#define MAX_HEADER 104857600ULL
#define MAX_DIM 2147483647LL
#define U16_MAX_COLS 65536

static const char *const META_KEYS[6] = {"format", "format_version", "spec", "metadata", "tensors", "checksum"};

/* ---- the safetensors entries ---- */

typedef struct { const char *key; int dtype; int rank; int64_t shape[8]; uint64_t begin, end; } entry;
const char *const px_dtype_names[PX_NDTYPES] = {"F32", "F16", "I32", "U16"};
const int px_dtype_size[PX_NDTYPES] = {4, 2, 4, 2};
#define DTYPE_NAMES px_dtype_names
#define DTYPE_SIZE px_dtype_size
enum { F32 = PX_F32, F16 = PX_F16, I32 = PX_I32, U16 = PX_U16, NDTYPES = PX_NDTYPES };

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
        if (!px_json_int(c, floats, 0, (double)MAX_DIM, &shape[i])) return 0;
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
    if (!px_json_exact_keys(e, keys, 3)) return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor entry '%s' is malformed", name, key);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    out->key = key;
    out->dtype = dtype_of(cJSON_IsString(dt) ? dt->valuestring : NULL);
    if (out->dtype < 0) return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' has an unsupported dtype", name, key);
    if (!parse_shape(cJSON_GetObjectItemCaseSensitive(e, "shape"), floats, 8, out->shape, &out->rank))
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: tensor '%s' has a bad shape", name, key);
    int64_t b, en;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !px_json_int(offs->child, floats, 0, 1e300, &b)
        || !px_json_int(offs->child->next, floats, 0, 1e300, &en) || b > en)
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
            if (!px_json_exact_keys(d, dense_keys, 4))
                return px_fail(err, PROXCL_ERR_FORMAT, "%s: dense tensor '%s': unexpected declaration keys", name, tn);
            expected *e = &exp[(*nexp)++];
            e->key = x->name;
            e->dtype = vdt;
            e->rank = x->rank;
            memcpy(e->shape, x->shape, sizeof e->shape);
        } else if (!strcmp(k, "csr")) {
            if (!px_json_exact_keys(d, csr_keys, 6))
                return px_fail(err, PROXCL_ERR_FORMAT, "%s: CSR tensor '%s': unexpected declaration keys", name, tn);
            if (x->rank != 2 || x->shape[0] >= MAX_DIM)
                return px_fail(err, PROXCL_ERR_FORMAT, "%s: CSR tensor '%s' declares a shape that is not [rows, cols]",
                               name, tn);
            int64_t m = x->shape[0], n = x->shape[1], nnz;
            double cap = (double)m * (double)n < (double)MAX_DIM ? (double)m * (double)n : (double)MAX_DIM;
            if (!px_json_int(cJSON_GetObjectItemCaseSensitive(d, "nnz"), floats, 0, cap, &nnz))
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
    if (!px_utf8_ok((const unsigned char *)text, (size_t)hlen))
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: header is not UTF-8", name);
    if (!hlen || text[0] != '{')
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: not a safetensors file (header does not start with '{')", name);
    int floats;
    PX_TRY(px_json_parse(text, (size_t)hlen, name, "header", &st->header, &floats, err));
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
    for (size_t i = 0; i < n; ++i) digits &= PX_DIGIT(ver[i]);
    if (!digits) return px_fail(err, PROXCL_ERR_FORMAT, "%s: bad format_version", name);
    long v = strtol(ver, NULL, 10);
    if (v > 1)
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: format version %ld is newer than the version 1 this proxcl reads; "
                       "upgrade proxcl", name, v);
    if (v != 1) return px_fail(err, PROXCL_ERR_FORMAT, "%s: format version %ld is not the version 1 this proxcl reads",
                               name, v);
    if (!px_json_exact_keys(meta, META_KEYS, 6))
        return px_fail(err, PROXCL_ERR_FORMAT, "%s: __metadata__ keys are not exactly format, format_version, spec, "
                       "metadata, tensors, checksum", name);
    return PROXCL_OK;
}

static proxcl_status check_entries(parse_state *st, uint64_t data_len, const char *name, proxcl_error *err)
{
    int n = px_json_keys(st->header) - 1;
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
    PX_TRY(px_json_parse(spec, strlen(spec), name, "__metadata__ spec", &st->spec, &floats, err));
    PX_TRY(px_json_parse(md, strlen(md), name, "__metadata__ metadata", &st->metadata, &floats, err));
    PX_TRY(px_json_parse(tens, strlen(tens), name, "__metadata__ tensors", &st->decls, decl_floats, err));
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

