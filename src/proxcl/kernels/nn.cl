/* Layer kernels for proxcl's networks (OpenCL C 1.2, float32, no atomics).
 *
 * Activation layouts (feature-major, DESIGN.md section 2):
 *   flat    X[F, N]            one row per feature, the batch along the row;
 *   spatial X[C, N, H, W]      channel-major, so a convolution is W[O, C*kh*kw] @ cols.
 * Convolution and pooling geometry comes in as ints: kernel (KH, KW), stride (SH, SW),
 * padding (PH, PW); output sizes Ho = (H + 2 PH - KH) / SH + 1, likewise Wo.
 * Build defines: VEC (vector width, common.h), RL (row-sum work-group size),
 * XL (softmax work-group size). */

#ifndef RL
#define RL 64
#endif
#ifndef XL
#define XL 64
#endif

/* ---- convolution as a product: im2col and its adjoint (col2im, written as a gather) ---- */

/* cols[C*KH*KW, N*Ho*Wo] from X[C, N, H, W]:
 *   cols[(c*KH + ky)*KW + kx, (n*Ho + oy)*Wo + ox] = X[c, n, oy*SH - PH + ky, ox*SW - PW + kx]
 * (zero outside the image).  Work-item (q, r): one element.  O(C KH KW N Ho Wo). */
__kernel void im2col(const int C, const int N, const int H, const int W,
                     const int KH, const int KW, const int SH, const int SW,
                     const int PH, const int PW, const int Ho, const int Wo,
                     __global const float *restrict X, __global float *restrict cols)
{
    const int q = get_global_id(0);
    const int r = get_global_id(1);
    const int NP = N * Ho * Wo;
    if (q >= NP || r >= C * KH * KW) return;
    const int kx = r % KW, t = r / KW;
    const int ky = t % KH, c = t / KH;
    const int ox = q % Wo, u = q / Wo;
    const int oy = u % Ho, n = u / Ho;
    const int iy = oy * SH - PH + ky, ix = ox * SW - PW + kx;
    float v = 0.0f;
    if (iy >= 0 && iy < H && ix >= 0 && ix < W)
        v = X[(((size_t)c * N + n) * H + iy) * W + ix];
    cols[(size_t)r * NP + q] = v;
}

/* dX[C, N, H, W] = col2im(dcols[C*KH*KW, N*Ho*Wo]): every input pixel sums the entries of
 * dcols that im2col copied it into (no atomics).  Work-item (q, c), q = (n*H + iy)*W + ix.
 * O(C N H W KH KW). */
__kernel void col2im(const int C, const int N, const int H, const int W,
                     const int KH, const int KW, const int SH, const int SW,
                     const int PH, const int PW, const int Ho, const int Wo,
                     __global const float *restrict dcols, __global float *restrict dX)
{
    const int q = get_global_id(0);
    const int c = get_global_id(1);
    if (q >= N * H * W || c >= C) return;
    const int ix = q % W, t = q / W;
    const int iy = t % H, n = t / H;
    const int NP = N * Ho * Wo;
    float acc = 0.0f;
    for (int ky = 0; ky < KH; ++ky) {
        const int y = iy + PH - ky;
        if (y < 0 || y % SH) continue;
        const int oy = y / SH;
        if (oy >= Ho) continue;
        for (int kx = 0; kx < KW; ++kx) {
            const int x = ix + PW - kx;
            if (x < 0 || x % SW) continue;
            const int ox = x / SW;
            if (ox >= Wo) continue;
            acc += dcols[(size_t)((c * KH + ky) * KW + kx) * NP + (n * Ho + oy) * Wo + ox];
        }
    }
    dX[(size_t)c * N * H * W + q] = acc;
}

/* ---- max pooling ---- */

/* Y[C, N, Ho, Wo] = max over each window of X[C, N, H, W] (padding counts as -inf), then
 * ReLU when relu != 0.  Idx[C*N*Ho*Wo] (may be NULL): the winner's position iy*W + ix in its
 * image, the first maximum in row-major window order (as PyTorch).  Work-item (q, c),
 * q = (n*Ho + oy)*Wo + ox.  O(C N Ho Wo KH KW). */
__kernel void maxpool_fwd(const int C, const int N, const int H, const int W,
                          const int KH, const int KW, const int SH, const int SW,
                          const int PH, const int PW, const int Ho, const int Wo,
                          __global const float *restrict X, __global float *restrict Y,
                          __global int *restrict Idx, const int relu)
{
    const int q = get_global_id(0);
    const int c = get_global_id(1);
    if (q >= N * Ho * Wo || c >= C) return;
    const int ox = q % Wo, t = q / Wo;
    const int oy = t % Ho, n = t / Ho;
    __global const float *x = X + ((size_t)c * N + n) * H * W;
    float best = -INFINITY;
    int arg = -1;
    for (int ky = 0; ky < KH; ++ky) {
        const int iy = oy * SH - PH + ky;
        if (iy < 0 || iy >= H) continue;
        for (int kx = 0; kx < KW; ++kx) {
            const int ix = ox * SW - PW + kx;
            if (ix < 0 || ix >= W) continue;
            const float v = x[iy * W + ix];
            if (v > best || arg < 0) { best = v; arg = iy * W + ix; }
        }
    }
    const size_t o = (size_t)c * N * Ho * Wo + q;
    Y[o] = relu ? fmax(best, 0.0f) : best;
    if (Idx) Idx[o] = arg;
}

/* dX[C, N, H, W] from dY[C, N, Ho, Wo]: each input pixel sums dY over the windows that
 * chose it (Idx from maxpool_fwd); with relu != 0 windows whose output Y <= 0 pass nothing.
 * A gather over the at most ceil(KH/SH) * ceil(KW/SW) windows holding the pixel (no atomics).
 * Work-item (q, c), q = (n*H + iy)*W + ix.  O(C N H W). */
__kernel void maxpool_bwd(const int C, const int N, const int H, const int W,
                          const int KH, const int KW, const int SH, const int SW,
                          const int PH, const int PW, const int Ho, const int Wo,
                          __global const float *restrict dY, __global const int *restrict Idx,
                          __global const float *restrict Y, const int relu,
                          __global float *restrict dX)
{
    const int q = get_global_id(0);
    const int c = get_global_id(1);
    if (q >= N * H * W || c >= C) return;
    const int ix = q % W, t = q / W;
    const int iy = t % H, n = t / H;
    const int me = iy * W + ix;
    /* windows oy with oy*SH - PH <= iy <= oy*SH - PH + KH - 1 */
    const int ylo = max(0, (iy + PH - KH + SH) / SH), yhi = min(Ho - 1, (iy + PH) / SH);
    const int xlo = max(0, (ix + PW - KW + SW) / SW), xhi = min(Wo - 1, (ix + PW) / SW);
    const size_t base = ((size_t)c * N + n) * Ho * Wo;
    float acc = 0.0f;
    for (int oy = ylo; oy <= yhi; ++oy)
        for (int ox = xlo; ox <= xhi; ++ox) {
            const size_t o = base + oy * Wo + ox;
            if (Idx[o] == me && (!relu || Y[o] > 0.0f)) acc += dY[o];
        }
    dX[(size_t)c * N * H * W + q] = acc;
}

/* ---- element-wise: ReLU, dropout ---- */

/* Y[n] = max(X[n], 0).  Safe in place. */
__kernel void relu_fwd(const int n, __global const float *X, __global float *Y)
{
    const int q = get_global_id(0);
    if (q < n) Y[q] = fmax(X[q], 0.0f);
}

/* dX[n] = Y[n] > 0 ? dY[n] : 0, Y the ReLU's output.  Safe in place (dX = dY). */
__kernel void relu_bwd(const int n, __global const float *restrict Y, __global const float *dY,
                       __global float *dX)
{
    const int q = get_global_id(0);
    if (q < n) dX[q] = Y[q] > 0.0f ? dY[q] : 0.0f;
}

/* A 32-bit integer hash (a bijection with good avalanche). */
inline uint px_mix(uint x)
{
    x ^= x >> 16; x *= 0x7feb352dU;
    x ^= x >> 15; x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

/* Inverted dropout with a counter-based generator: element q is kept when
 * u(q) = mix(mix(q * golden + k0) ^ k1) / 2^32 >= p, and then scaled by 1 / (1 - p).
 * (k0, k1) name one draw (seed, layer, step), so the backward pass applies the very same
 * mask by running this kernel on dY.  X[n], Y[n]; safe in place. */
__kernel void dropout(const int n, __global const float *X, __global float *Y,
                      const uint k0, const uint k1, const float p, const float scale)
{
    const int q = get_global_id(0);
    if (q >= n) return;
    const uint h = px_mix(px_mix((uint)q * 0x9e3779b9U + k0) ^ k1);
    const float u = (float)(h >> 8) * (1.0f / 16777216.0f);
    Y[q] = u >= p ? X[q] * scale : 0.0f;
}

/* ---- layouts ---- */

/* Out[D0, D1, D2] (contiguous) = In at strides (S0, S1, S2):
 *   Out[i0, i1, i2] = In[i0*S0 + i1*S1 + i2*S2].
 * Covers NCHW -> CNHW (input), [C, N, H*W] -> [C, H*W, N] (flatten) and back.  O(D0 D1 D2). */
__kernel void permute3(const int D0, const int D1, const int D2,
                       const int S0, const int S1, const int S2,
                       __global const float *restrict In, __global float *restrict Out)
{
    const int q = get_global_id(0);
    if (q >= D0 * D1 * D2) return;
    const int i2 = q % D2, t = q / D2;
    const int i1 = t % D1, i0 = t / D1;
    Out[q] = In[(size_t)i0 * S0 + (size_t)i1 * S1 + (size_t)i2 * S2];
}

/* ---- bias gradient ---- */

/* db[m] = sum_j dY[i, j] over the rows of dY[m, n] (one work-group of RL per row).
 * With relu != 0, first dY[i, j] = Y[i, j] > 0 ? dY[i, j] : 0 in place (the backward of a
 * fused ReLU, Y[m, n] its output).  db may be NULL (then only the mask).  O(m n). */
__kernel __attribute__((reqd_work_group_size(RL, 1, 1)))
void bias_grad(const int m, const int n, __global float *restrict dY,
               __global const float *restrict Y, const int relu, __global float *restrict db)
{
    __local float part[RL];
    const int lid = get_local_id(0);
    const int i = get_group_id(0);
    float s = 0.0f;
    if (i < m) {
        __global float *d = dY + (size_t)i * n;
        __global const float *y = Y ? Y + (size_t)i * n : 0;
        if (relu) {
            for (int j = lid; j < n; j += RL) {
                const float v = y[j] > 0.0f ? d[j] : 0.0f;
                d[j] = v;
                s += v;
            }
        } else {
            floatV acc = (floatV)(0.0f);
            int j = lid * VEC;
            for (; j + VEC <= n; j += RL * VEC) acc += VLOAD(d + j);
            s = px_hsum(acc);
            for (int t = (n / VEC) * VEC + lid; t < n; t += RL) s += d[t];
        }
    }
    part[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = RL / 2; w > 0; w >>= 1) {
        if (lid < w) part[lid] += part[lid + w];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0 && i < m && db) db[i] = part[0];
}

/* ---- softmax cross-entropy, accuracy ---- */

/* Per sample n of the logits Z[K, N] (numerically stable: shifted by the column's max):
 *   P[k, n]  = softmax (if P != NULL);
 *   with labels L[N] != NULL:  loss_n = logsumexp(Z[:, n]) - Z[L[n], n],
 *   correct_n = (first argmax == L[n]), and if dZ != NULL, dZ[k, n] = gscale * (P[k, n] - [k == L[n]]).
 * Partial[2 g], Partial[2 g + 1]: the sums of loss_n and correct_n over work-group g (XL samples).
 * O(K N). */
__kernel __attribute__((reqd_work_group_size(XL, 1, 1)))
void softmax_xent(const int K, const int N, __global const float *restrict Z,
                  __global const int *restrict L, __global float *restrict dZ, const float gscale,
                  __global float *restrict P, __global float *restrict Partial)
{
    __local float ls[XL], cs[XL];
    const int lid = get_local_id(0);
    const int n = get_global_id(0);
    float loss = 0.0f, corr = 0.0f;
    if (n < N) {
        float mx = Z[n];
        int am = 0;
        for (int k = 1; k < K; ++k) {
            const float v = Z[(size_t)k * N + n];
            if (v > mx) { mx = v; am = k; }
        }
        float s = 0.0f;
        for (int k = 0; k < K; ++k) s += exp(Z[(size_t)k * N + n] - mx);
        const int y = L ? L[n] : -1;
        if (L) {
            loss = mx + log(s) - Z[(size_t)y * N + n];
            corr = am == y ? 1.0f : 0.0f;
        }
        if (P || dZ) {
            const float inv = 1.0f / s;
            for (int k = 0; k < K; ++k) {
                const float p = exp(Z[(size_t)k * N + n] - mx) * inv;
                if (P) P[(size_t)k * N + n] = p;
                if (dZ) dZ[(size_t)k * N + n] = gscale * (k == y ? p - 1.0f : p);
            }
        }
    }
    ls[lid] = loss;
    cs[lid] = corr;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = XL / 2; w > 0; w >>= 1) {
        if (lid < w) { ls[lid] += ls[lid + w]; cs[lid] += cs[lid + w]; }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0 && Partial) {
        Partial[2 * get_group_id(0)] = ls[0];
        Partial[2 * get_group_id(0) + 1] = cs[0];
    }
}
