/* The network on a device, layer by layer, as src/proxcl/layers.py and models.py run it: the
 * same layer kinds, the same fusions (a ReLU into the linear, convolution or pooling before it;
 * at inference a sparse convolution with the pooling and flatten after it in one kernel), the
 * same layouts (flat [F, N], spatial [C, N, H, W]) and so the same launches (ops_*.c).
 * Training runs on CSR weights only: it is debiasing, on a frozen support.  spec.c builds the
 * layers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

/* ---- parameters on the device ---- */

/* An index array on the device: uint16 when the parameter's indices are (idx16), else int32. */
static proxcl_status upload_index(px_device *dev, const px_param *p, const int32_t *src, int n, cl_mem *out,
                                  proxcl_error *err)
{
    if (!p->idx16) return px_buffer_from(dev, src, (size_t)n * 4, out, err);
    uint16_t *narrow = px_alloc((size_t)(n ? n : 1) * sizeof(uint16_t), err);
    if (!narrow) return PROXCL_ERR_MEMORY;
    for (int q = 0; q < n; ++q) narrow[q] = (uint16_t)src[q];
    proxcl_status s = px_buffer_from(dev, narrow, (size_t)n * 2, out, err);
    free(narrow);
    return s;
}

/* (Tp, Ti, Pm): the transpose as a stable sort of the entries by column (CSRPattern.transposed) */
static proxcl_status transpose_structure(px_device *dev, px_param *p, proxcl_error *err)
{
    int k = p->cols, nnz = p->nnz;
    int32_t *tp = px_alloc((size_t)(k + 1) * sizeof(int32_t), err), *ti = px_alloc((size_t)nnz * sizeof(int32_t), err);
    int32_t *pm = px_alloc((size_t)nnz * sizeof(int32_t), err), *next = px_alloc((size_t)(k + 1) * sizeof(int32_t), err);
    proxcl_status s = tp && ti && pm && next ? PROXCL_OK : PROXCL_ERR_MEMORY;
    if (s == PROXCL_OK) {
        for (int q = 0; q < nnz; ++q) tp[p->indices[q] + 1]++;
        for (int j = 0; j < k; ++j) tp[j + 1] += tp[j];
        memcpy(next, tp, (size_t)(k + 1) * sizeof(int32_t));
        for (int i = 0; i < p->rows; ++i)
            for (int q = p->indptr[i]; q < p->indptr[i + 1]; ++q) {
                int at = next[p->indices[q]]++;
                ti[at] = i;
                pm[at] = q;
            }
        s = px_buffer_from(dev, tp, (size_t)(k + 1) * 4, &p->tp, err);
        if (s == PROXCL_OK) s = upload_index(dev, p, ti, nnz, &p->ti, err);
        if (s == PROXCL_OK) s = px_buffer_from(dev, pm, (size_t)nnz * 4, &p->pm, err);
        if (s == PROXCL_OK) s = px_row_pieces(dev, tp, k, &p->pieces[1], err);
    }
    free(tp);
    free(ti);
    free(pm);
    free(next);
    return s;
}

/* Ai (row of each entry) and, for a convolution, the packed taps c << 16 | ky << 8 | kx */
static proxcl_status entry_arrays(px_device *dev, px_param *p, const px_layer *L, proxcl_error *err)
{
    int32_t *ai = px_alloc((size_t)p->nnz * sizeof(int32_t), err);
    if (!ai) return PROXCL_ERR_MEMORY;
    for (int i = 0; i < p->rows; ++i)
        for (int q = p->indptr[i]; q < p->indptr[i + 1]; ++q) ai[q] = i;
    proxcl_status s = upload_index(dev, p, ai, p->nnz, &p->ai, err);
    if (s == PROXCL_OK && L->kind == L_CONV) {
        for (int q = 0; q < p->nnz; ++q) {
            int j = p->indices[q], c = j / (L->kh * L->kw), r = j % (L->kh * L->kw);
            ai[q] = c << 16 | (r / L->kw) << 8 | (r % L->kw);
        }
        s = px_buffer_from(dev, ai, (size_t)p->nnz * 4, &p->taps, err);
    }
    free(ai);
    return s;
}

static proxcl_status upload_param(px_device *dev, px_param *p, const px_layer *L, proxcl_error *err)
{
    p->stored = p->csr ? p->nnz : p->size;
    PX_TRY(px_buffer_from(dev, p->values, (size_t)p->stored * 4, &p->data, err));
    PX_TRY(px_buffer(dev, (size_t)p->stored * 4, &p->grad, err));
    if (!p->csr) return PROXCL_OK;
    PX_TRY(px_buffer_from(dev, p->indptr, (size_t)(p->rows + 1) * 4, &p->ap, err));
    p->idx16 = p->rows <= 65535 && p->cols <= 65535;
    PX_TRY(upload_index(dev, p, p->indices, p->nnz, &p->aj, err));
    p->row_max = 0;
    for (int i = 0; i < p->rows; ++i)
        if (p->indptr[i + 1] - p->indptr[i] > p->row_max) p->row_max = p->indptr[i + 1] - p->indptr[i];
    PX_TRY(px_row_pieces(dev, p->indptr, p->rows, &p->pieces[0], err));
    PX_TRY(entry_arrays(dev, p, L, err));
    return transpose_structure(dev, p, err);
}

static void release_param(px_param *p)
{
    cl_mem *m[] = {&p->data, &p->grad, &p->ap, &p->aj, &p->ai, &p->tp, &p->ti, &p->pm, &p->taps, &p->state[0],
                   &p->state[1]};
    for (size_t i = 0; i < sizeof m / sizeof *m; ++i) px_release(m[i]);
    px_pieces_release(&p->pieces[0]);
    px_pieces_release(&p->pieces[1]);
}

proxcl_status px_net_upload(px_net *net, proxcl_error *err)
{
    for (int i = 0; i < net->nlayers; ++i) {
        px_layer *L = &net->layers[i];
        if (L->weight) PX_TRY(upload_param(&net->dev, L->weight, L, err));
        if (L->bias) PX_TRY(upload_param(&net->dev, L->bias, L, err));
    }
    return PROXCL_OK;
}

static void free_ws(px_net *net, px_ws *w)
{
    if (!w->n) return;
    px_forget_args(&net->dev);
    cl_mem *top[] = {&w->input, &w->raw, &w->labels, &w->partial, &w->dz, &w->probs};
    for (size_t i = 0; i < sizeof top / sizeof *top; ++i) px_release(top[i]);
    for (int e = 0; w->lb && e < net->nexec; ++e) {
        px_lbuf *b = &w->lb[e];
        cl_mem *m[] = {&b->y, &b->idx, &b->cols, &b->dx, &b->dcols, &b->geo, &b->geo_direct, &b->y_direct,
                       &b->geo_chunk[0], &b->geo_chunk[1], &b->yc, &b->part};
        for (size_t i = 0; i < sizeof m / sizeof *m; ++i) px_release(m[i]);
    }
    free(w->lb);
    memset(w, 0, sizeof *w);
}

void px_net_free(px_net *net)
{
    for (int i = 0; i < PX_WORKSPACES; ++i) free_ws(net, &net->ws[i]);
    for (int i = 0; net->layers && i < net->nlayers; ++i) {      /* the layers own their params */
        px_param *ps[2] = {net->layers[i].weight, net->layers[i].bias};
        for (int j = 0; j < 2; ++j) {
            if (!ps[j]) continue;
            release_param(ps[j]);
            free(ps[j]->indptr);
            free(ps[j]->indices);
            free(ps[j]->values);
            free(ps[j]);
        }
    }
    free(net->params);
    free(net->exec);
    free(net->layers);
    if (net->dev_open) px_device_close(&net->dev);
    memset(net, 0, sizeof *net);
    net->cols_owner = -1;
}

/* ---- workspaces: one per batch size, the least recently used one replaced ---- */

static proxcl_status workspace(px_net *net, int n, px_ws **out, proxcl_error *err)
{
    px_ws *victim = &net->ws[0];
    for (int i = 0; i < PX_WORKSPACES; ++i) {
        if (net->ws[i].n == n) {
            net->ws[i].used = ++net->clock;
            *out = &net->ws[i];
            return PROXCL_OK;
        }
        if (net->ws[i].used < victim->used) victim = &net->ws[i];
    }
    free_ws(net, victim);
    if (!(victim->lb = px_alloc((size_t)net->nexec * sizeof *victim->lb, err))) return PROXCL_ERR_MEMORY;
    victim->n = n;
    victim->used = ++net->clock;
    *out = victim;
    return PROXCL_OK;
}

/* a buffer of a workspace slot, made on first use */
static proxcl_status slot(px_net *net, cl_mem *m, size_t bytes, proxcl_error *err)
{
    if (*m) return PROXCL_OK;
    return px_buffer(&net->dev, bytes, m, err);
}

/* The values of nn.cl's int32 geometry array G (ops.nn.geometry_values): a convolution or pooling,
 * and for the direct convolution its pooling (a 1x1 pool of stride 1 when none) and output
 * channels.  Returns how many there are. */
static int geometry_values(const px_layer *L, int n, const px_layer *pool, int direct, int32_t g[21])
{
    int32_t conv[12] = {L->in_shape[0], n, L->in_shape[1], L->in_shape[2], L->kh, L->kw, L->sh, L->sw, L->ph,
                        L->pw, L->ho, L->wo};
    memcpy(g, conv, sizeof conv);
    if (!direct) return 12;
    int32_t extra[9] = {1, 1, 1, 1, 0, 0, L->ho, L->wo, L->out};
    if (pool) {
        int32_t q[9] = {pool->kh, pool->kw, pool->sh, pool->sw, pool->ph, pool->pw, pool->ho, pool->wo, L->out};
        memcpy(extra, q, sizeof q);
    }
    memcpy(g + 12, extra, sizeof extra);
    return 21;
}

/* G on the device (ops.nn.geometry) */
static proxcl_status geometry(px_net *net, cl_mem *m, const px_layer *L, int n, const px_layer *pool, int direct,
                              proxcl_error *err)
{
    if (*m) return PROXCL_OK;
    int32_t g[21];
    int count = geometry_values(L, n, pool, direct, g);
    return px_buffer_from(&net->dev, g, (size_t)count * 4, m, err);
}

/* ---- products of a weight: CSR or dense ---- */

static proxcl_status matmul(px_net *net, const px_param *w, cl_mem x, int n, const px_param *bias, int relu, cl_mem y,
                            proxcl_error *err)
{
    cl_mem b = bias ? bias->data : NULL;
    if (w->csr)
        return px_spmm(&net->dev, w->rows, w->cols, w->ap, w->aj, w->idx16, w->data, NULL, &w->pieces[0], x, n, b,
                       relu, y, err);
    return px_gemm(&net->dev, w->data, x, y, w->rows, n, w->cols, 0, b, relu, err);
}

static proxcl_status matmul_t(px_net *net, const px_param *w, cl_mem d, int n, cl_mem out, proxcl_error *err)
{
    return px_spmm(&net->dev, w->cols, w->rows, w->tp, w->ti, w->idx16, w->data, w->pm, &w->pieces[1], d, n, NULL, 0,
                   out, err);
}

/* ---- convolutions in batch chunks (layers.Conv2d: the im2col buffer above Tuning.cols_limit_mib) ---- */

/* How many equal chunks of *step samples (the last one shorter) Conv2d._chunks makes of n. */
static int conv_chunks(const px_net *net, const px_layer *L, int n, int *step)
{
    const long long limit = (long long)net->dev.t->cols_limit_mib << 20, per = 4LL * L->in_shape[0] * L->kh * L->kw * L->ho * L->wo;
    if (L->pointwise || !limit || (long long)n * per <= limit) { *step = n; return 1; }
    long long fit = limit / per > 1 ? limit / per : 1;
    int parts = (int)((n + fit - 1) / fit);
    *step = (n + parts - 1) / parts;
    return (n + *step - 1) / *step;
}

static int cols_held(const px_net *net, int e, int n0, int nc)
{
    return net->cols_owner == e && net->cols_n0 == n0 && net->cols_nc == nc;
}

/* im2col of samples n0 .. n0+nc-1 of x (a batch of n) into cols; G of nc samples */
static proxcl_status im2col(px_net *net, int e, px_lbuf *b, const px_layer *L, cl_mem x, int n0, int nc, int n,
                            cl_mem cols, proxcl_error *err)
{
    int step;
    conv_chunks(net, L, n, &step);
    cl_mem *g = nc == n ? &b->geo : nc == step ? &b->geo_chunk[0] : &b->geo_chunk[1];
    PX_TRY(geometry(net, g, L, nc, NULL, 0, err));
    px_arg args[] = {PX_M(*g), PX_M(x), PX_M(cols), PX_I(n0), PX_I(n)};
    PX_TRY(px_nn_row_pieces(&net->dev, "im2col", (size_t)nc * L->ho, (size_t)L->in_shape[0] * L->kh * L->kw, L->wo,
                            3, 0, args, 5, err));
    net->cols_owner = e;
    net->cols_n0 = n0;
    net->cols_nc = nc;
    return PROXCL_OK;
}

/* between y[R, ld] and yc[R, L]: the block of yc's shape at flat position off (ops.nn.col_block) */
static proxcl_status col_block(px_net *net, cl_mem y, cl_mem yc, int rows, int len, int ld, int off, int to_y,
                               proxcl_error *err)
{
    int vec = net->dev.t->vec;
    px_arg args[] = {PX_I(rows), PX_I(len), PX_I(ld), PX_I(off), PX_M(y), PX_M(yc), PX_I(to_y)};
    return px_nn_rows(&net->dev, "col_block", (size_t)((len + vec - 1) / vec), (size_t)rows, args, 7, err);
}

static proxcl_status conv_forward_chunks(px_net *net, int e, px_lbuf *b, const px_layer *L, cl_mem x, int n,
                                         int step, int chunks, proxcl_error *err)
{
    const int p = L->ho * L->wo, k = L->in_shape[0] * L->kh * L->kw;
    PX_TRY(slot(net, &b->cols, (size_t)k * step * p * 4, err));
    PX_TRY(slot(net, &b->yc, (size_t)L->out * step * p * 4, err));
    for (int i = 0; i < chunks; ++i) {
        int n0 = i * step, nc = n - n0 < step ? n - n0 : step;
        PX_TRY(im2col(net, e, b, L, x, n0, nc, n, b->cols, err));
        PX_TRY(matmul(net, L->weight, b->cols, nc * p, L->bias, L->relu, b->yc, err));
        PX_TRY(col_block(net, b->y, b->yc, L->out, nc * p, n * p, n0 * p, 1, err));
    }
    return PROXCL_OK;
}

/* col2im over `rows` image rows (ops.nn.col2im): a work-item's loops, 1 + KH*KW per column of
 * the input row plus KH*(1 + KW) */
static proxcl_status col2im(px_device *dev, const px_layer *L, size_t rows, const px_arg args[5], proxcl_error *err)
{
    return px_nn_row_pieces(dev, "col2im", rows, (size_t)L->in_shape[0], L->in_shape[2], 1 + L->kh * L->kw,
                            L->kh * (1 + L->kw), args, 5, err);
}

/* Conv2d._backward_chunks: the chunks in reverse order (the last one's columns are still held) */
static proxcl_status conv_backward_chunks(px_net *net, int e, px_lbuf *b, const px_layer *L, cl_mem dy, int n,
                                          int step, int chunks, int need_dx, proxcl_error *err)
{
    px_device *dev = &net->dev;
    px_param *w = L->weight;
    const int p = L->ho * L->wo;
    for (int i = chunks - 1; i >= 0; --i) {
        int n0 = i * step, nc = n - n0 < step ? n - n0 : step;
        if (!cols_held(net, e, n0, nc)) PX_TRY(im2col(net, e, b, L, b->x_kept, n0, nc, n, b->cols, err));
        PX_TRY(col_block(net, dy, b->yc, L->out, nc * p, n * p, n0 * p, 0, err));
        if (i == chunks - 1) {
            PX_TRY(px_sddmm(dev, w->nnz, nc * p, w->ai, w->aj, w->idx16, b->yc, b->cols, w->grad, err));
        } else {
            PX_TRY(slot(net, &b->part, (size_t)w->nnz * 4, err));
            PX_TRY(px_sddmm(dev, w->nnz, nc * p, w->ai, w->aj, w->idx16, b->yc, b->cols, b->part, err));
            px_arg args[] = {PX_I(w->nnz), PX_M(w->grad), PX_M(b->part)};
            PX_TRY(px_nn_each(dev, "add_into", (size_t)w->nnz, args, 3, err));
        }
        if (need_dx) {
            net->cols_owner = -1;
            PX_TRY(matmul_t(net, w, b->yc, nc * p, b->cols, err));
            cl_mem *g = nc == step ? &b->geo_chunk[0] : &b->geo_chunk[1];
            PX_TRY(geometry(net, g, L, nc, NULL, 0, err));
            px_arg args[] = {PX_M(*g), PX_M(b->cols), PX_M(b->dx), PX_I(n0), PX_I(n)};
            PX_TRY(col2im(dev, L, (size_t)nc * L->in_shape[1], args, err));
        }
    }
    return PROXCL_OK;
}

/* ---- forward ---- */

static size_t fsize(const px_layer *L, int n, int out)   /* floats of a batch of n of the layer's in/out shape */
{
    const int *s = out ? L->out_shape : L->in_shape;
    int rank = out ? L->out_rank : L->in_rank;
    size_t v = (size_t)n;
    for (int i = 0; i < rank; ++i) v *= (size_t)s[i];
    return v;
}

static uint32_t mix32(uint64_t x)
{
    uint32_t v = (uint32_t)x;
    v ^= v >> 16;
    v *= 0x7FEB352Du;
    v ^= v >> 15;
    v *= 0x846CA68Bu;
    v ^= v >> 16;
    return v;
}

static proxcl_status dropout_apply(px_net *net, px_layer *L, cl_mem x, cl_mem y, size_t count, proxcl_error *err)
{
    px_arg args[] = {PX_I(count), PX_M(x), PX_M(y), PX_U(L->keys[0]), PX_U(L->keys[1]), PX_F(L->p),
                     PX_F(1.0 / (1.0 - L->p))};
    return px_nn_each(&net->dev, "dropout", count, args, 7, err);
}

/* Conv2d.direct_ok, the layer followed by pool (or NULL) */
static int direct_ok(const px_net *net, const px_layer *L, const px_layer *pool)
{
    const px_param *w = L->weight;
    double cells = (double)w->rows * w->cols;
    double density = cells ? w->nnz / cells : 0.0;
    if (!(w->csr && density <= PX_DIRECT_MAX_DENSITY && L->in_shape[0] < 32768 && L->kh < 256 && L->kw < 256
          && L->wo <= 64))
        return 0;
    int32_t g[21];
    geometry_values(L, 1, pool, 1, g);
    return px_conv_pool_fits(&net->dev, g, w->row_max);
}

static proxcl_status layer_forward(px_net *net, px_ws *w, int e, cl_mem x, int train, int keep, cl_mem *out,
                                   proxcl_error *err)
{
    px_layer *L = &net->layers[net->exec[e]];
    px_lbuf *b = &w->lb[e];
    px_device *dev = &net->dev;
    const int n = w->n;
    size_t ysize = fsize(L, n, 1) * 4;
    switch (L->kind) {
    case L_LINEAR:
        PX_TRY(slot(net, &b->y, ysize, err));
        PX_TRY(matmul(net, L->weight, x, n, L->bias, L->relu, b->y, err));
        if (keep) { b->x_kept = x; b->y_kept = b->y; }
        *out = b->y;
        return PROXCL_OK;
    case L_CONV: {
        cl_mem cols = x;
        const int c = L->in_shape[0], ncols = n * L->ho * L->wo;
        int step, chunks = conv_chunks(net, L, n, &step);
        PX_TRY(slot(net, &b->y, ysize, err));
        if (chunks > 1) {
            PX_TRY(conv_forward_chunks(net, e, b, L, x, n, step, chunks, err));
            if (keep) { b->x_kept = x; b->cols_kept = b->cols; b->y_kept = b->y; }
            *out = b->y;
            return PROXCL_OK;
        }
        if (!L->pointwise) {
            PX_TRY(slot(net, &b->cols, (size_t)c * L->kh * L->kw * ncols * 4, err));
            PX_TRY(im2col(net, e, b, L, x, 0, n, n, b->cols, err));
            cols = b->cols;
        }
        if (L->weight->csr)
            PX_TRY(px_spmm(dev, L->weight->rows, L->weight->cols, L->weight->ap, L->weight->aj, L->weight->idx16,
                           L->weight->data, NULL, &L->weight->pieces[0],
                           cols, ncols, L->bias ? L->bias->data : NULL, L->relu, b->y, err));
        else
            PX_TRY(px_gemm(dev, L->weight->data, cols, b->y, L->weight->rows, ncols, L->weight->cols, 0,
                           L->bias ? L->bias->data : NULL, L->relu, err));
        if (keep) { b->x_kept = x; b->cols_kept = cols; b->y_kept = b->y; }
        *out = b->y;
        return PROXCL_OK;
    }
    case L_POOL: {
        PX_TRY(slot(net, &b->y, ysize, err));
        PX_TRY(geometry(net, &b->geo, L, n, NULL, 0, err));
        if (keep) PX_TRY(slot(net, &b->idx, ysize, err));
        px_arg args[] = {PX_M(b->geo), PX_M(x), PX_M(b->y), PX_M(keep ? b->idx : NULL), PX_I(L->relu)};
        PX_TRY(px_nn_row_pieces(dev, "maxpool_fwd", (size_t)n * L->ho, (size_t)L->in_shape[0], L->wo,
                                1 + L->kh * (1 + L->kw), 0, args, 5, err));
        if (keep) b->y_kept = b->y;
        *out = b->y;
        return PROXCL_OK;
    }
    case L_RELU: {
        PX_TRY(slot(net, &b->y, ysize, err));
        size_t count = fsize(L, n, 0);
        px_arg args[] = {PX_I(count), PX_M(x), PX_M(b->y)};
        PX_TRY(px_nn_each(dev, "relu_fwd", count, args, 3, err));
        if (keep) b->y_kept = b->y;
        *out = b->y;
        return PROXCL_OK;
    }
    case L_FLATTEN: {
        int c = L->in_shape[0], hw = L->in_rank == 3 ? L->in_shape[1] * L->in_shape[2] : 1;
        if (L->in_rank == 1 || hw == 1) { *out = x; return PROXCL_OK; }
        PX_TRY(slot(net, &b->y, ysize, err));
        int dims[3] = {c, hw, n}, strides[3] = {n * hw, 1, hw};
        PX_TRY(px_permute3(dev, x, b->y, dims, strides, err));
        *out = b->y;
        return PROXCL_OK;
    }
    default: {                                            /* dropout */
        L->active = train && L->p > 0.0;
        if (!L->active) { *out = x; return PROXCL_OK; }
        uint64_t s = L->seed, step = L->step++;
        L->keys[0] = mix32(mix32(s & 0xFFFFFFFFu) ^ mix32((s >> 32) + 0x68E31DA4u) ^ mix32((uint64_t)L->dropout_index + 0x1B56C4E9u));
        L->keys[1] = mix32((uint64_t)mix32(step & 0xFFFFFFFFu) + 0x9E3779B9ull * ((step >> 32) + 1));
        PX_TRY(slot(net, &b->y, ysize, err));
        PX_TRY(dropout_apply(net, L, x, b->y, fsize(L, n, 0), err));
        *out = b->y;
        return PROXCL_OK;
    }
    }
}

/* Inference with a sparse CSR convolution: no im2col; the pooling and flatten after it run in the
 * same kernel (Model._plan_fusion).  Returns the index in exec of the next layer to run, or 0 when
 * the layer cannot run this way. */
static proxcl_status direct_conv(px_net *net, px_ws *w, int e, cl_mem x, cl_mem *out, int *next, proxcl_error *err)
{
    px_layer *L = &net->layers[net->exec[e]];
    *next = 0;
    if (L->kind != L_CONV) return PROXCL_OK;
    px_layer *pool = e + 1 < net->nexec && net->layers[net->exec[e + 1]].kind == L_POOL ? &net->layers[net->exec[e + 1]] : NULL;
    if (!direct_ok(net, L, pool)) return PROXCL_OK;
    int j = e + 1 + (pool != NULL);
    int flat = j < net->nexec && net->layers[net->exec[j]].kind == L_FLATTEN;
    px_lbuf *b = &w->lb[e];
    const int n = w->n, o = L->out, hp = pool ? pool->ho : L->ho, wp = pool ? pool->wo : L->wo;
    int relu = L->relu || (pool && pool->relu);
    PX_TRY(slot(net, &b->y_direct, (size_t)o * hp * wp * n * 4, err));
    PX_TRY(geometry(net, &b->geo_direct, L, n, pool, 1, err));
    const px_param *wt = L->weight;
    px_arg args[] = {PX_M(b->geo_direct), PX_M(wt->ap), PX_M(wt->taps), PX_M(wt->data),
                     PX_M(L->bias ? L->bias->data : NULL), PX_M(x), PX_M(b->y_direct), PX_I(relu), PX_I(flat)};
    PX_TRY(px_nn_rows(&net->dev, "csr_conv_pool", (size_t)n * hp, (size_t)o, args, 9, err));
    *out = b->y_direct;
    *next = j + flat;
    return PROXCL_OK;
}

/* Host batch [n, input] -> the internal layout on the device (Model._upload). */
static proxcl_status upload_input(px_net *net, px_ws *w, const float *x, cl_mem *out, proxcl_error *err)
{
    const int n = w->n, *s = net->input_shape;
    size_t count = (size_t)n * s[0] * (net->input_rank == 3 ? (size_t)s[1] * s[2] : 1);
    PX_TRY(slot(net, &w->input, count * 4, err));
    if (net->input_rank == 3 && s[0] == 1) {
        PX_TRY(px_upload(&net->dev, w->input, x, count * 4, err));
        *out = w->input;
        return PROXCL_OK;
    }
    PX_TRY(slot(net, &w->raw, count * 4, err));
    PX_TRY(px_upload(&net->dev, w->raw, x, count * 4, err));
    if (net->input_rank == 3) {
        int hw = s[1] * s[2], dims[3] = {s[0], n, hw}, strides[3] = {hw, s[0] * hw, 1};
        PX_TRY(px_permute3(&net->dev, w->raw, w->input, dims, strides, err));
    } else {
        int dims[3] = {1, s[0], n}, strides[3] = {0, 1, s[0]};
        PX_TRY(px_permute3(&net->dev, w->raw, w->input, dims, strides, err));
    }
    *out = w->input;
    return PROXCL_OK;
}

static proxcl_status run_forward(px_net *net, px_ws *w, cl_mem x, int train, int keep, cl_mem *z, proxcl_error *err)
{
    for (int e = 0; e < net->nexec;) {
        if (!keep) {
            int next;
            PX_TRY(direct_conv(net, w, e, x, &x, &next, err));
            if (next) { e = next; continue; }
        }
        PX_TRY(layer_forward(net, w, e, x, train, keep, &x, err));
        ++e;
    }
    *z = x;
    return PROXCL_OK;
}

/* ---- backward (CSR weights) ---- */

static proxcl_status mask_and_bias_grad(px_net *net, const px_layer *L, cl_mem dy, cl_mem y, int m, int cols,
                                        proxcl_error *err)
{
    if (!L->bias && !L->relu) return PROXCL_OK;
    return px_bias_grad(&net->dev, m, cols, dy, y, L->relu, L->bias ? L->bias->grad : NULL, err);
}

static proxcl_status layer_backward(px_net *net, px_ws *w, int e, cl_mem dy, int need_dx, cl_mem *dx,
                                    proxcl_error *err)
{
    px_layer *L = &net->layers[net->exec[e]];
    px_lbuf *b = &w->lb[e];
    px_device *dev = &net->dev;
    const int n = w->n;
    *dx = NULL;
    switch (L->kind) {
    case L_LINEAR:
        PX_TRY(mask_and_bias_grad(net, L, dy, b->y_kept, L->out, n, err));
        PX_TRY(px_sddmm(dev, L->weight->nnz, n, L->weight->ai, L->weight->aj, L->weight->idx16, dy, b->x_kept,
                        L->weight->grad, err));
        if (!need_dx) return PROXCL_OK;
        PX_TRY(slot(net, &b->dx, fsize(L, n, 0) * 4, err));
        PX_TRY(matmul_t(net, L->weight, dy, n, b->dx, err));
        *dx = b->dx;
        return PROXCL_OK;
    case L_CONV: {
        const int cols = n * L->ho * L->wo;
        PX_TRY(mask_and_bias_grad(net, L, dy, b->y_kept, L->out, cols, err));
        int step, chunks = conv_chunks(net, L, n, &step);
        if (chunks > 1) {
            if (need_dx) PX_TRY(slot(net, &b->dx, fsize(L, n, 0) * 4, err));
            PX_TRY(conv_backward_chunks(net, e, b, L, dy, n, step, chunks, need_dx, err));
            *dx = need_dx ? b->dx : NULL;
            return PROXCL_OK;
        }
        if (!L->pointwise && !cols_held(net, e, 0, n))      /* the Python runtime's scratch was overwritten */
            PX_TRY(im2col(net, e, b, L, b->x_kept, 0, n, n, b->cols, err));
        PX_TRY(px_sddmm(dev, L->weight->nnz, cols, L->weight->ai, L->weight->aj, L->weight->idx16, dy, b->cols_kept,
                        L->weight->grad, err));
        if (!need_dx) return PROXCL_OK;
        PX_TRY(slot(net, &b->dx, fsize(L, n, 0) * 4, err));
        if (L->pointwise) {
            PX_TRY(matmul_t(net, L->weight, dy, cols, b->dx, err));
        } else {
            net->cols_owner = -1;                          /* dcols goes over the scratch there */
            PX_TRY(slot(net, &b->dcols, (size_t)L->weight->cols * cols * 4, err));
            PX_TRY(matmul_t(net, L->weight, dy, cols, b->dcols, err));
            px_arg args[] = {PX_M(b->geo), PX_M(b->dcols), PX_M(b->dx), PX_I(0), PX_I(n)};
            PX_TRY(col2im(dev, L, (size_t)n * L->in_shape[1], args, err));
        }
        *dx = b->dx;
        return PROXCL_OK;
    }
    case L_POOL: {
        if (!need_dx) return PROXCL_OK;
        PX_TRY(slot(net, &b->dx, fsize(L, n, 0) * 4, err));
        px_arg args[] = {PX_M(b->geo), PX_M(dy), PX_M(b->idx), PX_M(b->y_kept), PX_I(L->relu), PX_M(b->dx)};
        const int ih = L->in_shape[1], iw = L->in_shape[2];
        const int last = ih - (L->ho - 1) * L->sh + L->ph, right = iw - (L->wo * L->sw - L->pw);
        const int band = last > L->sh ? last : L->sh, extra = right > 0 ? right : 0;
        const int per_col = band * L->sw + 1, fixed = band * (extra + 1);
        /* windows that do not overlap: winners into zeroed bands, where a band's loops fit the budget */
        if (L->kh <= L->sh && L->kw <= L->sw && dev->t->loop_max - fixed >= per_col) {
            PX_TRY(px_nn_row_pieces(dev, "maxpool_bwd_tiles", (size_t)n * L->ho, (size_t)L->in_shape[0], L->wo,
                                    per_col, fixed, args, 6, err));
        } else {
            const int wy = (L->kh - 1) / L->sh + 1, wx = (L->kw - 1) / L->sw + 1;   /* windows holding a pixel */
            PX_TRY(px_nn_row_pieces(dev, "maxpool_bwd", (size_t)n * ih, (size_t)L->in_shape[0], iw, 1 + wy * (1 + wx),
                                    0, args, 6, err));
        }
        *dx = b->dx;
        return PROXCL_OK;
    }
    case L_RELU: {
        if (!need_dx) return PROXCL_OK;
        size_t count = fsize(L, n, 0);
        px_arg args[] = {PX_I(count), PX_M(b->y_kept), PX_M(dy), PX_M(dy)};
        PX_TRY(px_nn_each(dev, "relu_bwd", count, args, 4, err));
        *dx = dy;
        return PROXCL_OK;
    }
    case L_FLATTEN: {
        if (!need_dx) return PROXCL_OK;
        int c = L->in_shape[0], hw = L->in_rank == 3 ? L->in_shape[1] * L->in_shape[2] : 1;
        if (L->in_rank == 1 || hw == 1) { *dx = dy; return PROXCL_OK; }
        PX_TRY(slot(net, &b->dx, fsize(L, n, 0) * 4, err));
        int dims[3] = {c, n, hw}, strides[3] = {hw * n, 1, n};
        PX_TRY(px_permute3(dev, dy, b->dx, dims, strides, err));
        *dx = b->dx;
        return PROXCL_OK;
    }
    default:                                              /* dropout: the forward's mask again */
        if (!need_dx) return PROXCL_OK;
        if (L->active) PX_TRY(dropout_apply(net, L, dy, dy, fsize(L, n, 0), err));
        *dx = dy;
        return PROXCL_OK;
    }
}

/* ---- passes ---- */

static proxcl_status read_kn(px_net *net, cl_mem z, int n, float *out, proxcl_error *err)
{
    const int k = net->num_classes;
    float *kn = px_alloc((size_t)k * n * sizeof(float), err);
    if (!kn) return PROXCL_ERR_MEMORY;
    proxcl_status s = px_download(&net->dev, z, kn, (size_t)k * n * 4, err);
    for (int i = 0; s == PROXCL_OK && i < n; ++i)             /* [K, N] -> [N, K] */
        for (int c = 0; c < k; ++c) out[(size_t)i * k + c] = kn[(size_t)c * n + i];
    free(kn);
    return s;
}

proxcl_status px_net_forward(px_net *net, const float *x, int n, float *logits, float *probs, proxcl_error *err)
{
    px_ws *w;
    cl_mem xd, z;
    const int k = net->num_classes;
    PX_TRY(workspace(net, n, &w, err));
    PX_TRY(upload_input(net, w, x, &xd, err));
    PX_TRY(run_forward(net, w, xd, 0, 0, &z, err));
    if (logits) PX_TRY(read_kn(net, z, n, logits, err));
    if (!probs) return PROXCL_OK;
    PX_TRY(slot(net, &w->probs, (size_t)k * n * 4, err));
    PX_TRY(px_softmax_xent(&net->dev, k, n, z, NULL, NULL, 1.0f, w->probs, NULL, err));
    return read_kn(net, w->probs, n, probs, err);
}

/* One update of every parameter, in model order: the unpenalised SGD or Adam of debiasing (the
 * proximal kernels with threshold 0), as Optimizer.step. */
static proxcl_status update(px_net *net, double lr, proxcl_error *err)
{
    for (int i = 0; i < net->nparams; ++i) {
        px_param *p = net->params[i];
        p->steps += 1;
        if (!p->stored) continue;
        if (net->adam) {
            double rc1 = 1.0 / (1.0 - pow(net->beta1, (double)p->steps));
            double rc2 = 1.0 / (1.0 - pow(net->beta2, (double)p->steps));
            PX_TRY(px_prox_adam(&net->dev, p->stored, p->data, p->grad, p->state[0], p->state[1], (float)lr,
                                (float)net->beta1, (float)net->beta2, (float)rc1, (float)rc2, (float)net->eps,
                                0.0f, err));
        } else {
            PX_TRY(px_prox_sgd(&net->dev, p->stored, p->data, p->grad, p->state[0], (float)lr, (float)net->momentum,
                               0.0f, err));
        }
    }
    return PROXCL_OK;
}

proxcl_status px_net_loss_step(px_net *net, const float *x, const int32_t *labels, int n, int train, double lr,
                               double *loss_sum, int *correct, proxcl_error *err)
{
    px_ws *w;
    cl_mem xd, z;
    const int k = net->num_classes, groups = px_softmax_groups(&net->dev, n);
    PX_TRY(workspace(net, n, &w, err));
    PX_TRY(upload_input(net, w, x, &xd, err));
    PX_TRY(slot(net, &w->labels, (size_t)n * 4, err));
    PX_TRY(px_upload(&net->dev, w->labels, labels, (size_t)n * 4, err));
    PX_TRY(run_forward(net, w, xd, train, train, &z, err));
    PX_TRY(slot(net, &w->partial, (size_t)groups * 2 * 4, err));
    if (train) PX_TRY(slot(net, &w->dz, (size_t)k * n * 4, err));
    PX_TRY(px_softmax_xent(&net->dev, k, n, z, w->labels, train ? w->dz : NULL, (float)(1.0 / n), NULL, w->partial,
                           err));
    if (train) {
        cl_mem d = w->dz;
        for (int e = net->nexec - 1; e >= net->first_param; --e) PX_TRY(layer_backward(net, w, e, d, e > net->first_param, &d, err));
    }
    float *part = px_alloc((size_t)groups * 2 * sizeof(float), err);
    if (!part) return PROXCL_ERR_MEMORY;
    proxcl_status s = px_download(&net->dev, w->partial, part, (size_t)groups * 2 * 4, err);
    double loss = 0.0, ok = 0.0;
    for (int g = 0; g < groups; ++g) {
        loss += part[2 * g];
        ok += part[2 * g + 1];
    }
    free(part);
    if (s != PROXCL_OK) return s;
    if (loss_sum) *loss_sum = loss;
    if (correct) *correct = (int)lround(ok);
    if (train && !isfinite(loss))
        return px_fail(err, PROXCL_ERR_NUMERIC, "the loss became %g; try a smaller learning rate", loss);
    return train ? update(net, lr, err) : PROXCL_OK;
}

/* every weight becomes CSR on its nonzeros (CSRMatrix.from_dense with threshold 0) */
static proxcl_status to_csr(px_net *net, px_param *p, const px_layer *L, proxcl_error *err)
{
    int nnz = 0;
    for (int q = 0; q < p->size; ++q) nnz += p->values[q] > 0.0f || p->values[q] < 0.0f;
    int32_t *ap = px_alloc((size_t)(p->rows + 1) * 4, err), *aj = px_alloc((size_t)nnz * 4, err);
    float *ax = px_alloc((size_t)nnz * 4, err);
    if (!ap || !aj || !ax) {
        free(ap); free(aj); free(ax);
        return PROXCL_ERR_MEMORY;
    }
    int at = 0;
    for (int i = 0; i < p->rows; ++i) {
        for (int j = 0; j < p->cols; ++j) {
            float v = p->values[(size_t)i * p->cols + j];
            if (v > 0.0f || v < 0.0f) { aj[at] = j; ax[at++] = v; }
        }
        ap[i + 1] = at;
    }
    release_param(p);
    free(p->values);
    p->indptr = ap;
    p->indices = aj;
    p->values = ax;
    p->csr = 1;
    p->nnz = nnz;
    return upload_param(&net->dev, p, L, err);
}

proxcl_status px_net_train_begin(px_net *net, proxcl_error *err)
{
    for (int i = 0; i < net->nlayers; ++i) {
        px_layer *L = &net->layers[i];
        if (L->weight && !L->weight->csr) {
            /* the values on the device are the current ones */
            PX_TRY(px_download(&net->dev, L->weight->data, L->weight->values, (size_t)L->weight->size * 4, err));
            PX_TRY(to_csr(net, L->weight, L, err));
        }
    }
    for (int i = 0; i < PX_WORKSPACES; ++i) free_ws(net, &net->ws[i]);
    for (int i = 0; i < net->nparams; ++i) {
        px_param *p = net->params[i];
        px_release(&p->state[0]);
        px_release(&p->state[1]);
        p->steps = 0;
        int slots = net->adam ? 2 : net->momentum != 0.0;
        for (int s = 0; s < slots; ++s) {
            PX_TRY(px_buffer(&net->dev, (size_t)p->stored * 4, &p->state[s], err));
            float *zeros = px_alloc((size_t)p->stored * 4, err);
            if (!zeros) return PROXCL_ERR_MEMORY;
            proxcl_status st = px_upload(&net->dev, p->state[s], zeros, (size_t)p->stored * 4, err);
            free(zeros);
            PX_TRY(st);
        }
    }
    net->training = 1;
    return PROXCL_OK;
}

void px_net_set_seed(px_net *net, uint64_t seed)
{
    for (int i = 0; i < net->nlayers; ++i)
        if (net->layers[i].kind == L_DROPOUT) {
            net->layers[i].seed = seed;
            net->layers[i].step = 0;
        }
}

/* The bytes of a weight's CSR arrays and of its dense array in a model file: the writer keeps CSR
 * only when that is smaller (proxcl.modelfile.smaller_form). */
static int csr_is_smaller(const px_param *p, int half)
{
    long long v = half ? 2 : 4, i = p->cols <= 65536 ? 2 : 4;
    return 4LL * (p->rows + 1) + (i + v) * p->nnz < v * p->rows * p->cols;
}

proxcl_status px_net_tensors(px_net *net, int half, px_tensor **out, int *count, proxcl_error *err)
{
    px_tensor *t = px_alloc((size_t)net->nparams * sizeof *t, err);
    if (!t) return PROXCL_ERR_MEMORY;
    *out = t;
    *count = net->nparams;
    for (int i = 0; i < net->nparams; ++i) {
        px_param *p = net->params[i];
        PX_TRY(px_download(&net->dev, p->data, p->values, (size_t)p->stored * 4, err));
        t[i].name = p->name;
        t[i].half = p->half;
        t[i].values = p->values;
        t[i].count = p->stored;
        t[i].rank = p->rank;
        for (int d = 0; d < p->rank; ++d) t[i].shape[d] = p->shape[d];
        if (!p->csr) continue;
        if (!csr_is_smaller(p, half)) {           /* dense, in the PyTorch shape */
            float *dense = px_alloc((size_t)p->size * sizeof(float), err);
            if (!dense) return PROXCL_ERR_MEMORY;
            for (int r = 0; r < p->rows; ++r)
                for (int q = p->indptr[r]; q < p->indptr[r + 1]; ++q) dense[(size_t)r * p->cols + p->indices[q]] = p->values[q];
            t[i].values = dense;
            t[i].owned = 1;
            t[i].count = p->size;
            continue;
        }
        t[i].csr = 1;
        t[i].rank = 2;
        t[i].shape[0] = p->rows;
        t[i].shape[1] = p->cols;
        t[i].nnz = p->nnz;
        t[i].indptr = p->indptr;
        t[i].indices = p->indices;
    }
    return PROXCL_OK;
}

void px_net_tensors_free(px_tensor *t, int count)
{
    for (int i = 0; t && i < count; ++i)
        if (t[i].owned) free(t[i].values);
    free(t);
}
