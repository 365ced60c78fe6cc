/* The launches of kernels/nn.cl, as src/proxcl/ops/nn.py makes them: one program per kernel form
 * (defines VEC, RL, XL); window kernels give a work-item one image row, element-wise ones one
 * value. */
#include "px.h"

#define FILE_ "nn.cl"

static proxcl_status nn_kernel(px_device *dev, const char *name, px_kernel **k, proxcl_error *err)
{
    const px_tuning *t = dev->t;
    px_define defs[] = {{"VEC", t->vec}, {"RL", t->nn_reduce}, {"XL", t->nn_softmax}};
    return px_kernel_get(dev, FILE_, name, defs, 3, k, err);
}

/* global (rows, cols), local (nn_rows, 1): im2col, col2im, maxpool_fwd/bwd, csr_conv_pool */
proxcl_status px_nn_rows(px_device *dev, const char *name, size_t rows, size_t cols, const px_arg *args,
                         int nargs, proxcl_error *err)
{
    px_kernel *k;
    PX_TRY(nn_kernel(dev, name, &k, err));
    size_t g[2] = {rows, cols}, l[2] = {(size_t)dev->t->nn_rows, 1};
    return px_launch(dev, k, 2, g, l, args, nargs, err);
}

/* global (n,), local (ew_local,): relu_fwd, relu_bwd, dropout, permute3 */
proxcl_status px_nn_each(px_device *dev, const char *name, size_t n, const px_arg *args, int nargs,
                         proxcl_error *err)
{
    px_kernel *k;
    PX_TRY(nn_kernel(dev, name, &k, err));
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

/* With relu, dy[m, n] masked by y > 0 in place; db[m] = row sums of dy (db NULL: the mask only). */
proxcl_status px_bias_grad(px_device *dev, int m, int n, cl_mem dy, cl_mem y, int relu, cl_mem db,
                           proxcl_error *err)
{
    px_kernel *k;
    PX_TRY(nn_kernel(dev, "bias_grad", &k, err));
    const int rl = dev->t->nn_reduce;
    size_t g = (size_t)m * rl, l = (size_t)rl;
    px_arg args[] = {PX_I(m), PX_I(n), PX_M(dy), PX_M(relu ? y : NULL), PX_I(relu), PX_M(db)};
    return px_launch(dev, k, 1, &g, &l, args, 6, err);
}

/* The number of (loss, correct) partial sums softmax_xent writes for a batch of n. */
int px_softmax_groups(const px_device *dev, int n)
{
    return (n + dev->t->nn_softmax - 1) / dev->t->nn_softmax;
}

proxcl_status px_softmax_xent(px_device *dev, int k, int n, cl_mem z, cl_mem labels, cl_mem dz, float gscale,
                              cl_mem probs, cl_mem partial, proxcl_error *err)
{
    px_kernel *kern;
    PX_TRY(nn_kernel(dev, "softmax_xent", &kern, err));
    size_t g = (size_t)n, l = (size_t)dev->t->nn_softmax;
    px_arg args[] = {PX_I(k), PX_I(n), PX_M(z), PX_M(labels), PX_M(dz), PX_F(gscale), PX_M(probs),
                     PX_M(labels ? partial : NULL)};
    return px_launch(dev, kern, 1, &g, &l, args, 8, err);
}
