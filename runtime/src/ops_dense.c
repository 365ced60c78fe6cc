/* The launches of kernels/dense.cl, as src/proxcl/ops/dense.py makes them: the GEMM of a dense
 * weight (CPU form gemm_blk, GPU form gemm with split-K and gemm_sum_slices). */
#include "px.h"

#define FILE_ "dense.cl"

/* (slices, k per slice) of ops.dense.split_k */
static void split_k(long items, int K, int *slices, int *ks)
{
    const long target = PX_SPLIT_K_TARGET, min_slice = PX_SPLIT_K_MIN_SLICE;
    if (items >= target || K < 2 * min_slice) {
        *slices = 1;
        *ks = K;
        return;
    }
    long s = (target + items - 1) / items;
    if (s > K / min_slice) s = K / min_slice;
    if (s > 256) s = 256;
    long k = (K + s - 1) / s;
    *ks = (int)k;
    *slices = (int)((K + k - 1) / k);
}

static proxcl_status gemm_blocks(px_device *dev, cl_mem a, cl_mem b, cl_mem out, int M, int N, int K, int trans_a,
                                 cl_mem bias, int relu, proxcl_error *err)
{
    const px_tuning *t = dev->t;
    const int vec = t->gemm_vec, rm = t->gemm_rm, nv = t->gemm_nv, lx = t->gemm_rows;
    px_define defs[] = {{"VEC", vec}, {"RM", rm}, {"NV", nv}, {"LX", lx}, {"TRANS_A", trans_a}};
    px_kernel *k;
    PX_TRY(px_kernel_get(dev, FILE_, "gemm_blk", defs, 5, &k, err));
    size_t g[2] = {(size_t)((M + rm - 1) / rm), (size_t)((N + nv * vec - 1) / (nv * vec))}, l[2] = {(size_t)lx, 1};
    px_arg args[] = {PX_I(M), PX_I(N), PX_I(K), PX_M(a), PX_M(b), PX_M(out), PX_M(bias), PX_I(relu)};
    return px_launch(dev, k, 2, g, l, args, 8, err);
}

static proxcl_status gemm_columns(px_device *dev, cl_mem a, cl_mem b, cl_mem out, int M, int N, int K, int trans_a,
                                  cl_mem bias, int relu, proxcl_error *err)
{
    const px_tuning *t = dev->t;
    const int vec = t->gemm_vec, rm = t->gemm_rm, lx = t->gemm_local[0], ly = t->gemm_local[1];
    px_define defs[] = {{"VEC", vec}, {"RM", rm}, {"LX", lx}, {"LY", ly}, {"TRANS_A", trans_a},
                        {"PX_ALIGNED", t->aligned && N % vec == 0}};
    px_kernel *k;
    PX_TRY(px_kernel_get(dev, FILE_, "gemm", defs, 6, &k, err));
    const int gx = (N + vec - 1) / vec, gy = (M + rm - 1) / rm;
    int slices, ks;
    split_k((long)gx * gy, K, &slices, &ks);
    size_t l[3] = {(size_t)lx, (size_t)ly, 1};
    if (slices == 1) {
        size_t g[3] = {(size_t)gx, (size_t)gy, 1};
        px_arg args[] = {PX_I(M), PX_I(N), PX_I(K), PX_M(a), PX_M(b), PX_M(out), PX_M(bias), PX_I(relu), PX_I(K)};
        return px_launch(dev, k, 3, g, l, args, 9, err);
    }
    cl_mem part;
    PX_TRY(px_buffer(dev, (size_t)slices * M * N * sizeof(float), &part, err));
    size_t g[3] = {(size_t)gx, (size_t)gy, (size_t)slices};
    px_arg args[] = {PX_I(M), PX_I(N), PX_I(K), PX_M(a), PX_M(b), PX_M(part), PX_M(NULL), PX_I(0), PX_I(ks)};
    proxcl_status s = px_launch(dev, k, 3, g, l, args, 9, err);
    px_kernel *sum;
    if (s == PROXCL_OK) s = px_kernel_get(dev, FILE_, "gemm_sum_slices", NULL, 0, &sum, err);
    if (s == PROXCL_OK) {
        size_t g1 = (size_t)M * N, l1 = (size_t)t->ew_local;
        px_arg a2[] = {PX_I(M * N), PX_I(N), PX_I(slices), PX_M(part), PX_M(out), PX_M(bias), PX_I(relu)};
        s = px_launch(dev, sum, 1, &g1, &l1, a2, 7, err);
    }
    px_forget_args(dev);
    px_release(&part);     /* freed by OpenCL once the queued launches that use it have run */
    return s;
}

/* C[M, N] = op(a)[M, K] b[K, N] (+ bias) (ReLU): a is [M, K], or [K, M] with trans_a. */
proxcl_status px_gemm(px_device *dev, cl_mem a, cl_mem b, cl_mem out, int M, int N, int K, int trans_a,
                      cl_mem bias, int relu, proxcl_error *err)
{
    if (M == 0 || N == 0) return PROXCL_OK;
    if (K == 0) return px_fail(err, PROXCL_ERR_MODEL, "a product with an empty inner dimension");
    if (dev->t->gemm_nv) return gemm_blocks(dev, a, b, out, M, N, K, trans_a, bias, relu, err);
    return gemm_columns(dev, a, b, out, M, N, K, trans_a, bias, relu, err);
}
