/* Dense kernels: a register-blocked GEMM with a fused bias + ReLU epilogue, and a tiled
 * transpose.  Row-major storage.  Build defines: VEC (columns per work-item, a vector),
 * RM (rows per work-item), LX, LY (fixed local size), TRANS_A (0/1). */

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

#if TRANS_A
#define A_AT(i, k) A[(size_t)(k) * M + (i)]   /* A stored [K, M] */
#else
#define A_AT(i, k) A[(size_t)(i) * K + (k)]   /* A stored [M, K] */
#endif

/* C[M, N] = op(A)[M, K] B[K, N] (+ bias[M] per row) (relu)      B[K, N], C[M, N].
 * Work-item (x, y): rows [y*RM, y*RM + RM), columns [x*VEC, x*VEC + VEC).  O(M N K). */
__kernel __attribute__((reqd_work_group_size(LX, LY, 1)))
void gemm(const int M, const int N, const int K,
          __global const float *restrict A, __global const float *restrict B,
          __global float *restrict C, __global const float *restrict bias, const int relu)
{
    const int c0 = get_global_id(0) * VEC;
    const int i0 = get_global_id(1) * RM;
    if (i0 >= M || c0 >= N) return;
    int rows[RM];
    for (int r = 0; r < RM; ++r) rows[r] = min(i0 + r, M - 1);   /* clamp: loads stay in range */
    if (c0 + VEC <= N) {
        floatV acc[RM];
        for (int r = 0; r < RM; ++r) acc[r] = (floatV)(0.0f);
        for (int k = 0; k < K; ++k) {
            const floatV b = VLOAD(B + (size_t)k * N + c0);
            for (int r = 0; r < RM; ++r) acc[r] += (floatV)(A_AT(rows[r], k)) * b;
        }
        for (int r = 0; r < RM && i0 + r < M; ++r) {
            floatV v = acc[r];
            if (bias) v += (floatV)(bias[i0 + r]);
            if (relu) v = fmax(v, (floatV)(0.0f));
            VSTORE(v, C + (size_t)(i0 + r) * N + c0);
        }
    } else {
        for (int r = 0; r < RM && i0 + r < M; ++r) {
            for (int c = c0; c < N; ++c) {
                float acc = 0.0f;
                for (int k = 0; k < K; ++k) acc += A_AT(i0 + r, k) * B[(size_t)k * N + c];
                if (bias) acc += bias[i0 + r];
                if (relu) acc = fmax(acc, 0.0f);
                C[(size_t)(i0 + r) * N + c] = acc;
            }
        }
    }
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
