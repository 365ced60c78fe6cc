/* IDX and .npy readers for proxcl-run (see images.h).  Sizes declared by a file are checked
 * against the file's length before anything is allocated from them. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "images.h"

#define MAX_BYTES (1LL << 31)

static proxcl_status fail(proxcl_error *err, proxcl_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void px_array_free(px_array *a)
{
    free(a->values);
    free(a->base);
    memset(a, 0, sizeof *a);
}

/* element type: size, kind ('u' unsigned, 'i' signed, 'f' float), big-endian */
typedef struct { int size; char kind; int big; } elem;

static double element(const unsigned char *p, elem t)
{
    unsigned char b[8];
    for (int i = 0; i < t.size; ++i) b[i] = p[t.big ? t.size - 1 - i : i];   /* little-endian in b */
    uint64_t u = 0;
    for (int i = t.size - 1; i >= 0; --i) u = u << 8 | b[i];
    if (t.kind == 'u') return (double)u;
    if (t.kind == 'i') {
        int64_t s = t.size == 8 ? (int64_t)u : (int64_t)(u ^ (1ULL << (8 * t.size - 1))) - (int64_t)(1ULL << (8 * t.size - 1));
        return (double)s;
    }
    if (t.size == 4) {
        uint32_t v = (uint32_t)u;
        float f;
        memcpy(&f, &v, 4);
        return f;
    }
    if (t.size == 8) {
        double d;
        memcpy(&d, &u, 8);
        return d;
    }
    /* float16 */
    uint32_t h = (uint32_t)u, sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? m / 1024.0 * (1.0 / 16384.0) : e == 31 ? (m ? NAN : INFINITY) : (1.0 + m / 1024.0) * (double)(1LL << e) / 32768.0;
    return sign ? -v : v;
}

static proxcl_status read_file(const char *path, unsigned char **data, int64_t *size, proxcl_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return fail(err, PROXCL_ERR_IO, "%s: %s", path, errno == ENOENT ? "no such file" : strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0 || (*size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return fail(err, PROXCL_ERR_IO, "%s: cannot read (is it a folder?)", path);
    }
    if (*size > MAX_BYTES + 4096) {
        fclose(f);
        return fail(err, PROXCL_ERR_INPUT, "%s: larger than 2 GiB", path);
    }
    *data = malloc((size_t)*size + 1);
    if (!*data) {
        fclose(f);
        return fail(err, PROXCL_ERR_MEMORY, "out of memory reading %s", path);
    }
    size_t got = fread(*data, 1, (size_t)*size, f);
    fclose(f);
    if ((int64_t)got != *size) {
        free(*data);
        return fail(err, PROXCL_ERR_IO, "%s: cannot read", path);
    }
    return PROXCL_OK;
}

static proxcl_status decode(const char *path, const unsigned char *p, int64_t avail, elem t, px_array *out,
                            proxcl_error *err)
{
    int64_t count = 1;
    for (int i = 0; i < out->rank; ++i) {
        if (out->shape[i] && count > MAX_BYTES / out->shape[i])
            return fail(err, PROXCL_ERR_INPUT, "%s: declares more than 2 GiB", path);
        count *= out->shape[i];
    }
    if (count * t.size > MAX_BYTES) return fail(err, PROXCL_ERR_INPUT, "%s: declares more than 2 GiB", path);
    if (avail < count * t.size)
        return fail(err, PROXCL_ERR_INPUT, "%s: its sizes need %lld data bytes, the file has %lld", path,
                    (long long)(count * t.size), (long long)avail);
    out->count = count;
    if (t.size == 1 && t.kind == 'u') {        /* bytes stay bytes: 4x less memory for images */
        out->bytes = p;
        return PROXCL_OK;
    }
    if (!(out->values = malloc((size_t)(count ? count : 1) * sizeof(float))))
        return fail(err, PROXCL_ERR_MEMORY, "out of memory reading %s", path);
    for (int64_t i = 0; i < count; ++i) out->values[i] = (float)element(p + i * t.size, t);
    return PROXCL_OK;
}

static proxcl_status read_idx(const char *path, const unsigned char *d, int64_t size, px_array *out, proxcl_error *err)
{
    static const struct { int code; elem t; } types[] = {{0x08, {1, 'u', 1}}, {0x09, {1, 'i', 1}}, {0x0B, {2, 'i', 1}},
                                                        {0x0C, {4, 'i', 1}}, {0x0D, {4, 'f', 1}}, {0x0E, {8, 'f', 1}}};
    if (size < 4) return fail(err, PROXCL_ERR_INPUT, "%s: not an IDX file (only %lld bytes)", path, (long long)size);
    int found = -1;
    for (int i = 0; i < 6; ++i)
        if (types[i].code == d[2]) found = i;
    if (found < 0) return fail(err, PROXCL_ERR_INPUT, "%s: unknown IDX type code 0x%02x", path, d[2]);
    int ndim = d[3];
    if (ndim == 0 || ndim > 8) return fail(err, PROXCL_ERR_INPUT, "%s: IDX file declares %d dimensions", path, ndim);
    if (size < 4 + 4 * ndim) return fail(err, PROXCL_ERR_INPUT, "%s: truncated IDX header", path);
    out->rank = ndim;
    for (int i = 0; i < ndim; ++i) {
        const unsigned char *q = d + 4 + 4 * i;
        out->shape[i] = (int64_t)((uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3]);
    }
    int64_t start = 4 + 4 * ndim;
    proxcl_status s = decode(path, d + start, size - start, types[found].t, out, err);
    if (s == PROXCL_OK && size - start != out->count * types[found].t.size) {
        px_array_free(out);
        return fail(err, PROXCL_ERR_INPUT, "%s: IDX sizes need %lld data bytes, the file has more", path,
                    (long long)(out->count * types[found].t.size));
    }
    return s;
}

/* the value of 'key': ... in a .npy header (a Python dict literal) */
static const char *npy_field(const char *h, const char *key)
{
    const char *p = strstr(h, key);
    if (!p) return NULL;
    p += strlen(key);
    while (*p == ' ' || *p == ':') ++p;
    return p;
}

static proxcl_status read_npy(const char *path, const unsigned char *d, int64_t size, px_array *out, proxcl_error *err)
{
    if (size < 10 || d[6] < 1 || d[6] > 3) return fail(err, PROXCL_ERR_INPUT, "%s: not a readable .npy array", path);
    int64_t hlen = d[6] == 1 ? (d[8] | d[9] << 8) : size >= 12 ? (int64_t)((uint32_t)d[8] | (uint32_t)d[9] << 8 | (uint32_t)d[10] << 16 | (uint32_t)d[11] << 24) : -1;
    int64_t start = (d[6] == 1 ? 10 : 12) + hlen;
    if (hlen < 0 || start > size) return fail(err, PROXCL_ERR_INPUT, "%s: truncated .npy header", path);
    char h[4096];
    int64_t n = hlen < (int64_t)sizeof h - 1 ? hlen : (int64_t)sizeof h - 1;
    memcpy(h, d + (d[6] == 1 ? 10 : 12), (size_t)n);
    h[n] = 0;
    const char *descr = npy_field(h, "'descr'"), *fortran = npy_field(h, "'fortran_order'"), *shape = npy_field(h, "'shape'");
    if (!descr || !fortran || !shape || descr[0] != '\'' || shape[0] != '(')
        return fail(err, PROXCL_ERR_INPUT, "%s: not a readable .npy array (header)", path);
    if (strncmp(fortran, "False", 5)) return fail(err, PROXCL_ERR_INPUT, "%s: Fortran-ordered arrays are not supported", path);
    char order = descr[1], kind = descr[2];
    int bytes = atoi(descr + 3);
    if (!(order == '<' || order == '>' || order == '|') || !strchr("uif", kind) || !(bytes == 1 || bytes == 2 || bytes == 4 || bytes == 8)
        || (kind == 'f' && bytes == 1) || descr[4] != '\'')
        return fail(err, PROXCL_ERR_INPUT, "%s: images must be numbers (unsupported dtype %.8s)", path, descr + 1);
    elem t = {bytes, kind, order == '>'};
    out->rank = 0;
    const char *p = shape + 1;
    while (*p && *p != ')') {
        while (*p == ' ' || *p == ',') ++p;
        if (*p == ')') break;
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || v < 0 || out->rank >= 8) return fail(err, PROXCL_ERR_INPUT, "%s: bad .npy shape", path);
        out->shape[out->rank++] = v;
        p = end;
    }
    return decode(path, d + start, size - start, t, out, err);
}

proxcl_status px_read_array(const char *path, px_array *out, proxcl_error *err)
{
    unsigned char *d = NULL;
    int64_t size = 0;
    memset(out, 0, sizeof *out);
    proxcl_status s = read_file(path, &d, &size, err);
    if (s != PROXCL_OK) return s;
    if (size >= 2 && d[0] == 0x1f && d[1] == 0x8b)
        s = fail(err, PROXCL_ERR_INPUT, "%s is gzip-compressed: decompress it first (gunzip -k)", path);
    else if (size >= 6 && !memcmp(d, "\x93NUMPY", 6))
        s = read_npy(path, d, size, out, err);
    else if (size >= 2 && d[0] == 0 && d[1] == 0)
        s = read_idx(path, d, size, out, err);
    else
        s = fail(err, PROXCL_ERR_INPUT, "%s: neither an IDX file nor a .npy array", path);
    if (s == PROXCL_OK && out->bytes) out->base = d;
    else free(d);
    if (s != PROXCL_OK) px_array_free(out);
    return s;
}

proxcl_status px_read_images(const char *path, px_array *out, proxcl_error *err)
{
    proxcl_status s = px_read_array(path, out, err);
    if (s != PROXCL_OK) return s;
    if (out->rank == 2) {
        out->shape[3] = out->shape[1]; out->shape[2] = out->shape[0]; out->shape[1] = 1; out->shape[0] = 1;
    } else if (out->rank == 3) {
        out->shape[3] = out->shape[2]; out->shape[2] = out->shape[1]; out->shape[1] = 1;
    }
    if (out->rank < 2 || out->rank > 4 || out->count == 0) {
        px_array_free(out);
        return fail(err, PROXCL_ERR_INPUT, "%s: expected images [H, W], [N, H, W] or [N, C, H, W]", path);
    }
    out->rank = 4;
    /* as proxcl.predict.read_images: raw pixels 0..255 (bytes always are) */
    if (out->values) {
        float lo = INFINITY, hi = -INFINITY;
        for (int64_t i = 0; i < out->count; ++i) {
            const float v = out->values[i];
            if (!isfinite(v)) {
                px_array_free(out);
                return fail(err, PROXCL_ERR_INPUT, "%s: the images hold NaN or infinite values", path);
            }
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        if (lo < 0.0f || hi > 255.0f) {
            px_array_free(out);
            return fail(err, PROXCL_ERR_INPUT, "%s: pixel values from %g to %g; raw pixels 0..255 are expected "
                        "(proxcl normalises them as it did in training)", path, (double)lo, (double)hi);
        }
    }
    return PROXCL_OK;
}
