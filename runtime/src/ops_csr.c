/* The launches of kernels/csr.cl, as src/proxcl/ops/sparse.py makes them: SpMM (CPU form
 * csr_spmm_seg, GPU form csr_spmm; the transposed product through the permutation Pm; rows longer
 * than a work-item's loop budget in pieces, added per row by csr_sum_pieces) and SDDMM (CPU form
 * csr_sddmm_rows, GPU form csr_sddmm with more lanes for long rows; long dot products in column
 * slices, added by gemm_sum_slices). */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "px.h"

#define FILE_ "csr.cl"

/* the most entries of a row one SpMM work-item takes (ops.sparse._spmm_piece) */
static int spmm_piece(const px_device *dev)
{
    return dev->t->loop_max / 2;
}

void px_pieces_release(px_pieces *p)
{
    px_release(&p->qp);
    px_release(&p->rp);
    p->count = 0;
}

/* ops.sparse.row_pieces and CSRPattern.pieces: every row cut into pieces of `limit` entries, the
 * last one shorter; nothing when no row is longer */
proxcl_status px_row_pieces(px_device *dev, const int32_t *indptr, int m, px_pieces *out, proxcl_error *err)
{
    const int limit = spmm_piece(dev);
    long long count = 0, longest = 0;
    out->count = 0;
    out->qp = out->rp = NULL;
    if (!m || indptr[m] <= limit) return PROXCL_OK;       /* no row can be longer */
    for (int i = 0; i < m; ++i) {
        long long len = (long long)indptr[i + 1] - indptr[i], per = (len + limit - 1) / limit;
        if (len > longest) longest = len;
        count += per;
        if (per > dev->t->loop_max)                        /* csr_sum_pieces' loop */
            return px_fail(err, PROXCL_ERR_INPUT, "a CSR row of more than %d x %d entries", limit, dev->t->loop_max);
    }
    if (longest <= limit) return PROXCL_OK;
    int32_t *qp = px_alloc((size_t)(count + 1) * sizeof(int32_t), err), *rp = px_alloc((size_t)(m + 1) * sizeof(int32_t), err);
    proxcl_status s = qp && rp ? PROXCL_OK : PROXCL_ERR_MEMORY;
    if (s == PROXCL_OK) {
        int at = 0;
        for (int i = 0; i < m; ++i) {
            rp[i] = at;
            for (int q = indptr[i]; q < indptr[i + 1]; q += limit) qp[at++] = q;
        }
        rp[m] = at;
        qp[at] = indptr[m];
        s = px_buffer_from(dev, qp, (size_t)(count + 1) * 4, &out->qp, err);
        if (s == PROXCL_OK) s = px_buffer_from(dev, rp, (size_t)(m + 1) * 4, &out->rp, err);
        if (s == PROXCL_OK) out->count = (int)count;
        else px_pieces_release(out);
    }
    free(qp);
    free(rp);
    return s;
}

/* One SpMM launch over the m rows of (ap, aj): the CPU or GPU form (ops.sparse._spmm_rows). */
static proxcl_status spmm_rows(px_device *dev, int m, int k, int n, cl_mem ap, cl_mem aj, int idx16, cl_mem ax, cl_mem pm,
                               cl_mem x, cl_mem out, cl_mem bias, int relu, proxcl_error *err)
{
    const px_tuning *t = dev->t;
    const int nv = t->spmm_nv, tr = pm != NULL;
    int vec = t->spmm_vec;
    px_kernel *kern;
    px_arg args[] = {PX_I(m), PX_I(n), PX_M(ap), PX_M(aj), PX_M(ax), PX_M(pm), PX_M(x), PX_M(out), PX_M(bias),
                     PX_I(relu)};
    if (nv) {          /* CPU form: a row segment of nv vectors per work-item, rows varying fastest */
        if (t->spmm_wide_vec && n % (t->spmm_wide_vec * nv) == 0)
            vec = t->spmm_wide_vec;    /* no partial segment: the wider vectors pay */
        const int lx = t->spmm_rows;
        px_define defs[] = {{"VEC", vec}, {"NV", nv}, {"LX", lx}, {"TRANSPOSED", tr}, {"IDX16", idx16}};
        PX_TRY(px_kernel_get(dev, FILE_, "csr_spmm_seg", defs, 5, &kern, err));
        size_t g[2] = {(size_t)m, (size_t)((n + nv * vec - 1) / (nv * vec))}, l[2] = {(size_t)lx, 1};
        return px_launch(dev, kern, 2, g, l, args, 10, err);
    }
    const int lx = t->spmm_local[0], ly = t->spmm_local[1];   /* GPU form: coalesced over columns */
    const int wide = t->spmm_wide_vec;
    if (wide && n % (wide * lx) == 0 &&   /* whole column groups of the wider vectors span the batch */
        100L * (n / (wide * lx)) * ((m + ly - 1) / ly) >= (long)t->spmm_wide_groups_pct * dev->compute_units)
        vec = wide;
    px_define defs[] = {{"VEC", vec}, {"LX", lx}, {"LY", ly}, {"TRANSPOSED", tr},
                        {"PX_ALIGNED", t->aligned && n % vec == 0}, {"IDX16", idx16}, {"SWZ", t->spmm_swizzle},
                        {"PX_OFF32", (long)k * n <= INT_MAX}};
    PX_TRY(px_kernel_get(dev, FILE_, "csr_spmm", defs, 8, &kern, err));
    size_t g[2] = {(size_t)((n + vec - 1) / vec), (size_t)m}, l[2] = {(size_t)lx, (size_t)ly};
    return px_launch(dev, kern, 2, g, l, args, 10, err);
}

/* Y[m, n] = A X (+ bias) (ReLU) with A CSR (m x k) and X [k, n]; with pm, A is the transposed
 * structure (Tp, Ti) whose values are ax[pm[p]].  idx16: aj (and ai) are uint16.  With pieces
 * (rows longer than spmm_piece), the products of the pieces, then their sums per row. */
proxcl_status px_spmm(px_device *dev, int m, int k, cl_mem ap, cl_mem aj, int idx16, cl_mem ax, cl_mem pm,
                      const px_pieces *pieces, cl_mem x, int n, cl_mem bias, int relu, cl_mem out, proxcl_error *err)
{
    if (!m || !n) return PROXCL_OK;
    if (!pieces || !pieces->count) return spmm_rows(dev, m, k, n, ap, aj, idx16, ax, pm, x, out, bias, relu, err);
    cl_mem part;
    PX_TRY(px_buffer(dev, (size_t)pieces->count * n * sizeof(float), &part, err));
    proxcl_status s = spmm_rows(dev, pieces->count, k, n, pieces->qp, aj, idx16, ax, pm, x, part, NULL, 0, err);
    px_kernel *sum;
    if (s == PROXCL_OK) s = px_kernel_get(dev, FILE_, "csr_sum_pieces", NULL, 0, &sum, err);
    if (s == PROXCL_OK) {
        size_t g[2] = {(size_t)n, (size_t)m}, l[2] = {(size_t)dev->t->ew_local, 1};
        px_arg args[] = {PX_I(m), PX_I(n), PX_M(pieces->rp), PX_M(part), PX_M(out), PX_M(bias), PX_I(relu)};
        s = px_launch(dev, sum, 2, g, l, args, 7, err);
    }
    px_forget_args(dev);
    px_release(&part);
    return s;
}

/* G[p] = A[ai[p], :] . B[aj[p], :] over the nnz entries; A [m, n], B [k, n].  Dot products longer
 * than a work-item's loop budget in column slices (a PX_SPLIT build, slices in the last launch
 * dimension), added in order. */
proxcl_status px_sddmm(px_device *dev, int nnz, int n, cl_mem ai, cl_mem aj, int idx16, cl_mem a, cl_mem b,
                       cl_mem g, proxcl_error *err)
{
    if (!nnz) return PROXCL_OK;
    const px_tuning *t = dev->t;
    const int vec = t->sddmm_vec;
    px_define defs[PX_MAX_DEFINES];
    int ndefs, dims, slice_max;
    size_t gs[3], l[3];
    const char *name;
    if (t->sddmm_lanes > 1) {
        int lanes = t->sddmm_lanes, group = t->sddmm_group;
        if (n >= PX_SDDMM_WIDE_N) {
            lanes = PX_SDDMM_WIDE_LANES;
            group = 256 / PX_SDDMM_WIDE_LANES > 1 ? 256 / PX_SDDMM_WIDE_LANES : 1;
        }
        px_define d[] = {{"VEC", vec}, {"LANES", lanes}, {"GROUP", group},
                         {"PX_ALIGNED", t->aligned && n % vec == 0}, {"IDX16", idx16}};
        ndefs = 5;
        memcpy(defs, d, sizeof d);
        name = "csr_sddmm";
        dims = 2;
        gs[0] = (size_t)lanes, gs[1] = (size_t)nnz, l[0] = (size_t)lanes, l[1] = (size_t)group;
        slice_max = (t->loop_max - vec - 16) * lanes * vec;   /* a lane's share of a slice, a tail, the reduction */
    } else {
        const int epw = t->sddmm_epw;
        px_define d[] = {{"VEC", vec}, {"EPW", epw}, {"LX", t->sddmm_group}, {"IDX16", idx16}};
        ndefs = 4;
        memcpy(defs, d, sizeof d);
        name = "csr_sddmm_rows";
        dims = 1;
        gs[0] = (size_t)((nnz + epw - 1) / epw), l[0] = (size_t)t->sddmm_group;
        /* both paths' loops: slice/vec shared, epw * slice/(2 vec) apart, tails */
        slice_max = (t->loop_max - 3 * epw * (vec + 2)) * 2 * vec / (epw + 2);
    }
    const int per = slice_max / vec * vec, slices = (n + per - 1) / per;
    px_kernel *kern;
    if (slices == 1) {
        PX_TRY(px_kernel_get(dev, FILE_, name, defs, ndefs, &kern, err));
        px_arg args[] = {PX_I(nnz), PX_I(n), PX_M(ai), PX_M(aj), PX_M(a), PX_M(b), PX_M(g), PX_F(1.0f)};
        return px_launch(dev, kern, dims, gs, l, args, 8, err);
    }
    defs[ndefs++] = (px_define){"PX_SPLIT", 1};
    PX_TRY(px_kernel_get(dev, FILE_, name, defs, ndefs, &kern, err));
    gs[dims] = (size_t)slices, l[dims] = 1;
    cl_mem part;
    PX_TRY(px_buffer(dev, (size_t)slices * nnz * sizeof(float), &part, err));
    px_arg args[] = {PX_I(nnz), PX_I(n), PX_M(ai), PX_M(aj), PX_M(a), PX_M(b), PX_M(part), PX_F(1.0f)};
    proxcl_status s = px_launch(dev, kern, dims + 1, gs, l, args, 8, err);
    if (s == PROXCL_OK) s = px_sum_slices(dev, part, slices, g, nnz, 1, NULL, 0, err);
    px_forget_args(dev);
    px_release(&part);
    return s;
}
