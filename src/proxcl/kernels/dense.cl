/* Dense kernels: register-blocked GEMMs with a fused bias + ReLU epilogue, a tiled
 * transpose and the soft-threshold.  Row-major storage.  Host module: proxcl/ops/dense.py.  Build defines: VEC (vector width), RM (rows per
 * work-item), NV (vectors of columns per work-item, gemm_blk, gemm_pk), LX, LY (fixed local
 * size), TRANS_A (0/1), PW and PACK_T (gemm_pack's block width and source layout).  gemm is the
 * GPU form (work-items coalesced over columns), gemm_blk the CPU form (an RM x NV*VEC block of C
 * in registers per work-item), gemm_pk the CPU form of large products; Device.tuning picks one. */

#ifndef RM
#define RM 4
#endif
#ifndef LX
#define LX 4
#endif
#ifndef LY
#define LY 4
#endif
#ifndef TRANS_A
#define TRANS_A 0
#endif
#ifndef PW
#define PW 1
#endif
#ifndef PACK_T
#define PACK_T 0
#endif

#if TRANS_A
#define A_AT(i, k) A[(size_t)(k) * M + (i)]   /* A stored [K, M] */
#define A_SHIFT(kb) (A += (size_t)(kb) * M)
#else
#define A_AT(i, k) A[(size_t)(i) * K + (k)]   /* A stored [M, K] */
#define A_SHIFT(kb) (A += (kb))
#endif

/* Split-K: the work-items of slice z take k in [kb, kb + KK) and write a partial product to
 * C + z*M*N, which gemm_sum_slices adds in a fixed order (bias and relu then go there).  This
 * shifts the operands to the slice: rows kb.. of B (and of A when stored [K, M]), columns kb..
 * of A stored [M, K].  The slices keep every work-item's loop over k short: llvmpipe ends a
 * work-item's loops silently after 65,535 iterations in all (docs/PORTABILITY.md). */
#define GEMM_SLICE(z, kb) do { B += (size_t)(kb) * N; A_SHIFT(kb); C += (size_t)(z) * M * N; } while (0)

/* The same for kernels that offset their own operands: this work-item's slice of k, [kb, kb + KK)
 * of slices ks long, and C moved to its partial product. */
#define GEMM_K_SLICE(ks)                                                                      \
    const int KS = (ks);                                                                       \
    const int kb = PX_SLICE(2) * KS;                                                           \
    const int KK = PX_MAX(0, PX_MIN(KS, K - kb));                                              \
    C += PX_SLICE(2) * (size_t)M * N

/* C[M, N] = op(A)[M, K] B[K, N] (+ bias[M] per row) (relu)      B[K, N], C[M, N].
 * Work-item (x, y, z): rows [y*RM, y*RM + RM), columns [x*VEC, x*VEC + VEC), and the slice
 * k in [z*KS, z*KS + KS) of the inner dimension, written to C + z*M*N (split-K: with a launch
 * of S > 1 slices C holds S partial products that gemm_sum_slices adds in a fixed order;
 * then bias and relu must be off here).  O(M N K). */
__kernel __attribute__((reqd_work_group_size(LX, LY, 1)))
void gemm(const int M, const int N, const int K,
          __global const float *restrict A, __global const float *restrict B,
          __global float *restrict C, __global const float *restrict bias, const int relu,
          const int KS)
{
    const int c0 = get_global_id(0) * VEC;
    const int i0 = get_global_id(1) * RM;
    if (i0 >= M || c0 >= N) return;
    const int KK = PX_MIN(KS, K - (int)get_group_id(2) * KS);
    GEMM_SLICE(get_group_id(2), get_group_id(2) * KS);
    int rows[RM];
    _Pragma("unroll") for (int r = 0; r < RM; ++r) rows[r] = PX_MIN(i0 + r, M - 1);   /* clamp: loads stay in range */
    floatV acc[RM];
    _Pragma("unroll") for (int r = 0; r < RM; ++r) acc[r] = (floatV)(0.0f);
    const int full = c0 + VEC <= N;
    if (full) {
        for (int k = 0; k < KK; ++k) {
            const floatV b = VLOAD(B + (size_t)k * N + c0);
            _Pragma("unroll") for (int r = 0; r < RM; ++r) acc[r] += (floatV)(A_AT(rows[r], k)) * b;
        }
    } else {
        /* the block cut by the right edge: columns past N load as zeros (one loop over k, as
         * in the interior, so a work-item's loop count stays KK) */
        for (int k = 0; k < KK; ++k) {
            const floatV b = VLOAD_PART(B + (size_t)k * N + c0, N - c0);
            _Pragma("unroll") for (int r = 0; r < RM; ++r) acc[r] += (floatV)(A_AT(rows[r], k)) * b;
        }
    }
    _Pragma("unroll") for (int r = 0; r < RM; ++r) {
        if (i0 + r >= M) break;
        floatV v = acc[r];
        if (bias) v += (floatV)(bias[i0 + r]);
        if (relu) v = PX_RELU(v);
        if (full) VSTORE(v, C + (size_t)(i0 + r) * N + c0);
        else VSTORE_PART(v, C + (size_t)(i0 + r) * N + c0, N - c0);
    }
}

/* ---- GEMM, tiled GPU form: tiles of A and B reused through local memory ----
 * Work-group (LX, LY) computes a BM x BN block of C (BM = LY*TM, BN = LX*TN); per step of BK
 * values of k it stages A[BM, BK] (transposed, so that a work-item's rows are contiguous) and
 * B[BK, BN] in local memory, and every work-item adds a TM x TN outer-product block in registers.
 * The next step's tiles are loaded from global memory into registers while this step computes.
 * With GT_VEC=1 (the host's promise that K, or M for a transposed A, N and KS are multiples of 4)
 * the global loads are float4 and two local buffers alternate, one barrier per step; otherwise
 * one buffer and two barriers per step (on the H200 two buffers were slower with element loads).
 * Work-item (x, y): rows i0 + y*4 + LY*4*a + r and columns c0 + x*4 + LX*4*b + c
 * (a < TM/4, b < TN/4, r, c < 4), so that its local loads are float4 and neighbours' loads are
 * contiguous.  Elements past M, N or K load as zeros; stores are guarded.  Each C element
 * adds its k terms in order, one multiply-add at a time (as gemm does).  Split-K as in gemm
 * (KS, slice z = group z).  Local memory: 4*BK*(BM + 4 + BN) bytes per buffer.  Loops per
 * work-item: at most 2 * (GT_NA + GT_NB) + BK + 1 per step, GT_NA + GT_NB + TM*TN/4 besides.
 * O(M N K). */
#ifndef TM
#define TM 8
#endif
#ifndef TN
#define TN 8
#endif
#ifndef BK
#define BK 8
#endif
#ifndef GT_VEC
#define GT_VEC 0
#endif
#define GT_BM (LY * TM)
#define GT_BN (LX * TN)
#define GT_ALD (GT_BM + 4)                       /* A tile's row stride: spreads a row's stores */
#define GT_AS (BK * GT_ALD)                      /* floats of one A buffer */
#define GT_BS (BK * GT_BN)
#define GT_NA ((GT_BM * BK) / (LX * LY))         /* A elements a work-item stages per step */
#define GT_NB ((BK * GT_BN) / (LX * LY))         /* B elements */
#define GT_NBUF (GT_VEC + 1)                     /* local buffers of each tile */
#if GT_VEC
#define GT_NL (GT_NA / 4)                        /* its float4 loads of A, of B */
#define GT_NLB (GT_NB / 4)
#else
#define GT_NL GT_NA
#define GT_NLB GT_NB
#endif

__kernel __attribute__((reqd_work_group_size(LX, LY, 1)))
void gemm_tile(const int M, const int N, const int K,
               __global const float *restrict A, __global const float *restrict B,
               __global float *restrict C, __global const float *restrict bias, const int relu,
               const int KS)
{
    __local float4 As4[GT_NBUF * GT_AS / 4];
    __local float4 Bs4[GT_NBUF * GT_BS / 4];
    __local float *As = (__local float *)As4;
    __local float *Bs = (__local float *)Bs4;
    const int x = get_local_id(0), y = get_local_id(1);
    const int tid = y * LX + x;
    const int i0 = get_group_id(1) * GT_BM, c0 = get_group_id(0) * GT_BN;
    const int KK = PX_MIN(KS, K - (int)get_group_id(2) * KS);
    GEMM_SLICE(get_group_id(2), get_group_id(2) * KS);
    float4 acc[TM][TN / 4];
    _Pragma("unroll") for (int r = 0; r < TM; ++r)
        _Pragma("unroll") for (int b = 0; b < TN / 4; ++b) acc[r][b] = (float4)(0.0f);
#if GT_VEC
    float4 ra[GT_NL], rb[GT_NLB];
#if TRANS_A                                       /* A stored [K, M]: float4 along M */
#define GT_A_AT(e) const int kk = (e) / (GT_BM / 4), r = ((e) % (GT_BM / 4)) * 4
#define GT_A_LOAD(kq, i) (i < M && kq < KK ? *(const __global float4 *)(A + (size_t)(kq) * M + (i)) : (float4)(0.0f))
#define GT_A_STORE(buf, q) { GT_A_AT(tid + (q) * LX * LY); As4[((buf) * GT_AS + kk * GT_ALD + r) / 4] = ra[q]; }
#else                                             /* A stored [M, K]: float4 along K */
#define GT_A_AT(e) const int r = (e) / (BK / 4), kk = ((e) % (BK / 4)) * 4
#define GT_A_LOAD(kq, i) (i < M && kq < KK ? *(const __global float4 *)(A + (size_t)(i) * K + (kq)) : (float4)(0.0f))
#define GT_A_STORE(buf, q) { GT_A_AT(tid + (q) * LX * LY); __local float *d_ = As + (buf) * GT_AS + kk * GT_ALD + r; \
    d_[0] = ra[q].s0; d_[GT_ALD] = ra[q].s1; d_[2 * GT_ALD] = ra[q].s2; d_[3 * GT_ALD] = ra[q].s3; }
#endif
#define GT_FETCH(kb)                                                                           \
    _Pragma("unroll") for (int q = 0; q < GT_NL; ++q) {                                        \
        GT_A_AT(tid + q * LX * LY);                                                            \
        ra[q] = GT_A_LOAD((kb) + kk, i0 + r);                                                  \
    }                                                                                          \
    _Pragma("unroll") for (int q = 0; q < GT_NLB; ++q) {                                       \
        const int e = tid + q * LX * LY, kq = (kb) + e / (GT_BN / 4), j = c0 + (e % (GT_BN / 4)) * 4; \
        rb[q] = (kq < KK && j < N) ? *(const __global float4 *)(B + (size_t)kq * N + j) : (float4)(0.0f); \
    }
#define GT_STORE(buf)                                                                          \
    _Pragma("unroll") for (int q = 0; q < GT_NL; ++q) GT_A_STORE(buf, q)                       \
    _Pragma("unroll") for (int q = 0; q < GT_NLB; ++q) Bs4[((buf) * GT_BS) / 4 + tid + q * LX * LY] = rb[q];
#else
    float ra[GT_NA], rb[GT_NB];
#if TRANS_A
#define GT_A_AT(e) const int kk = (e) / GT_BM, r = (e) % GT_BM       /* A stored [K, M]: along M */
#else
#define GT_A_AT(e) const int r = (e) / BK, kk = (e) % BK             /* A stored [M, K]: along K */
#endif
#define GT_FETCH(kb)                                                                           \
    _Pragma("unroll") for (int q = 0; q < GT_NA; ++q) {                                        \
        GT_A_AT(tid + q * LX * LY);                                                            \
        const int i = i0 + r, kq = (kb) + kk;                                                  \
        ra[q] = (i < M && kq < KK) ? A_AT(i, kq) : 0.0f;                                       \
    }                                                                                          \
    _Pragma("unroll") for (int q = 0; q < GT_NB; ++q) {                                        \
        const int e = tid + q * LX * LY, kq = (kb) + e / GT_BN, j = c0 + e % GT_BN;            \
        rb[q] = (kq < KK && j < N) ? B[(size_t)kq * N + j] : 0.0f;                             \
    }
#define GT_STORE(buf)                                                                          \
    _Pragma("unroll") for (int q = 0; q < GT_NA; ++q) {                                        \
        GT_A_AT(tid + q * LX * LY);                                                            \
        As[(buf) * GT_AS + kk * GT_ALD + r] = ra[q];                                           \
    }                                                                                          \
    _Pragma("unroll") for (int q = 0; q < GT_NB; ++q) Bs[(buf) * GT_BS + tid + q * LX * LY] = rb[q];
#endif
/* one step's outer products from local buffer buf */
#define GT_COMPUTE(buf)                                                                        \
    _Pragma("unroll") for (int kk = 0; kk < BK; ++kk) {                                        \
        float4 av[TM / 4], bv[TN / 4];                                                         \
        _Pragma("unroll") for (int a = 0; a < TM / 4; ++a)                                     \
            av[a] = As4[((buf) * GT_AS + kk * GT_ALD + a * LY * 4) / 4 + y];                   \
        _Pragma("unroll") for (int b = 0; b < TN / 4; ++b)                                     \
            bv[b] = Bs4[((buf) * GT_BS + kk * GT_BN + b * LX * 4) / 4 + x];                    \
        _Pragma("unroll") for (int a = 0; a < TM / 4; ++a) {                                   \
            _Pragma("unroll") for (int b = 0; b < TN / 4; ++b) {                               \
                acc[4 * a + 0][b] += (float4)(av[a].s0) * bv[b];                               \
                acc[4 * a + 1][b] += (float4)(av[a].s1) * bv[b];                               \
                acc[4 * a + 2][b] += (float4)(av[a].s2) * bv[b];                               \
                acc[4 * a + 3][b] += (float4)(av[a].s3) * bv[b];                               \
            }                                                                                  \
        }                                                                                      \
    }
    GT_FETCH(0)
#if GT_VEC   /* two buffers, one barrier per step (measured faster only with the float4 loads) */
    GT_STORE(0)
    barrier(CLK_LOCAL_MEM_FENCE);
    /* two steps per iteration, so that each step's buffer is a constant (its local addresses
     * then are immediate offsets: 0.745 against 0.893 ms on the H200's 4096^2 x 1024) */
    for (int kb = 0; kb < KK; kb += 2 * BK) {
        int more = kb + BK < KK;
        if (more) { GT_FETCH(kb + BK) }
        GT_COMPUTE(0)
        if (more) { GT_STORE(1) }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (!more) break;
        more = kb + 2 * BK < KK;
        if (more) { GT_FETCH(kb + 2 * BK) }
        GT_COMPUTE(1)
        if (more) { GT_STORE(0) }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#else        /* one buffer: store, wait, prefetch the next step, compute, wait */
    for (int kb = 0; kb < KK; kb += BK) {
        barrier(CLK_LOCAL_MEM_FENCE);
        GT_STORE(0)
        barrier(CLK_LOCAL_MEM_FENCE);
        if (kb + BK < KK) { GT_FETCH(kb + BK) }
        GT_COMPUTE(0)
    }
#endif
#undef GT_FETCH
#undef GT_STORE
#undef GT_COMPUTE
    _Pragma("unroll") for (int a = 0; a < TM / 4; ++a) {
        _Pragma("unroll") for (int r = 0; r < 4; ++r) {
            const int i = i0 + a * LY * 4 + y * 4 + r;
            if (i >= M) continue;
            const float bi = bias ? bias[i] : 0.0f;
            _Pragma("unroll") for (int b = 0; b < TN / 4; ++b) {
                const int j = c0 + b * LX * 4 + x * 4;
                float4 v = acc[4 * a + r][b] + (float4)(bi);
                if (relu) v = v > (float4)(0.0f) ? v : (float4)(0.0f);
                __global float *c = C + (size_t)i * N + j;
                if (j + 4 <= N) { c[0] = v.s0; c[1] = v.s1; c[2] = v.s2; c[3] = v.s3; }
                else {
                    if (j < N) c[0] = v.s0;
                    if (j + 1 < N) c[1] = v.s1;
                    if (j + 2 < N) c[2] = v.s2;
                }
            }
        }
    }
}

#ifndef NV
#define NV 2
#endif

/* gemm_blk's inner loop over k, with LOADB(j) giving the j-th vector of B's row k at c0. */
#define GEMM_BLK_ACCUMULATE(LOADB)                                                            \
    for (int k = 0; k < KK; ++k) {                                                             \
        __global const float *b = B + (size_t)k * N + c0;                                      \
        floatV bv[NV];                                                                         \
        _Pragma("unroll") for (int j = 0; j < NV; ++j) LOADB(j);                               \
        _Pragma("unroll") for (int r = 0; r < RM; ++r) {                                       \
            const floatV a = (floatV)(A_AT(rows[r], k));                                       \
            _Pragma("unroll") for (int j = 0; j < NV; ++j) acc[r][j] += a * bv[j];              \
        }                                                                                      \
    }
#define GEMM_BLK_LOAD_FULL(j) bv[j] = VLOAD(b + (j) * VEC)
#define GEMM_BLK_LOAD_EDGE(j)                                                                 \
    if (c0 + ((j) + 1) * VEC <= N) {                                                           \
        bv[j] = VLOAD(b + (j) * VEC);                                                          \
    } else {                                                                                   \
        float t[VEC];                                                                          \
        _Pragma("unroll") for (int l = 0; l < VEC; ++l)                                        \
            t[l] = c0 + (j) * VEC + l < N ? b[(j) * VEC + l] : 0.0f;                           \
        bv[j] = VLOAD_E(t);                                                                    \
    }

/* gemm_blk's and gemm_pk's epilogue: the rows of the block below M, plus bias, ReLU, stored
 * up to column N. */
#define GEMM_BLK_STORE                                                                        \
    _Pragma("unroll") for (int r = 0; r < RM; ++r) {                                           \
        if (i0 + r >= M) break;                                                                \
        const floatV bb = (floatV)(bias ? bias[i0 + r] : 0.0f);                                \
        __global float *c = C + (size_t)(i0 + r) * N + c0;                                     \
        _Pragma("unroll") for (int j = 0; j < NV; ++j) {                                       \
            floatV v = acc[r][j] + bb;                                                         \
            if (relu) v = PX_RELU(v);                                                          \
            if (c0 + (j + 1) * VEC <= N) {                                                     \
                VSTORE(v, c + j * VEC);                                                        \
            } else {                                                                           \
                float t[VEC];                                                                  \
                VSTORE_E(v, t);                                                                \
                for (int l = 0; l < VEC && c0 + j * VEC + l < N; ++l) c[j * VEC + l] = t[l];   \
            }                                                                                  \
        }                                                                                      \
    }

/* C[M, N] = op(A)[M, K] B[K, N] (+ bias[M] per row) (relu)      B[K, N], C[M, N]; A[M, K], or
 * A[K, M] with TRANS_A.  Work-item (x, y): rows [x*RM, x*RM + RM), columns
 * [y*NV*VEC, (y+1)*NV*VEC); per k it loads NV vectors of B and RM scalars of A for RM*NV
 * vector multiply-adds.  Row blocks vary fastest, so neighbouring work-items share one
 * K x NV*VEC panel of B in cache.  Blocks cut by the matrix edge keep the blocking (clamped
 * row loads, zero-filled column loads, guarded stores).
 * Split-K (PX_SPLIT, common.h): a launch with S slices in dimension 2 gives slice z the k in
 * [z*KS, z*KS + KS), KS = ceil(K / S), written to C + z*M*N (see GEMM_SLICE).
 * O(M N K). */
__kernel __attribute__((reqd_work_group_size(LX, 1, 1)))
void gemm_blk(const int M, const int N, const int K,
              __global const float *restrict A, __global const float *restrict B,
              __global float *restrict C, __global const float *restrict bias, const int relu)
{
    const int i0 = get_global_id(0) * RM;
    const int c0 = get_global_id(1) * (NV * VEC);
    if (i0 >= M || c0 >= N) return;
    const int KS = PX_PART(K, PX_SLICES(2));
    const int KK = PX_MAX(0, PX_MIN(KS, K - PX_SLICE(2) * KS));
    GEMM_SLICE(PX_SLICE(2), PX_SLICE(2) * KS);
    /* Rows past M load row M-1 (their sums are not stored); in a block cut by the right edge,
     * columns past N load as zeros and are not stored.  Interior blocks, the common case, take
     * plain vector loads and stores. */
    const int interior = i0 + RM <= M && c0 + NV * VEC <= N;
    int rows[RM];
    _Pragma("unroll") for (int r = 0; r < RM; ++r) rows[r] = PX_MIN(i0 + r, M - 1);
    floatV acc[RM][NV];
    _Pragma("unroll") for (int r = 0; r < RM; ++r)
        _Pragma("unroll") for (int j = 0; j < NV; ++j) acc[r][j] = (floatV)(0.0f);
    if (interior) {
        GEMM_BLK_ACCUMULATE(GEMM_BLK_LOAD_FULL);
    } else {
        GEMM_BLK_ACCUMULATE(GEMM_BLK_LOAD_EDGE);
    }
    GEMM_BLK_STORE;
}

/* ---- the CPU form of large products (Tuning.gemm_pack): both operands first copied into the
 * order in which gemm_pk's work-items read them, so that a work-item streams two contiguous
 * arrays instead of RM rows of A and a column panel of B, whose rows lie N floats apart (on a CPU
 * a new page at every k: TLB and cache-set misses) ---- */

/* P[q, k, w] = S(q*PW + w, k), 0 where q*PW + w >= R: the PW rows of block q of the R x K operand
 * S, interleaved along k; S(i, k) = X[i*K + k] ([R, K]: A, or B stored [N, K]) or X[k*R + i]
 * (PACK_T = 1, [K, R]: B, or A stored [K, M]).  gemm_pk's operands: Ap = rows of op(A) in
 * blocks of RM, Bp = columns of op(B) in panels of NV*VEC.  Work-item (c, q) copies k in
 * [c*kc, c*kc + kc) (few large work-items: one per value cost PoCL 2-8x more).  O(R K). */
__kernel void gemm_pack(const int R, const int K, const int kc, __global const float *restrict X,
                        __global float *restrict P)
{
    const int k0 = get_global_id(0) * kc, q = get_global_id(1);
    const int k1 = PX_MIN(k0 + kc, K);
    __global float *o = P + (size_t)q * K * PW;
    for (int k = k0; k < k1; ++k) {
        _Pragma("unroll") for (int w = 0; w < PW; ++w) {
            const int i = q * PW + w;
#if PACK_T
            o[k * PW + w] = i < R ? X[(size_t)k * R + i] : 0.0f;
#else
            o[k * PW + w] = i < R ? X[(size_t)i * K + k] : 0.0f;
#endif
        }
    }
}

/* C[M, N] = op(A) op(B) (+ bias[M] per row) (relu) from Ap and Bp (gemm_pack):
 * work-item (x, y) computes the RM x NV*VEC block of C that gemm_blk's work-item (x, y) does, with
 * the same multiply-adds in the same order within a slice of k, reading Ap's block x and Bp's
 * panel y front to back.  Split-K as gemm_blk's (the host's slices are shorter).  O(M N K). */
__kernel __attribute__((reqd_work_group_size(LX, 1, 1)))
void gemm_pk(const int M, const int N, const int K,
             __global const float *restrict Ap, __global const float *restrict Bp,
             __global float *restrict C, __global const float *restrict bias, const int relu)
{
    const int i0 = get_global_id(0) * RM;
    const int c0 = get_global_id(1) * (NV * VEC);
    if (i0 >= M || c0 >= N) return;
    GEMM_K_SLICE(PX_PART(K, PX_SLICES(2)));
    __global const float *a = Ap + ((size_t)get_global_id(0) * K + kb) * RM;
    __global const float *b = Bp + ((size_t)get_global_id(1) * K + kb) * (NV * VEC);
    floatV acc[RM][NV];
    _Pragma("unroll") for (int r = 0; r < RM; ++r)
        _Pragma("unroll") for (int j = 0; j < NV; ++j) acc[r][j] = (floatV)(0.0f);
    for (int k = 0; k < KK; ++k) {
        floatV bv[NV];
        _Pragma("unroll") for (int j = 0; j < NV; ++j) bv[j] = ((__global const floatV *)b)[k * NV + j];
        _Pragma("unroll") for (int r = 0; r < RM; ++r) {
            const floatV av = (floatV)(a[k * RM + r]);
            _Pragma("unroll") for (int j = 0; j < NV; ++j) acc[r][j] += av * bv[j];
        }
    }
    GEMM_BLK_STORE;
}

#ifndef RN
#define RN 2
#endif

/* C[M, N] = A[M, K] B[N, K]^T (+ bias[M] per row) (relu): every output is a dot product of a
 * row of A and a row of B, both contiguous in k, so the product runs without transposing B
 * (the CPU form of NT products: weight gradients, K = batch or batch x output pixels).
 * Work-item (x, y): rows [x*RM, x*RM + RM) of A and [y*RN, y*RN + RN) of B; RM*RN vector
 * accumulators along k, summed across lanes at the end.  Rows past M or N load row M-1 or
 * N-1 and are not stored.  Split-K as gemm_blk's, with KS rounded up to a multiple of VEC.
 * O(M N K). */
__kernel __attribute__((reqd_work_group_size(LX, 1, 1)))
void gemm_nt_blk(const int M, const int N, const int K,
                 __global const float *restrict A, __global const float *restrict B,
                 __global float *restrict C, __global const float *restrict bias, const int relu)
{
    const int i0 = get_global_id(0) * RM;
    const int j0 = get_global_id(1) * RN;
    if (i0 >= M || j0 >= N) return;
    GEMM_K_SLICE(PX_VEC_UP(PX_PART(K, PX_SLICES(2))));
    __global const float *a[RM];
    __global const float *b[RN];
    _Pragma("unroll") for (int r = 0; r < RM; ++r) a[r] = A + (size_t)PX_MIN(i0 + r, M - 1) * K + kb;
    _Pragma("unroll") for (int c = 0; c < RN; ++c) b[c] = B + (size_t)PX_MIN(j0 + c, N - 1) * K + kb;
    floatV acc[RM][RN];
    _Pragma("unroll") for (int r = 0; r < RM; ++r)
        _Pragma("unroll") for (int c = 0; c < RN; ++c) acc[r][c] = (floatV)(0.0f);
    const int kv = KK / VEC * VEC;
    for (int k = 0; k < kv; k += VEC) {
        floatV av[RM], bv[RN];
        _Pragma("unroll") for (int r = 0; r < RM; ++r) av[r] = VLOAD(a[r] + k);
        _Pragma("unroll") for (int c = 0; c < RN; ++c) bv[c] = VLOAD(b[c] + k);
        _Pragma("unroll") for (int r = 0; r < RM; ++r)
            _Pragma("unroll") for (int c = 0; c < RN; ++c) acc[r][c] += av[r] * bv[c];
    }
    _Pragma("unroll") for (int r = 0; r < RM; ++r) {
        if (i0 + r >= M) break;
        const float bb = bias ? bias[i0 + r] : 0.0f;
        _Pragma("unroll") for (int c = 0; c < RN; ++c) {
            if (j0 + c >= N) break;
            float v = px_hsum(acc[r][c]);
            for (int k = kv; k < KK; ++k) v += a[r][k] * b[c][k];
            v += bb;
            C[(size_t)(i0 + r) * N + j0 + c] = relu ? (v > 0.0f ? v : 0.0f) : v;
        }
    }
}

/* out[q] = sum_{z<S} part[z*MN + q] (+ bias[q / N]) (relu), the slices added in order:
 * the reduction of a split-K gemm.      part[S, MN], out[MN], bias[MN / N] or NULL. */
__kernel void gemm_sum_slices(const int MN, const int N, const int S,
                              __global const float *restrict part, __global float *restrict out,
                              __global const float *restrict bias, const int relu)
{
    const int q = get_global_id(0);
    if (q >= MN) return;
    float acc = 0.0f;
    for (int z = 0; z < S; ++z) acc += part[(size_t)z * MN + q];
    if (bias) acc += bias[q / N];
    out[q] = relu ? (acc > 0.0f ? acc : 0.0f) : acc;
}

#define TT 16
/* out[n, m] = in[m, n]^T through a TT x TT tile in local memory (coalesced on GPUs). */
__kernel __attribute__((reqd_work_group_size(TT, TT, 1)))
void transpose(const int m, const int n, __global const float *restrict in,
               __global float *restrict out)
{
    __local float tile[TT][TT + 1];
    const int bx = get_group_id(0) * TT, by = get_group_id(1) * TT;
    const int tx = get_local_id(0), ty = get_local_id(1);
    if (by + ty < m && bx + tx < n) tile[ty][tx] = in[(size_t)(by + ty) * n + bx + tx];
    barrier(CLK_LOCAL_MEM_FENCE);
    if (bx + ty < n && by + tx < m) out[(size_t)(bx + ty) * m + by + tx] = tile[tx][ty];
}

/* ---- element-wise, over flat float32 arrays of n elements ---- */

/* Soft-threshold S_tau(z) = sign(z) max(|z| - tau, 0), written as an exact +0 when |z| <= tau.
 * tau = tau_scale * (Tau ? Tau[q] : 1)      z[n], out[n], Tau[n] or NULL.  Safe in place. */
__kernel void soft_threshold(const int n, __global const float *z, __global float *out,
                             const float tau_scale, __global const float *restrict Tau)
{
    const int q = get_global_id(0);
    if (q >= n) return;
    const float t = Tau ? tau_scale * Tau[q] : tau_scale;
    const float v = z[q];
    out[q] = fabs(v) > t ? v - copysign(t, v) : 0.0f;
}
