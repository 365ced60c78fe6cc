/* The launches of kernels/nn.cl, as src/proxcl/ops/nn.py makes them: one program per kernel form
 * (defines VEC, RL, XL), and one built with PX_SPLIT for launches that cut rows into pieces or
 * slices; window kernels give a work-item one image row (or a piece of it), element-wise ones one
 * value. */
#include "px.h"

#define FILE_ "nn.cl"

static proxcl_status nn_kernel(px_device *dev, const char *name, int split, px_kernel **k, proxcl_error *err)
{
    const px_tuning *t = dev->t;
    px_define defs[] = {{"VEC", t->vec}, {"RL", t->nn_reduce}, {"XL", t->nn_softmax}, {"PX_SPLIT", 1}};
    return px_kernel_get(dev, FILE_, name, defs, split ? 4 : 3, k, err);
}

/* global (rows, cols), local (nn_rows, 1): col_block, csr_conv_pool */
proxcl_status px_nn_rows(px_device *dev, const char *name, size_t rows, size_t cols, const px_arg *args,
                         int nargs, proxcl_error *err)
{
    px_kernel *k;
    PX_TRY(nn_kernel(dev, name, 0, &k, err));
    size_t g[2] = {rows, cols}, l[2] = {(size_t)dev->t->nn_rows, 1};
    return px_launch(dev, k, 2, g, l, args, nargs, err);
}

/* ops.nn._rows: im2col, col2im, maxpool_fwd/bwd, global (rows, cols) or (rows, cols, pieces) */
proxcl_status px_nn_row_pieces(px_device *dev, const char *name, size_t rows, size_t cols, int width, int per_col,
                               int fixed, const px_arg *args, int nargs, proxcl_error *err)
{
    const int room = (dev->t->loop_max - fixed) / per_col;
    if (room < 1)
        return px_fail(err, PROXCL_ERR_INPUT, "%s: a window this large needs more than %d loop iterations per "
                       "work-item on this device", name, dev->t->loop_max);
    const int pieces = (width + room - 1) / room;
    if (pieces <= 1) return px_nn_rows(dev, name, rows, cols, args, nargs, err);
    px_kernel *k;
    PX_TRY(nn_kernel(dev, name, 1, &k, err));
    size_t g[3] = {rows, cols, (size_t)pieces}, l[3] = {(size_t)dev->t->nn_rows, 1, 1};
    return px_launch(dev, k, 3, g, l, args, nargs, err);
}

int px_conv_pool_fits(const px_device *dev, const int32_t *g, int row_max)
{
    const long long wo = g[11], qh = g[12], qw = g[13], wp = g[19];
    const long long per_row = wo + (long long)row_max * (1 + wo) + wp * (1 + qw);
    return 2 * wp + qh * (1 + per_row) <= dev->t->loop_max;
}

/* global (n,), local (ew_local,): relu_fwd, relu_bwd, dropout, permute3, add_into */
proxcl_status px_nn_each(px_device *dev, const char *name, size_t n, const px_arg *args, int nargs,
                         proxcl_error *err)
{
    px_kernel *k;
    PX_TRY(nn_kernel(dev, name, 0, &k, err));
    size_t l = (size_t)dev->t->ew_local;
    return px_launch(dev, k, 1, &n, &l, args, nargs, err);
}

/* Out[i0, i1, i2] = In[i0*S0 + i1*S1 + i2*S2], Out of dims D0 x D1 x D2. */
proxcl_status px_permute3(px_device *dev, cl_mem src, cl_mem dst, const int dims[3], const int strides[3],
                          proxcl_error *err)
{
    px_arg args[] = {PX_I(dims[0]), PX_I(dims[1]), PX_I(dims[2]), PX_I(strides[0]), PX_I(strides[1]),
                     PX_I(strides[2]), PX_M(src), PX_M(dst)};
    return px_nn_each(dev, "permute3", (size_t)dims[0] * dims[1] * dims[2], args, 8, err);
}

/* With relu, dy[m, n] masked by y > 0 in place; db[m] = row sums of dy (db NULL: the mask only).
 * Rows longer than a work-group's loop budget in column slices, whose partial sums are added in
 * order (ops.nn.bias_grad). */
proxcl_status px_bias_grad(px_device *dev, int m, int n, cl_mem dy, cl_mem y, int relu, cl_mem db,
                           proxcl_error *err)
{
    const px_tuning *t = dev->t;
    const int rl = t->nn_reduce;
    const int slice_max = (t->loop_max - 16) * rl / 2 / t->vec * t->vec;   /* both paths' loops, the reduction */
    const int slices = (n + slice_max - 1) / slice_max;
    px_kernel *k;
    if (slices <= 1) {
        PX_TRY(nn_kernel(dev, "bias_grad", 0, &k, err));
        size_t g = (size_t)m * rl, l = (size_t)rl;
        px_arg args[] = {PX_I(m), PX_I(n), PX_M(dy), PX_M(relu ? y : NULL), PX_I(relu), PX_M(db)};
        return px_launch(dev, k, 1, &g, &l, args, 6, err);
    }
    PX_TRY(nn_kernel(dev, "bias_grad", 1, &k, err));
    cl_mem part = NULL;
    if (db) PX_TRY(px_buffer(dev, (size_t)slices * m * sizeof(float), &part, err));
    size_t g[2] = {(size_t)m * rl, (size_t)slices}, l[2] = {(size_t)rl, 1};
    px_arg args[] = {PX_I(m), PX_I(n), PX_M(dy), PX_M(relu ? y : NULL), PX_I(relu), PX_M(part)};
    proxcl_status s = px_launch(dev, k, 2, g, l, args, 6, err);
    if (s == PROXCL_OK && db) s = px_sum_slices(dev, part, slices, db, m, 1, NULL, 0, err);
    px_forget_args(dev);
    px_release(&part);
    return s;
}

/* The number of (loss, correct) partial sums softmax_xent writes for a batch of n. */
int px_softmax_groups(const px_device *dev, int n)
{
    return (n + dev->t->nn_softmax - 1) / dev->t->nn_softmax;
}

/* ops.nn.softmax_xent: one launch, or for more classes than a work-item's loops allow, chunks of
 * classes in two launches (softmax_chunk_stats, softmax_xent_chunks) */
proxcl_status px_softmax_xent(px_device *dev, int k, int n, cl_mem z, cl_mem labels, cl_mem dz, float gscale,
                              cl_mem probs, cl_mem partial, proxcl_error *err)
{
    const px_tuning *t = dev->t;
    const size_t xl = (size_t)t->nn_softmax;
    px_kernel *kern;
    cl_mem part = labels ? partial : NULL;
    if (3LL * k + 16 <= t->loop_max) {
        PX_TRY(nn_kernel(dev, "softmax_xent", 0, &kern, err));
        size_t g = (size_t)n;
        px_arg args[] = {PX_I(k), PX_I(n), PX_M(z), PX_M(labels), PX_M(dz), PX_F(gscale), PX_M(probs), PX_M(part)};
        return px_launch(dev, kern, 1, &g, &xl, args, 8, err);
    }
    const int per = (t->loop_max - 16) / 3, chunks = (k + per - 1) / per;
    if (2 * chunks + per > t->loop_max)
        return px_fail(err, PROXCL_ERR_INPUT, "softmax over %d classes: too many for this device's loop budget", k);
    cl_mem stats;
    PX_TRY(px_buffer(dev, (size_t)chunks * n * 3 * sizeof(float), &stats, err));
    size_t g[2] = {(size_t)n, (size_t)chunks}, l[2] = {xl, 1};
    proxcl_status s = nn_kernel(dev, "softmax_chunk_stats", 0, &kern, err);
    if (s == PROXCL_OK) {
        px_arg args[] = {PX_I(k), PX_I(n), PX_M(z), PX_M(stats)};
        s = px_launch(dev, kern, 2, g, l, args, 4, err);
    }
    if (s == PROXCL_OK) s = nn_kernel(dev, "softmax_xent_chunks", 0, &kern, err);
    if (s == PROXCL_OK) {
        px_arg args[] = {PX_I(k), PX_I(n), PX_M(z), PX_M(labels), PX_M(dz), PX_F(gscale), PX_M(probs), PX_M(part),
                         PX_M(stats)};
        s = px_launch(dev, kern, 2, g, l, args, 9, err);
    }
    px_forget_args(dev);
    px_release(&stats);
    return s;
}
