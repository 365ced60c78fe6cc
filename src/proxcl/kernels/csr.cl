/* Sparse kernels over CSR matrices, named after scipy's sparsetools:
 * Ap[n_row+1] (int32 row pointers), Aj[nnz] (column indices of type IDX), Ax[nnz] (float32 values).
 * Dense operands are row-major and feature-major: X[n_col, n_vec], one row per feature,
 * so a CSR row streams over contiguous batch columns.
 * Build defines: VEC (vector width), PX_ALIGNED (see common.h), LX, LY (fixed local size),
 * TRANSPOSED (values through Pm), IDX16 (1: the index arrays Aj, Ai and Ti are ushort, IDX,
 * as when both dimensions fit; 0: int; proxcl.ops.sparse.index_dtype),
 * SWZ (csr_spmm's column slices of work-groups), PX_OFF32 (csr_spmm: X's elements fit an int),
 * UNROLL (csr_spmm's unrolling of its entry loop),
 * NV (vectors per work-item, csr_spmm_seg), LANES, GROUP (csr_sddmm), EPW (csr_sddmm_rows),
 * SCAN_LOCAL, SCAN_CHUNK (scan).  Every *_seg / *_rows kernel is the CPU form of the kernel
 * before it; Device.tuning picks one per device kind.  Host module: proxcl/ops/sparse.py.
 *
 * No work-item loops over a whole row, column range or array: the host splits rows longer than
 * its loop budget into pieces (a row pointer array over the same entries, whose piece sums
 * csr_sum_pieces adds), and the kernels below take slices of columns from their launch sizes
 * (llvmpipe ends a work-item's loops silently after 65,535 iterations in all).
 *
 * Summation order: every SpMM output is one accumulator that adds its row's (or piece's)
 * entries in entry order, in the interior and in an edge column segment alike (no per-column
 * scalar loop there: Intel's compiler reordered one), and pieces are added in order. */

#ifndef LX
#define LX 4
#endif
#ifndef LY
#define LY 4
#endif
#ifndef TRANSPOSED
#define TRANSPOSED 0
#endif
#ifndef IDX16
#define IDX16 0
#endif
#ifndef SWZ
#define SWZ 0
#endif
#ifndef PX_OFF32
#define PX_OFF32 0
#endif
#ifndef UNROLL
#define UNROLL 4
#endif
#define PX_PRAGMA(x) _Pragma(#x)
#define PX_UNROLL(n) PX_PRAGMA(unroll n)
/* Offset of row r of X (n columns): an int product where the host promises that X's k * n
 * elements fit an int (PX_OFF32=1), else a size_t one. */
#if PX_OFF32
#define PX_XOFF(r, n) ((int)(r) * (n))
#else
#define PX_XOFF(r, n) ((size_t)(r) * (n))
#endif
#if IDX16
#define IDX ushort
#else
#define IDX int
#endif

/* Value of entry p: through the permutation Pm on the transposed structure (Tp, Ti, Pm),
 * so that A^T products reuse A's values array without copying it. */
#if TRANSPOSED
#define PX_VAL(p) Ax[Pm[p]]
#else
#define PX_VAL(p) Ax[p]
#endif

/* ---- SpMM, GPU form: work-items coalesced over the batch columns ----
 * Y[m, n] = A[m, k] X[k, n] (+ bias[m]) (relu)      Ap[m+1], Aj[nnz], Ax[nnz], X[k, n], Y[m, n]
 * (with TRANSPOSED, Pm[nnz] and Ax holds the values in the untransposed order).
 * Work-item (x, y): row y, columns [x*VEC, x*VEC + VEC); neighbouring work-items read
 * neighbouring columns of the same X rows.  With SWZ > 0 the work-groups are taken in column
 * slices: groups 0.. of the launch order cover the first SWZ column groups of every row group,
 * then the next SWZ, so that the groups in flight re-read one slice of X, which stays in the
 * cache (on the H200, 4096 x 16384 at 2 % times X[16384, 2048]: 1.08 against 1.31 ms).
 * O(nnz * n). */
__kernel __attribute__((reqd_work_group_size(LX, LY, 1)))
void csr_spmm(const int m, const int n,
              __global const int *restrict Ap, __global const IDX *restrict Aj,
              __global const float *restrict Ax, __global const int *restrict Pm,
              __global const float *restrict X, __global float *restrict Y,
              __global const float *restrict bias, const int relu)
{
#if SWZ   /* launch-order group L: slice s of SWZ (w in the last) column groups, row group rem / w */
    const int g0 = get_num_groups(0), g1 = get_num_groups(1);
    const int L = get_group_id(1) * g0 + get_group_id(0);
    const int s = L / (SWZ * g1), w = PX_MIN(SWZ, g0 - s * SWZ), rem = L - s * SWZ * g1;
    const int c0 = ((s * SWZ + rem % w) * LX + get_local_id(0)) * VEC;
    const int i = (rem / w) * LY + get_local_id(1);
#else
    const int c0 = get_global_id(0) * VEC;
    const int i = get_global_id(1);
#endif
    if (i >= m || c0 >= n) return;
    const int start = Ap[i], end = Ap[i + 1];
    const float b = bias ? bias[i] : 0.0f;
    __global float *y = Y + (size_t)i * n + c0;
    floatV acc = (floatV)(0.0f);
    if (c0 + VEC <= n) {
        __global const float *x0 = X + c0;
        PX_UNROLL(UNROLL)
        for (int p = start; p < end; ++p)
            acc += (floatV)(PX_VAL(p)) * VLOAD(x0 + PX_XOFF(Aj[p], n));
    } else {   /* cut by the right edge: columns past n load as zeros, one loop as above */
        for (int p = start; p < end; ++p)
            acc += (floatV)(PX_VAL(p)) * VLOAD_PART(X + (size_t)Aj[p] * n + c0, n - c0);
    }
    acc += (floatV)(b);
    if (relu) acc = PX_RELU(acc);
    if (c0 + VEC <= n) VSTORE(acc, y);
    else VSTORE_PART(acc, y, n - c0);
}

/* ---- SpMM, CPU form: one work-item holds a row segment of NV vectors in registers ----
 * Same product and shapes as csr_spmm.  Work-item (x, y): row x, columns
 * [y*NV*VEC, (y+1)*NV*VEC); Aj/Ax of the row are read once per segment and every X row
 * segment is NV vector loads.  Rows vary fastest, so consecutive work-groups share one
 * column segment of X (k * NV*VEC floats), which stays in the core's cache.  In a segment that
 * the batch width cuts short, columns past n load as zeros and are not stored. */
#ifndef NV
#define NV 8
#endif
#if NV == 1
#define PX_REP(M) M(0)
#elif NV == 2
#define PX_REP(M) M(0) M(1)
#elif NV == 3
#define PX_REP(M) M(0) M(1) M(2)
#elif NV == 4
#define PX_REP(M) M(0) M(1) M(2) M(3)
#elif NV == 6
#define PX_REP(M) M(0) M(1) M(2) M(3) M(4) M(5)
#elif NV == 8
#define PX_REP(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
#else
#error "NV must be 1, 2, 3, 4, 6 or 8"
#endif
#define PX_SEG_ZERO(j) floatV acc##j = (floatV)(0.0f);
#define PX_SEG_FMA(j) acc##j += av * VLOAD(x + (j) * VEC);
#define PX_SEG_OUT(j) { floatV v = acc##j + (floatV)(b); if (relu) v = PX_RELU(v); VSTORE(v, y + (j) * VEC); }
/* the edge segment: vector j holds n - c0 - j*VEC columns (all VEC, some, or none) */
#define PX_SEG_FMA_EDGE(j)                                                                     \
    if (c0 + ((j) + 1) * VEC <= n) acc##j += av * VLOAD(x + (j) * VEC);                         \
    else if (c0 + (j) * VEC < n) acc##j += av * VLOAD_PART(x + (j) * VEC, n - c0 - (j) * VEC);
#define PX_SEG_OUT_EDGE(j)                                                                     \
    if (c0 + (j) * VEC < n) {                                                                  \
        floatV v = acc##j + (floatV)(b);                                                       \
        if (relu) v = PX_RELU(v);                                                              \
        if (c0 + ((j) + 1) * VEC <= n) VSTORE(v, y + (j) * VEC);                               \
        else VSTORE_PART(v, y + (j) * VEC, n - c0 - (j) * VEC);                                \
    }

__kernel __attribute__((reqd_work_group_size(LX, 1, 1)))
void csr_spmm_seg(const int m, const int n,
                  __global const int *restrict Ap, __global const IDX *restrict Aj,
                  __global const float *restrict Ax, __global const int *restrict Pm,
                  __global const float *restrict X, __global float *restrict Y,
                  __global const float *restrict bias, const int relu)
{
    const int i = get_global_id(0);
    const int c0 = get_global_id(1) * (NV * VEC);
    if (i >= m || c0 >= n) return;
    const int start = Ap[i], end = Ap[i + 1];
    const float b = bias ? bias[i] : 0.0f;
    __global float *y = Y + (size_t)i * n + c0;
    PX_REP(PX_SEG_ZERO)
    if (c0 + NV * VEC <= n) {
        for (int p = start; p < end; ++p) {
            const floatV av = (floatV)(PX_VAL(p));
            __global const float *x = X + (size_t)Aj[p] * n + c0;
            PX_REP(PX_SEG_FMA)
        }
        PX_REP(PX_SEG_OUT)
        return;
    }
    for (int p = start; p < end; ++p) {
        const floatV av = (floatV)(PX_VAL(p));
        __global const float *x = X + (size_t)Aj[p] * n + c0;
        PX_REP(PX_SEG_FMA_EDGE)
    }
    PX_REP(PX_SEG_OUT_EDGE)
}

/* Y[i, c] = sum of part[s, c] over the pieces s in [Rp[i], Rp[i+1]) of row i, in order
 * (+ bias[i]) (relu): the rows of an SpMM whose long rows were split into pieces.
 * Rp[m+1], part[pieces, n], Y[m, n], bias[m] or NULL.  Work-item (c, i).  O(pieces * n). */
__kernel void csr_sum_pieces(const int m, const int n, __global const int *restrict Rp,
                             __global const float *restrict part, __global float *restrict Y,
                             __global const float *restrict bias, const int relu)
{
    const int c = get_global_id(0);
    const int i = get_global_id(1);
    if (i >= m || c >= n) return;
    float acc = 0.0f;
    for (int s = Rp[i]; s < Rp[i + 1]; ++s) acc += part[(size_t)s * n + c];
    if (bias) acc += bias[i];
    Y[(size_t)i * n + c] = relu ? (acc > 0.0f ? acc : 0.0f) : acc;
}

#ifndef LANES
#define LANES 1
#endif
#ifndef GROUP
#define GROUP 16
#endif

/* Column slices of the SDDMM kernels (PX_SPLIT, common.h): a launch with S slices in the
 * dimension after the entries gives slice z the columns
 * [cb, cb + len) of every dot product, with CS = ceil(n / S) rounded up to VEC, cb = z*CS, and
 * writes its partial sums to G + z*nnz (the host adds the slices in order).  Slices keep long
 * dot products (a convolution's weight gradient over batch x output pixels) within a
 * work-item's loop budget. */
#define PX_COL_SLICE(dim)                                                                      \
    const int CS_ = PX_VEC_UP(PX_PART(n, PX_SLICES(dim)));                                     \
    const int cb = PX_SLICE(dim) * CS_;                                                        \
    const int len = PX_MAX(0, PX_MIN(CS_, n - cb));                                            \
    G += PX_SLICE(dim) * (size_t)nnz

/* Sampled dense-dense product on a CSR pattern, GPU form:
 * G[p] = scale * sum_c A[Ai[p], c] * B[Aj[p], c]      Ai[nnz] (row of each entry), Aj[nnz],
 * A[m, n], B[k, n], G[nnz].  LANES work-items share one entry (coalesced over c) and reduce
 * in local memory; GROUP entries per work-group; column slices in dimension 2.  O(nnz * n). */
__kernel __attribute__((reqd_work_group_size(LANES, GROUP, 1)))
void csr_sddmm(const int nnz, const int n,
               __global const IDX *restrict Ai, __global const IDX *restrict Aj,
               __global const float *restrict A, __global const float *restrict B,
               __global float *restrict G, const float scale)
{
    const int lane = get_local_id(0);
    const int p = get_global_id(1);
    PX_COL_SLICE(2);
    float s = 0.0f;
    if (p < nnz) {
        __global const float *a = A + (size_t)Ai[p] * n + cb;
        __global const float *b = B + (size_t)Aj[p] * n + cb;
        floatV acc = (floatV)(0.0f);
        for (int c = lane * VEC; c + VEC <= len; c += LANES * VEC)
            acc += VLOAD(a + c) * VLOAD(b + c);
        s = px_hsum(acc);
        for (int t = (len / VEC) * VEC + lane; t < len; t += LANES)
            s += a[t] * b[t];
    }
#if LANES > 1
    __local float red[GROUP][LANES];
    const int g = get_local_id(1);
    red[g][lane] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = LANES / 2; w > 0; w >>= 1) {
        if (lane < w) red[g][lane] += red[g][lane + w];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    s = red[g][0];
#endif
    if (p < nnz && lane == 0) G[p] = s * scale;
}

/* Sampled dense-dense product, CPU form: same product and shapes as csr_sddmm.  Work-item q
 * takes the EPW consecutive entries [q*EPW, q*EPW + EPW); when they share one row (the usual
 * case: entries of a row are contiguous) each vector of A's row is loaded once for all of
 * them, else each entry is done alone.  Two vector accumulators per entry.  Column slices in
 * dimension 1.  O(nnz * n). */
#ifndef EPW
#define EPW 4
#endif
__kernel __attribute__((reqd_work_group_size(LX, 1, 1)))
void csr_sddmm_rows(const int nnz, const int n,
                    __global const IDX *restrict Ai, __global const IDX *restrict Aj,
                    __global const float *restrict A, __global const float *restrict B,
                    __global float *restrict G, const float scale)
{
    const int p0 = get_global_id(0) * EPW;
    if (p0 >= nnz) return;
    PX_COL_SLICE(1);
    const int cnt = PX_MIN(EPW, nnz - p0);
    const int nv = (len / VEC) * VEC;
    if (cnt == EPW && Ai[p0] == Ai[p0 + EPW - 1]) {
        __global const float *a = A + (size_t)Ai[p0] * n + cb;
        __global const float *b[EPW];
        floatV acc[EPW];
        _Pragma("unroll") for (int e = 0; e < EPW; ++e) {
            b[e] = B + (size_t)Aj[p0 + e] * n + cb;
            acc[e] = (floatV)(0.0f);
        }
        for (int c = 0; c < nv; c += VEC) {
            const floatV av = VLOAD(a + c);
            _Pragma("unroll") for (int e = 0; e < EPW; ++e) acc[e] += av * VLOAD(b[e] + c);
        }
        _Pragma("unroll") for (int e = 0; e < EPW; ++e) {
            float s = px_hsum(acc[e]);
            for (int c = nv; c < len; ++c) s += a[c] * b[e][c];
            G[p0 + e] = s * scale;
        }
        return;
    }
    for (int e = 0; e < cnt; ++e) {
        __global const float *a = A + (size_t)Ai[p0 + e] * n + cb;
        __global const float *b = B + (size_t)Aj[p0 + e] * n + cb;
        floatV acc0 = (floatV)(0.0f), acc1 = (floatV)(0.0f);
        int c = 0;
        for (; c + 2 * VEC <= nv; c += 2 * VEC) {
            acc0 += VLOAD(a + c) * VLOAD(b + c);
            acc1 += VLOAD(a + c + VEC) * VLOAD(b + c + VEC);
        }
        if (c < nv) acc0 += VLOAD(a + c) * VLOAD(b + c);
        float s = px_hsum(acc0 + acc1);
        for (c = nv; c < len; ++c) s += a[c] * b[c];
        G[p0 + e] = s * scale;
    }
}

/* Row index of every entry: Ai[p] = i for Ap[i] <= p < Ap[i+1].      Ap[m+1], Ai[nnz = Ap[m]].
 * Work-item p: a binary search of Ap (at most 32 steps, however long the rows). */
__kernel void csr_row_of_entry(const int m, __global const int *restrict Ap,
                               __global IDX *restrict Ai)
{
    const int p = get_global_id(0);
    if (p >= Ap[m]) return;
    int lo = 0, hi = m;            /* Ap[lo] <= p < Ap[hi] */
    while (hi - lo > 1) {
        const int mid = lo + (hi - lo) / 2;
        if (Ap[mid] <= p) lo = mid; else hi = mid;
    }
    Ai[p] = (IDX)lo;
}

/* ---- building and compacting CSR on the device: count per row, scan, fill ---- */

/* Column pieces of dense_count_rows / dense_fill_rows (PX_SPLIT, common.h): a launch with S
 * pieces per row in dimension 1 gives work-item (i, z) the columns
 * [jb, je) of row i, KS = ceil(k / S), jb = z*KS: the piece i*S + z of the row-major order. */
#define PX_ROW_PIECE                                                                           \
    const int S = PX_SLICES(1);                                                                \
    const int KS = PX_PART(k, S);                                                              \
    const int jb = PX_SLICE(1) * KS, je = PX_MIN(k, jb + KS);                                 \
    const size_t piece = (size_t)i * S + PX_SLICE(1)

/* cnt[i*S + z] = #{ j in piece z of row i : |D[i, j]| > thr }      D[m, k] dense, cnt[m*S]. */
__kernel void dense_count_rows(const int m, const int k, __global const float *restrict D,
                               const float thr, __global int *restrict cnt)
{
    const int i = get_global_id(0);
    if (i >= m) return;
    PX_ROW_PIECE;
    __global const float *d = D + (size_t)i * k;
    int c = 0;
    for (int j = jb; j < je; ++j) c += (d[j] > thr) | (d[j] < -thr);
    cnt[piece] = c;
}

/* Fill a CSR matrix from D with the pointers Ap[m*S + 1] of the scan of dense_count_rows'
 * counts:  Aj[nnz], Ax[nnz], and, if Src != NULL, Src[p] = i*k + j (the flat dense position of
 * each entry).  The row pointers are Ap[i*S]. */
__kernel void dense_fill_rows(const int m, const int k, __global const float *restrict D,
                              const float thr, __global const int *restrict Ap,
                              __global IDX *restrict Aj, __global float *restrict Ax,
                              __global int *restrict Src)
{
    const int i = get_global_id(0);
    if (i >= m) return;
    PX_ROW_PIECE;
    __global const float *d = D + (size_t)i * k;
    int p = Ap[piece];
    for (int j = jb; j < je; ++j) {
        const float v = d[j];
        if (v > thr || v < -thr) {
            Aj[p] = (IDX)j;
            Ax[p] = v;
            if (Src) Src[p] = i * k + j;
            ++p;
        }
    }
}

/* cnt[i] = #{ p in row i : Ax[p] != 0 }      Ap[m+1], Ax[nnz], cnt[m].  (Rows longer than the
 * loop budget come as pieces: Ap is then the pieces' pointer array.) */
__kernel void csr_count_nonzero(const int m, __global const int *restrict Ap,
                                __global const float *restrict Ax, __global int *restrict cnt)
{
    const int i = get_global_id(0);
    if (i >= m) return;
    int c = 0;
    for (int p = Ap[i]; p < Ap[i + 1]; ++p) c += Ax[p] != 0.0f;
    cnt[i] = c;
}

/* Keep the entries that are not exactly zero: Bj[q] = Aj[p], Src[q] = p (old position), with
 * Bp the scan of csr_count_nonzero.  Other value arrays follow with gather_f32(Src). */
__kernel void csr_fill_nonzero(const int m, __global const int *restrict Ap,
                               __global const IDX *restrict Aj, __global const float *restrict Ax,
                               __global const int *restrict Bp, __global IDX *restrict Bj,
                               __global int *restrict Src)
{
    const int i = get_global_id(0);
    if (i >= m) return;
    int q = Bp[i];
    for (int p = Ap[i]; p < Ap[i + 1]; ++p) {
        if (Ax[p] != 0.0f) {
            Bj[q] = Aj[p];
            Src[q] = p;
            ++q;
        }
    }
}

/* out[q] = x[idx[q]], or 0 where idx[q] < 0 (an entry new to a support)      idx[n], out[n]. */
__kernel void gather_f32(const int n, __global const float *restrict x,
                         __global const int *restrict idx, __global float *restrict out)
{
    const int q = get_global_id(0);
    if (q < n) out[q] = idx[q] >= 0 ? x[idx[q]] : 0.0f;
}

/* out[idx[q]] = x[q]; out is written only at idx (the caller zeroes it first)  x[n], idx[n]. */
__kernel void scatter_f32(const int n, __global const float *restrict x,
                          __global const int *restrict idx, __global float *restrict out)
{
    const int q = get_global_id(0);
    if (q < n) out[idx[q]] = x[q];
}

#ifndef SCAN_LOCAL
#define SCAN_LOCAL 256
#endif
#ifndef SCAN_CHUNK
#define SCAN_CHUNK 4096
#endif

/* Exclusive scan of cnt[m] into Ap[m+1] (Ap[m] = total), a block of at most
 * SCAN_LOCAL * SCAN_CHUNK counts per launch in one work-group of SCAN_LOCAL: this launch scans
 * cnt[first, end) into Ap[first, end] starting from Ap[first] (0 when first == 0), which the
 * launch of the block before wrote as its total.  Each work-item sums a contiguous chunk of at
 * most SCAN_CHUNK, the chunk sums are scanned, then written out.  O(m). */
__kernel __attribute__((reqd_work_group_size(SCAN_LOCAL, 1, 1)))
void scan_counts(const int m, __global const int *restrict cnt, __global int *restrict Ap,
                 const int first)
{
    __local int part[SCAN_LOCAL];
    const int t = get_local_id(0);
    const int end = first + min(m - first, SCAN_LOCAL * SCAN_CHUNK);
    const int chunk = (end - first + SCAN_LOCAL - 1) / SCAN_LOCAL;
    const int lo = min(end, first + t * chunk), hi = min(end, lo + chunk);
    int s = 0;
    for (int i = lo; i < hi; ++i) s += cnt[i];
    part[t] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (t == 0) {
        int run = first ? Ap[first] : 0;
        for (int u = 0; u < SCAN_LOCAL; ++u) { const int v = part[u]; part[u] = run; run += v; }
        Ap[end] = run;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    int run = part[t];
    for (int i = lo; i < hi; ++i) { Ap[i] = run; run += cnt[i]; }
}
