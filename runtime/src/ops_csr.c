/* The launches of kernels/csr.cl, as src/proxcl/ops/sparse.py makes them: SpMM (CPU form
 * csr_spmm_seg, GPU form csr_spmm; the transposed product through the permutation Pm) and SDDMM
 * (CPU form csr_sddmm_rows, GPU form csr_sddmm with more lanes for long rows). */
#include "px.h"

#define FILE_ "csr.cl"

/* Y[m, n] = A X (+ bias) (ReLU) with A CSR (m x k) and X [k, n]; with pm, A is the transposed
 * structure (Tp, Ti) whose values are ax[pm[p]].  idx16: aj (and ai) are uint16. */
proxcl_status px_spmm(px_device *dev, int m, int k, cl_mem ap, cl_mem aj, int idx16, cl_mem ax, cl_mem pm,
                      cl_mem x, int n, cl_mem bias, int relu, cl_mem out, proxcl_error *err)
{
    (void)k;
    if (!m || !n) return PROXCL_OK;
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
    px_define defs[] = {{"VEC", vec}, {"LX", lx}, {"LY", ly}, {"TRANSPOSED", tr},
                        {"PX_ALIGNED", t->aligned && n % vec == 0}, {"IDX16", idx16}};
    PX_TRY(px_kernel_get(dev, FILE_, "csr_spmm", defs, 6, &kern, err));
    size_t g[2] = {(size_t)((n + vec - 1) / vec), (size_t)m}, l[2] = {(size_t)lx, (size_t)ly};
    return px_launch(dev, kern, 2, g, l, args, 10, err);
}

/* G[p] = A[ai[p], :] . B[aj[p], :] over the nnz entries; A [m, n], B [k, n]. */
proxcl_status px_sddmm(px_device *dev, int nnz, int n, cl_mem ai, cl_mem aj, int idx16, cl_mem a, cl_mem b,
                       cl_mem g, proxcl_error *err)
{
    if (!nnz) return PROXCL_OK;
    const px_tuning *t = dev->t;
    px_kernel *kern;
    px_arg args[] = {PX_I(nnz), PX_I(n), PX_M(ai), PX_M(aj), PX_M(a), PX_M(b), PX_M(g), PX_F(1.0f)};
    if (t->sddmm_lanes > 1) {
        int lanes = t->sddmm_lanes, group = t->sddmm_group;
        if (n >= PX_SDDMM_WIDE_N) {
            lanes = PX_SDDMM_WIDE_LANES;
            group = 256 / PX_SDDMM_WIDE_LANES > 1 ? 256 / PX_SDDMM_WIDE_LANES : 1;
        }
        px_define defs[] = {{"VEC", t->sddmm_vec}, {"LANES", lanes}, {"GROUP", group},
                            {"PX_ALIGNED", t->aligned && n % t->sddmm_vec == 0}, {"IDX16", idx16}};
        PX_TRY(px_kernel_get(dev, FILE_, "csr_sddmm", defs, 5, &kern, err));
        size_t gs[2] = {(size_t)lanes, (size_t)nnz}, l[2] = {(size_t)lanes, (size_t)group};
        return px_launch(dev, kern, 2, gs, l, args, 8, err);
    }
    const int epw = t->sddmm_epw, lx = t->sddmm_group;
    px_define defs[] = {{"VEC", t->sddmm_vec}, {"EPW", epw}, {"LX", lx}, {"IDX16", idx16}};
    PX_TRY(px_kernel_get(dev, FILE_, "csr_sddmm_rows", defs, 4, &kern, err));
    size_t gs = (size_t)((nnz + epw - 1) / epw), l = (size_t)lx;
    return px_launch(dev, kern, 1, &gs, &l, args, 8, err);
}
