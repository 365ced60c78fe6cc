/* The launches of kernels/dense.cl, as src/proxcl/ops/dense.py makes them: the GEMM of a dense
 * weight (CPU form gemm_blk, GPU form gemm with split-K; both split the inner dimension into slices
 * of at most their loop budget, whose partial products gemm_sum_slices adds in order). */
#include "px.h"

#define FILE_ "dense.cl"

/* (slices, k per slice) of ops.dense.split_k: about PX_SPLIT_K_TARGET work-items where the output
 * has few blocks, and no slice longer than max_slice */
static void split_k(long items, int K, int max_slice, int *slices, int *ks)
{
    const long target = PX_SPLIT_K_TARGET, min_slice = PX_SPLIT_K_MIN_SLICE;
    long s = 1;
    if (items < target && K >= 2 * min_slice) {
        s = (target + items - 1) / items;
        if (s > K / min_slice) s = K / min_slice;
        if (s > 256) s = 256;
    }
    long need = ((long)K + max_slice - 1) / max_slice;
    if (s < need) s = need;
    long k = (K + s - 1) / s;
    *ks = (int)k;
    *slices = (int)((K + k - 1) / k);
}

proxcl_status px_sum_slices(px_device *dev, cl_mem part, int slices, cl_mem out, int size, int cols, cl_mem bias,
                            int relu, proxcl_error *err)
{
    if (slices > dev->t->loop_max)
        return px_fail(err, PROXCL_ERR_INPUT, "a product split into %d slices: more than this device's %d per "
                       "work-item (inner dimension too long)", slices, dev->t->loop_max);
    if (!size) return PROXCL_OK;
    px_kernel *sum;
    PX_TRY(px_kernel_get(dev, FILE_, "gemm_sum_slices", NULL, 0, &sum, err));
    size_t g = (size_t)size, l = (size_t)dev->t->ew_local;
    px_arg args[] = {PX_I(size), PX_I(cols), PX_I(slices), PX_M(part), PX_M(out), PX_M(bias), PX_I(relu)};
    return px_launch(dev, sum, 1, &g, &l, args, 7, err);
}

/* a partial product's buffer, launched into and summed, then released (ops.dense: `part`) */
static proxcl_status sum_and_release(px_device *dev, proxcl_status s, cl_mem *part, int slices, cl_mem out,
                                     int M, int N, cl_mem bias, int relu, proxcl_error *err)
{
    if (s == PROXCL_OK) s = px_sum_slices(dev, *part, slices, out, M * N, N, bias, relu, err);
    px_forget_args(dev);
    px_release(part);      /* freed by OpenCL once the queued launches that use it have run */
    return s;
}

/* CPU form: an rm x nv*vec block of C per work-item (ops.dense._gemm_blocks and _gemm_sliced), of
 * gemm_blk or, on packed operands, gemm_pk: whole when K fits loop_max / 2, else a PX_SPLIT build
 * with slices of K in dimension 2 */
static proxcl_status gemm_blocks(px_device *dev, int packed, cl_mem a, cl_mem b, cl_mem out, int M, int N, int K,
                                 int trans_a, int nv, cl_mem bias, int relu, proxcl_error *err)
{
    const px_tuning *t = dev->t;
    const int vec = t->gemm_vec, rm = t->gemm_rm, lx = t->gemm_rows;
    int max_slice = t->loop_max / 2;
    if (packed && t->gemm_pack[4] < max_slice) max_slice = t->gemm_pack[4];
    const int slices = (K + max_slice - 1) / max_slice;
    /* gemm_pk (packed operands) takes no TRANS_A: its operand is already op(a) */
    px_define defs[] = {{"VEC", vec}, {"RM", rm}, {"NV", nv}, {"LX", lx}, {"TRANS_A", trans_a}, {"PX_SPLIT", 1}};
    if (packed) defs[4] = defs[5];
    const int ndefs = (packed ? 4 : 5) + (slices > 1);
    px_kernel *k;
    PX_TRY(px_kernel_get(dev, FILE_, packed ? "gemm_pk" : "gemm_blk", defs, ndefs, &k, err));
    size_t g[3] = {(size_t)((M + rm - 1) / rm), (size_t)((N + nv * vec - 1) / (nv * vec)), (size_t)slices};
    size_t l[3] = {(size_t)lx, 1, 1};
    if (slices == 1) {
        px_arg args[] = {PX_I(M), PX_I(N), PX_I(K), PX_M(a), PX_M(b), PX_M(out), PX_M(bias), PX_I(relu)};
        return px_launch(dev, k, 2, g, l, args, 8, err);
    }
    cl_mem part;
    PX_TRY(px_buffer(dev, (size_t)slices * M * N * sizeof(float), &part, err));
    px_arg args[] = {PX_I(M), PX_I(N), PX_I(K), PX_M(a), PX_M(b), PX_M(part), PX_M(NULL), PX_I(0)};
    proxcl_status s = px_launch(dev, k, 3, g, l, args, 8, err);
    return sum_and_release(dev, s, &part, slices, out, M, N, bias, relu, err);
}

/* gemm_pack (ops.dense._pack): the [ceil(rows / width), K, width] copy of the rows x K operand x
 * ([rows, K], or [K, rows] where k_major), up to 256 values of k per work-item */
static proxcl_status pack(px_device *dev, cl_mem x, int rows, int K, int width, int k_major, cl_mem *p,
                          proxcl_error *err)
{
    const int blocks = (rows + width - 1) / width;
    int kc = dev->t->loop_max / width;
    if (kc > 256) kc = 256;
    if (kc < 1) kc = 1;
    px_define defs[] = {{"PW", width}, {"PACK_T", k_major}};
    px_kernel *k;
    PX_TRY(px_kernel_get(dev, FILE_, "gemm_pack", defs, 2, &k, err));
    PX_TRY(px_buffer(dev, (size_t)blocks * K * width * sizeof(float), p, err));
    size_t g[2] = {(size_t)((K + kc - 1) / kc), (size_t)blocks}, l[2] = {1, 1};
    px_arg args[] = {PX_I(rows), PX_I(K), PX_I(kc), PX_M(x), PX_M(*p)};
    return px_launch(dev, k, 2, g, l, args, 5, err);
}

/* CPU form of large products (ops.dense._gemm_packed): op(a) and b copied into the order in which
 * rm x gemm_pack[3]*vec blocks read them, then multiplied by gemm_pk in slices of at most
 * gemm_pack[4] values of k (the products here have no B^T: gemm_pack[0] is their threshold) */
static proxcl_status gemm_packed(px_device *dev, cl_mem a, cl_mem b, cl_mem out, int M, int N, int K, int trans_a,
                                 cl_mem bias, int relu, proxcl_error *err)
{
    const px_tuning *t = dev->t;
    const int nv = t->gemm_pack[3];
    cl_mem ap = NULL, bp = NULL;
    proxcl_status s = pack(dev, a, M, K, t->gemm_rm, trans_a, &ap, err);
    if (s == PROXCL_OK) s = pack(dev, b, N, K, nv * t->gemm_vec, 1, &bp, err);
    if (s == PROXCL_OK) s = gemm_blocks(dev, 1, ap, bp, out, M, N, K, 0, nv, bias, relu, err);
    px_forget_args(dev);
    px_release(&ap);      /* freed by OpenCL once the queued launches that use them have run */
    px_release(&bp);
    return s;
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
    split_k((long)gx * gy, K, t->loop_max / 2, &slices, &ks);
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
    return sum_and_release(dev, s, &part, slices, out, M, N, bias, relu, err);
}

/* Tiled GPU form (ops.dense._gemm_tiled): where its work-groups number at least tile_groups_pct % of
 * the compute units, with TM and TN halved from 8 to 4 (and BK doubled) where that is needed, and C has at least
 * LY*4 rows and LX*4 columns; slices of K where a work-item's loops would pass loop_max.
 * *done = 0 (nothing launched) elsewhere. */
static proxcl_status gemm_tiled(px_device *dev, cl_mem a, cl_mem b, cl_mem out, int M, int N, int K, int trans_a,
                                cl_mem bias, int relu, int *done, proxcl_error *err)
{
    const px_tuning *t = dev->t;
    const int lx = t->gemm_tile[0], ly = t->gemm_tile[1];
    int tm = t->gemm_tile[2], tn = t->gemm_tile[3], bk = t->gemm_tile[4];
    long gx, gy;
    *done = 0;
    if (!lx || M < 4 * ly || N < 4 * lx) return PROXCL_OK;
    for (;;) {
        gx = (N + lx * tn - 1) / (lx * tn), gy = (M + ly * tm - 1) / (ly * tm);
        if (100 * gx * gy >= (long)t->tile_groups_pct * dev->compute_units) break;
        if (tm < 8 || tn < 8) return PROXCL_OK;
        tm /= 2, tn /= 2, bk *= 2;   /* steps twice as long: whole float4 shares again */
    }
    const int na = ly * tm * bk / (lx * ly), nb = bk * lx * tn / (lx * ly), staged = na + nb;
    const int per_step = 2 * staged + bk + 1;
    int steps = (t->loop_max - staged - tm * tn / 4) / per_step;   /* less the first fetch and the stores */
    if (steps < 1) steps = 1;
    const int max_slice = steps * bk;
    int slices = (K + max_slice - 1) / max_slice, ks = (K + slices - 1) / slices;
    /* float4 global loads where rows start on multiples of 4 floats and shares are whole float4 */
    const int vec = t->aligned && N % 4 == 0 && na % 4 == 0 && nb % 4 == 0 &&
                    (trans_a ? M % 4 == 0 : K % 4 == 0 && bk % 4 == 0);
    if (vec && !trans_a && slices > 1 && ks % 4) {
        ks += 4 - ks % 4;                                    /* slices on float4 boundaries */
        slices = (K + ks - 1) / ks;
    }
    px_define defs[] = {{"BK", bk}, {"GT_VEC", vec}, {"LX", lx}, {"LY", ly}, {"TM", tm}, {"TN", tn},
                        {"TRANS_A", trans_a}};
    px_kernel *k;
    PX_TRY(px_kernel_get(dev, FILE_, "gemm_tile", defs, 7, &k, err));
    size_t g[3] = {(size_t)(gx * lx), (size_t)(gy * ly), (size_t)slices}, l[3] = {(size_t)lx, (size_t)ly, 1};
    *done = 1;
    if (slices == 1) {
        px_arg args[] = {PX_I(M), PX_I(N), PX_I(K), PX_M(a), PX_M(b), PX_M(out), PX_M(bias), PX_I(relu), PX_I(K)};
        return px_launch(dev, k, 3, g, l, args, 9, err);
    }
    cl_mem part;
    PX_TRY(px_buffer(dev, (size_t)slices * M * N * sizeof(float), &part, err));
    px_arg args[] = {PX_I(M), PX_I(N), PX_I(K), PX_M(a), PX_M(b), PX_M(part), PX_M(NULL), PX_I(0), PX_I(ks)};
    proxcl_status s = px_launch(dev, k, 3, g, l, args, 9, err);
    return sum_and_release(dev, s, &part, slices, out, M, N, bias, relu, err);
}

/* C[M, N] = op(a)[M, K] b[K, N] (+ bias) (ReLU): a is [M, K], or [K, M] with trans_a. */
proxcl_status px_gemm(px_device *dev, cl_mem a, cl_mem b, cl_mem out, int M, int N, int K, int trans_a,
                      cl_mem bias, int relu, proxcl_error *err)
{
    if (M == 0 || N == 0) return PROXCL_OK;
    if (K == 0) return px_fail(err, PROXCL_ERR_MODEL, "a product with an empty inner dimension");
    const px_tuning *t = dev->t;
    if (t->gemm_nv && t->gemm_pack[0] && (double)M * N * K >= t->gemm_pack[0] && M >= t->gemm_pack[2] &&
        N >= t->gemm_pack[2])
        return gemm_packed(dev, a, b, out, M, N, K, trans_a, bias, relu, err);
    if (t->gemm_nv) return gemm_blocks(dev, 0, a, b, out, M, N, K, trans_a, t->gemm_nv, bias, relu, err);
    int done;
    PX_TRY(gemm_tiled(dev, a, b, out, M, N, K, trans_a, bias, relu, &done, err));
    if (done) return PROXCL_OK;
    return gemm_columns(dev, a, b, out, M, N, K, trans_a, bias, relu, err);
}
