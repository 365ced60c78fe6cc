/* Writing the model file (docs/FORMAT.md section 5): the JSON header with cJSON, the arrays (4-byte
 * ones first, each group in declaration order), the checksum over the declarations and the arrays
 * in declaration order, and the atomic write (a temporary file beside the target, fsync, rename). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "px.h"

#define U16_MAX_COLS 65536
#define DTYPE_NAMES px_dtype_names
#define DTYPE_SIZE px_dtype_size
enum { F32 = PX_F32, F16 = PX_F16, I32 = PX_I32, U16 = PX_U16 };

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
