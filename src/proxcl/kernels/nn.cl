/* Layer kernels for proxcl's networks (OpenCL C 1.2, float32, no atomics).
 *
 * Activation layouts (feature-major, DESIGN.md section 2):
 *   flat    X[F, N]            one row per feature, the batch along the row;
 *   spatial X[C, N, H, W]      channel-major, so a convolution is W[O, C*kh*kw] @ cols.
 * Convolution and pooling geometry: kernel (KH, KW), stride (SH, SW), padding (PH, PW);
 * output sizes Ho = (H + 2 PH - KH) / SH + 1, likewise Wo.
 * Build defines: VEC (vector width, common.h), RL (row-sum work-group size),
 * XL (softmax work-group size).  Host module: proxcl/ops/nn.py. */

#ifndef RL
#define RL 64
#endif
#ifndef XL
#define XL 64
#endif

/* Window geometry comes in a small int32 array G (made once per layer and batch size, so a
 * launch sets few arguments):  G[0..11] = C, N, H, W, KH, KW, SH, SW, PH, PW, Ho, Wo (input
 * X[C, N, H, W], a KH x KW window of stride SH, SW and padding PH, PW, output Ho x Wo);
 * for csr_conv_pool also G[12..20] = QH, QW, QSH, QSW, QPH, QPW, Hp, Wp (the pooling after
 * the convolution) and O (output channels). */
#define GEO_CONV const int C = G[0], N = G[1], H = G[2], W = G[3], KH = G[4], KW = G[5], \
    SH = G[6], SW = G[7], PH = G[8], PW = G[9], Ho = G[10], Wo = G[11]
#define GEO_POOL const int QH = G[12], QW = G[13], QSH = G[14], QSW = G[15], QPH = G[16], \
    QPW = G[17], Hp = G[18], Wp = G[19], O = G[20]

/* The row kernels (im2col, col2im, maxpool_fwd/bwd; maxpool_bwd_tiles: the band of rows of one
 * output row) give each work-item one image row, or built
 * with PX_SPLIT (common.h) and S pieces in launch dimension 2, the piece z of its columns: the
 * columns [x0, x1) of a row of width w, so the index arithmetic (integer divisions) is paid
 * once per piece, not once per element, and a work-item's loops stay within the host's budget
 * (llvmpipe ends them silently after 65,535 iterations in all). */
#define PX_COL_PIECE(w)                                                                        \
    const int CW_ = PX_PART((w), PX_SLICES(2));                                                \
    const int x0 = PX_SLICE(2) * CW_, x1 = PX_MIN((w), x0 + CW_)

/* ---- convolution as a product: im2col and its adjoint (col2im, written as a gather) ----
 * Both work on a chunk of the batch: the N samples n0 .. n0+N-1 of an X (or dX) of NX samples
 * (n0 = 0, NX = N for the whole batch); cols holds the chunk's columns only. */

/* cols[C*KH*KW, N*Ho*Wo] from X[C, NX, H, W]:
 *   cols[(c*KH + ky)*KW + kx, (n*Ho + oy)*Wo + ox] = X[c, n0 + n, oy*SH - PH + ky, ox*SW - PW + kx]
 * (zero outside the image).  Work-item (g, r), g = n*Ho + oy: one row of Wo values.
 * O(C KH KW N Ho Wo). */
__kernel void im2col(__global const int *restrict G, __global const float *restrict X,
                     __global float *restrict cols, const int n0, const int NX)
{
    GEO_CONV;
    const int g = get_global_id(0);
    const int r = get_global_id(1);
    if (g >= N * Ho || r >= C * KH * KW) return;
    const int kx = r % KW, t = r / KW;
    const int ky = t % KH, c = t / KH;
    const int oy = g % Ho, n = g / Ho;
    const int iy = oy * SH - PH + ky;
    PX_COL_PIECE(Wo);
    __global float *out = cols + (size_t)r * N * Ho * Wo + (size_t)g * Wo;
    if (iy < 0 || iy >= H) {
        for (int ox = x0; ox < x1; ++ox) out[ox] = 0.0f;
        return;
    }
    __global const float *x = X + (((size_t)c * NX + n0 + n) * H + iy) * W - PW + kx;
    if (SW == 1 && PW == 0 && kx + Wo <= W) {
        for (int ox = x0; ox < x1; ++ox) out[ox] = x[ox];
    } else {
        for (int ox = x0; ox < x1; ++ox) {
            const int ix = ox * SW - PW + kx;
            out[ox] = (ix >= 0 && ix < W) ? x[(size_t)ox * SW] : 0.0f;
        }
    }
}

/* dX[C, NX, H, W] (samples n0 .. n0+N-1) = col2im(dcols[C*KH*KW, N*Ho*Wo]): every input pixel
 * sums the entries of dcols that im2col copied it into (no atomics).  Work-item (g, c),
 * g = n*H + iy: one row.  O(C N H W KH KW). */
__kernel void col2im(__global const int *restrict G, __global const float *restrict dcols,
                     __global float *restrict dX, const int n0, const int NX)
{
    GEO_CONV;
    const int g = get_global_id(0);
    const int c = get_global_id(1);
    if (g >= N * H || c >= C) return;
    const int iy = g % H, n = g / H;
    PX_COL_PIECE(W);
    const size_t NP = (size_t)N * Ho * Wo;
    __global float *dx = dX + ((size_t)c * NX + n0 + n) * H * W + (size_t)iy * W;
    for (int ix = x0; ix < x1; ++ix) dx[ix] = 0.0f;
    for (int ky = 0; ky < KH; ++ky) {
        const int y = iy + PH - ky;
        if (y < 0 || y % SH) continue;
        const int oy = y / SH;
        if (oy >= Ho) continue;
        for (int kx = 0; kx < KW; ++kx) {
            __global const float *d = dcols + (size_t)((c * KH + ky) * KW + kx) * NP
                                      + (size_t)(n * Ho + oy) * Wo;
            if (SW == 1) {
                /* ox = ix + PW - kx in [0, Wo) */
                const int lo = PX_MAX(x0, kx - PW), hi = PX_MIN(x1, Wo + kx - PW);
                for (int ix = lo; ix < hi; ++ix) dx[ix] += d[ix + PW - kx];
            } else {
                for (int ix = x0; ix < x1; ++ix) {
                    const int x = ix + PW - kx;
                    if (x < 0 || x % SW) continue;
                    const int ox = x / SW;
                    if (ox < Wo) dx[ix] += d[ox];
                }
            }
        }
    }
}

/* ---- max pooling ---- */

/* Y[C, N, Ho, Wo] = max over each window of X[C, N, H, W] (padding counts as -inf), then
 * ReLU when relu != 0.  Idx[C*N*Ho*Wo] (may be NULL): the winner's position iy*W + ix in its
 * image, the first maximum in row-major window order (as PyTorch).  Work-item (g, c),
 * g = n*Ho + oy: one output row.  O(C N Ho Wo KH KW). */
__kernel void maxpool_fwd(__global const int *restrict G, __global const float *restrict X,
                          __global float *restrict Y,
                          __global int *restrict Idx, const int relu)
{
    GEO_CONV;
    const int g = get_global_id(0);
    const int c = get_global_id(1);
    if (g >= N * Ho || c >= C) return;
    const int oy = g % Ho, n = g / Ho;
    __global const float *x = X + ((size_t)c * N + n) * H * W;
    const size_t o0 = ((size_t)c * N * Ho + g) * Wo;
    const int ylo = PX_MAX(0, oy * SH - PH), yhi = PX_MIN(H, oy * SH - PH + KH);
    PX_COL_PIECE(Wo);
    for (int ox = x0; ox < x1; ++ox) {
        const int xlo = PX_MAX(0, ox * SW - PW), xhi = PX_MIN(W, ox * SW - PW + KW);
        float best = x[ylo * W + xlo];
        int arg = ylo * W + xlo;
        for (int iy = ylo; iy < yhi; ++iy)
            for (int ix = xlo; ix < xhi; ++ix) {
                const float v = x[iy * W + ix];
                if (v > best) { best = v; arg = iy * W + ix; }
            }
        Y[o0 + ox] = relu ? (best > 0.0f ? best : 0.0f) : best;
        if (Idx) Idx[o0 + ox] = arg;
    }
}

/* dX[C, N, H, W] from dY[C, N, Ho, Wo]: each input pixel sums dY over the windows that
 * chose it (Idx from maxpool_fwd); with relu != 0 windows whose output Y <= 0 pass nothing.
 * A gather over the at most ceil(KH/SH) * ceil(KW/SW) windows holding the pixel (no atomics).
 * Work-item (g, c), g = n*H + iy: one input row.  O(C N H W). */
__kernel void maxpool_bwd(__global const int *restrict G, __global const float *restrict dY,
                          __global const int *restrict Idx,
                          __global const float *restrict Y, const int relu,
                          __global float *restrict dX)
{
    GEO_CONV;
    const int g = get_global_id(0);
    const int c = get_global_id(1);
    if (g >= N * H || c >= C) return;
    const int iy = g % H, n = g / H;
    /* windows oy with oy*SH - PH <= iy <= oy*SH - PH + KH - 1 */
    const int ylo = PX_MAX(0, (iy + PH - KH + SH) / SH), yhi = PX_MIN(Ho - 1, (iy + PH) / SH);
    const size_t base = ((size_t)c * N + n) * Ho * Wo;
    __global float *dx = dX + ((size_t)c * N + n) * H * W + (size_t)iy * W;
    PX_COL_PIECE(W);
    for (int ix = x0; ix < x1; ++ix) {
        const int me = iy * W + ix;
        const int xlo = PX_MAX(0, (ix + PW - KW + SW) / SW), xhi = PX_MIN(Wo - 1, (ix + PW) / SW);
        float acc = 0.0f;
        for (int oy = ylo; oy <= yhi; ++oy)
            for (int ox = xlo; ox <= xhi; ++ox) {
                const size_t o = base + oy * Wo + ox;
                if (Idx[o] == me && (!relu || Y[o] > 0.0f)) acc += dY[o];
            }
        dx[ix] = acc;
    }
}

/* dX as maxpool_bwd, for windows that tile the image without overlapping (KH <= SH, KW <= SW):
 * a pixel lies in at most one window, so each window writes its dY to its winner (Idx) in a band
 * of dX zeroed first, without a search over windows per pixel.  Work-item (g, c),
 * g = n*Ho + oy: the input rows of output row oy's band, [oy*SH - PH, (oy+1)*SH - PH) (the last
 * band down to H), and of its windows' columns [ox*SW - PW, (ox+1)*SW - PW) (the last window's to
 * W); each window lies in its band and columns, so no other work-item writes there.  The same
 * values as maxpool_bwd.  O(C N H W). */
__kernel void maxpool_bwd_tiles(__global const int *restrict G, __global const float *restrict dY,
                                __global const int *restrict Idx,
                                __global const float *restrict Y, const int relu,
                                __global float *restrict dX)
{
    GEO_CONV;
    const int g = get_global_id(0);
    const int c = get_global_id(1);
    if (g >= N * Ho || c >= C) return;
    const int oy = g % Ho, n = g / Ho;
    const int y0 = PX_MAX(0, oy * SH - PH), y1 = oy == Ho - 1 ? H : PX_MIN(H, (oy + 1) * SH - PH);
    const size_t o0 = ((size_t)c * N * Ho + g) * Wo;
    __global float *dx = dX + ((size_t)c * N + n) * H * W;
    PX_COL_PIECE(Wo);
    const int c0 = PX_MAX(0, x0 * SW - PW), c1 = x1 == Wo ? W : PX_MIN(W, x1 * SW - PW);
    for (int iy = y0; iy < y1; ++iy)
        for (int ix = c0; ix < c1; ++ix) dx[iy * W + ix] = 0.0f;
    for (int ox = x0; ox < x1; ++ox) {
        const size_t o = o0 + ox;
        if (!relu || Y[o] > 0.0f) dx[Idx[o]] = dY[o];
    }
}

/* ---- element-wise: ReLU, dropout ---- */

/* Y[n] = max(X[n], 0).  Safe in place. */
__kernel void relu_fwd(const int n, __global const float *X, __global float *Y)
{
    const int q = get_global_id(0);
    if (q < n) Y[q] = X[q] > 0.0f ? X[q] : 0.0f;
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

/* A block of columns of a row-major Y[R, ld]:  Yc[r, j] = Y[r, off + j] (to_y = 0) or
 * Y[r, off + j] = Yc[r, j] (to_y != 0), Yc[R, L] contiguous.  Moves a batch chunk's part of an
 * activation [C, N*H*W] to and from a chunk buffer.  Work-item (g, r): VEC columns of row r
 * from g*VEC (no division per element).  O(R L). */
__kernel void col_block(const int R, const int L, const int ld, const int off,
                        __global float *restrict Y, __global float *restrict Yc, const int to_y)
{
    const int j0 = get_global_id(0) * VEC;
    const int r = get_global_id(1);
    if (r >= R || j0 >= L) return;
    const int j1 = PX_MIN(L, j0 + VEC);
    __global float *y = Y + (size_t)r * ld + off;
    __global float *c = Yc + (size_t)r * L;
    if (to_y) {
        for (int j = j0; j < j1; ++j) y[j] = c[j];
    } else {
        for (int j = j0; j < j1; ++j) c[j] = y[j];
    }
}

/* Y[n] += X[n]. */
__kernel void add_into(const int n, __global float *restrict Y, __global const float *restrict X)
{
    const int q = get_global_id(0);
    if (q < n) Y[q] += X[q];
}

/* ---- bias gradient ---- */

/* db[m] = sum_j dY[i, j] over the rows of dY[m, n] (one work-group of RL per row).
 * With relu != 0, first dY[i, j] = Y[i, j] > 0 ? dY[i, j] : 0 in place (the backward of a
 * fused ReLU, Y[m, n] its output).  db may be NULL (then only the mask).  Column slices
 * (PX_SPLIT, common.h): S slices in dimension 1 give work-group (i, z) the columns [jb, jb + len),
 * CS = ceil(n / S) rounded up to VEC, jb = z*CS, and writes its partial sum to db[z*m + i]
 * (the host adds the slices in order).  O(m n). */
__kernel __attribute__((reqd_work_group_size(RL, 1, 1)))
void bias_grad(const int m, const int n, __global float *restrict dY,
               __global const float *restrict Y, const int relu, __global float *restrict db)
{
    __local float part[RL];
    const int lid = get_local_id(0);
    const int i = get_group_id(0);
    const int CS = PX_VEC_UP(PX_PART(n, PX_SLICES(1)));
    const int jb = PX_SLICE(1) * CS, len = PX_MAX(0, PX_MIN(CS, n - jb));
    float s = 0.0f;
    if (i < m) {
        __global float *d = dY + (size_t)i * n + jb;
        __global const float *y = Y ? Y + (size_t)i * n + jb : 0;
        if (relu) {
            for (int j = lid; j < len; j += RL) {
                const float v = y[j] > 0.0f ? d[j] : 0.0f;
                d[j] = v;
                s += v;
            }
        } else {
            floatV acc = (floatV)(0.0f);
            int j = lid * VEC;
            for (; j + VEC <= len; j += RL * VEC) acc += VLOAD(d + j);
            s = px_hsum(acc);
            for (int t = (len / VEC) * VEC + lid; t < len; t += RL) s += d[t];
        }
    }
    part[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = RL / 2; w > 0; w >>= 1) {
        if (lid < w) part[lid] += part[lid + w];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0 && i < m && db) db[PX_SLICE(1) * (size_t)m + i] = part[0];
}

/* ---- softmax cross-entropy, accuracy ---- */

/* Per sample n of the logits Z[K, N] (numerically stable: shifted by the column's max):
 *   P[k, n]  = softmax (if P != NULL);
 *   with labels L[N] != NULL:  loss_n = logsumexp(Z[:, n]) - Z[L[n], n],
 *   correct_n = (first argmax == L[n]), and if dZ != NULL, dZ[k, n] = gscale * (P[k, n] - [k == L[n]]).
 * Partial[2 g], Partial[2 g + 1]: the sums of loss_n and correct_n over work-group g (XL samples).
 * A work-item loops 3K times: for more classes than the loop budget allows, the host runs the
 * two kernels after this one instead.  O(K N). */
/* Sample n's outputs once its max mx, first argmax am and sum s = sum_k exp(Z[k, n] - mx) are
 * known: P and dZ over the classes [kb, ke), and with labels *loss and *corr. */
inline void px_softmax_out(const int N, const int n, const int kb, const int ke,
                           __global const float *Z, __global const int *L, __global float *dZ,
                           const float gscale, __global float *P, const float mx, const int am,
                           const float s, float *loss, float *corr)
{
    const int y = L ? L[n] : -1;
    if (L) {
        *loss = mx + log(s) - Z[(size_t)y * N + n];
        *corr = am == y ? 1.0f : 0.0f;
    }
    if (P || dZ) {
        const float inv = 1.0f / s;
        for (int k = kb; k < ke; ++k) {
            const float p = exp(Z[(size_t)k * N + n] - mx) * inv;
            if (P) P[(size_t)k * N + n] = p;
            if (dZ) dZ[(size_t)k * N + n] = gscale * (k == y ? p - 1.0f : p);
        }
    }
}

/* The work-group's sums of loss and corr into Partial[2 g], Partial[2 g + 1] (when write). */
inline void px_softmax_partial(const float loss, const float corr, __local float *ls,
                               __local float *cs, __global float *Partial, const int write)
{
    const int lid = get_local_id(0);
    ls[lid] = loss;
    cs[lid] = corr;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = XL / 2; w > 0; w >>= 1) {
        if (lid < w) { ls[lid] += ls[lid + w]; cs[lid] += cs[lid + w]; }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0 && Partial && write) {
        Partial[2 * get_group_id(0)] = ls[0];
        Partial[2 * get_group_id(0) + 1] = cs[0];
    }
}

__kernel __attribute__((reqd_work_group_size(XL, 1, 1)))
void softmax_xent(const int K, const int N, __global const float *restrict Z,
                  __global const int *restrict L, __global float *restrict dZ, const float gscale,
                  __global float *restrict P, __global float *restrict Partial)
{
    __local float ls[XL], cs[XL];
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
        px_softmax_out(N, n, 0, K, Z, L, dZ, gscale, P, mx, am, s, &loss, &corr);
    }
    px_softmax_partial(loss, corr, ls, cs, Partial, 1);
}

/* Softmax cross-entropy over many classes, in two launches over the work-items (n, z) of S
 * chunks of classes (S = get_num_groups(1), chunk z = classes [kb, ke), CK = ceil(K / S)), so
 * that no work-item loops over all K classes.  Same results as softmax_xent (up to rounding).
 * softmax_chunk_stats: Stats[(z*N + n)*3 + 0..2] = the chunk's max, its first argmax (an int
 * stored bit for bit as a float) and sum_k exp(Z[k, n] - max).      Z[K, N], Stats[S*N*3]. */
#define PX_CLASS_CHUNK                                                                         \
    const int S = get_num_groups(1), z = get_group_id(1), CK_ = PX_PART(K, S);                \
    const int kb = z * CK_, ke = PX_MIN(K, kb + CK_)

__kernel void softmax_chunk_stats(const int K, const int N, __global const float *restrict Z,
                                  __global float *restrict Stats)
{
    const int n = get_global_id(0);
    if (n >= N) return;
    PX_CLASS_CHUNK;
    float mx = -INFINITY;
    int am = kb;
    for (int k = kb; k < ke; ++k) {
        const float v = Z[(size_t)k * N + n];
        if (v > mx) { mx = v; am = k; }
    }
    float s = 0.0f;
    for (int k = kb; k < ke; ++k) s += exp(Z[(size_t)k * N + n] - mx);
    __global float *st = Stats + ((size_t)z * N + n) * 3;
    st[0] = mx;
    st[1] = as_float(am);
    st[2] = s;
}

/* The outputs of softmax_xent from the chunks' Stats: every work-item combines the S chunks
 * (in order, so the first argmax wins), then writes P and dZ over its chunk; the work-groups
 * of chunk 0 (XL samples each) write the Partial sums of loss and correct. */
__kernel __attribute__((reqd_work_group_size(XL, 1, 1)))
void softmax_xent_chunks(const int K, const int N, __global const float *restrict Z,
                         __global const int *restrict L, __global float *restrict dZ,
                         const float gscale, __global float *restrict P,
                         __global float *restrict Partial, __global const float *restrict Stats)
{
    __local float ls[XL], cs[XL];
    const int n = get_global_id(0);
    PX_CLASS_CHUNK;
    float loss = 0.0f, corr = 0.0f;
    if (n < N) {
        float mx = -INFINITY;
        int am = 0;
        for (int u = 0; u < S; ++u) {
            const float v = Stats[((size_t)u * N + n) * 3];
            if (v > mx) { mx = v; am = as_int(Stats[((size_t)u * N + n) * 3 + 1]); }
        }
        float s = 0.0f;
        for (int u = 0; u < S; ++u) {
            __global const float *st = Stats + ((size_t)u * N + n) * 3;
            s += st[2] * exp(st[0] - mx);
        }
        px_softmax_out(N, n, kb, ke, Z, L, dZ, gscale, P, mx, am, s, &loss, &corr);
    }
    px_softmax_partial(loss, corr, ls, cs, Partial, z == 0);
}

/* ---- direct sparse convolution (inference) ---- */

#ifndef MAXW
#define MAXW 64
#endif

/* A convolution with a CSR weight, fused with the max pooling that follows it (a 1x1 pool of
 * stride 1 when none does), a ReLU (relu != 0, after the pooling, which commutes with it) and
 * optionally the flatten after it; no im2col.
 *   Ap[O+1], Ak[nnz] (the taps of the columns j = (c*KH + ky)*KW + kx, packed as
 *   c << 16 | ky << 8 | kx), Ax[nnz], bias[O] or NULL, X[C, N, H, W];
 *   Y[O, N, Hp, Wp] (flat_out = 0) or Y[O*Hp*Wp, N] (flat_out = 1, PyTorch's flatten order).
 * Conv geometry (KH, KW, SH, SW, PH, PW) -> Ho x Wo (Wo <= MAXW); pool geometry (QH, QW, QSH,
 * QSW, QPH, QPW) -> Hp x Wp.  Work-item (g, o), g = n*Hp + py: one pooled output row; it
 * builds the conv rows of its pooling window in private memory, one CSR entry at a time
 * (each entry adds a shifted input row).  O(nnz N Ho Wo QH / QSH). */
__kernel void csr_conv_pool(__global const int *restrict G, __global const int *restrict Ap,
                            __global const int *restrict Ak, __global const float *restrict Ax,
                            __global const float *restrict bias, __global const float *restrict X,
                            __global float *restrict Y, const int relu, const int flat_out)
{
    GEO_CONV;
    GEO_POOL;
    const int g = get_global_id(0);
    const int o = get_global_id(1);
    if (g >= N * Hp || o >= O) return;
    const int py = g % Hp, n = g / Hp;
    const int start = Ap[o], end = Ap[o + 1];
    const float b = bias ? bias[o] : 0.0f;
    const size_t cs = (size_t)N * H * W;
    __global const float *x = X + (size_t)n * H * W;
    float best[MAXW], acc[MAXW];
    for (int px = 0; px < Wp; ++px) best[px] = -INFINITY;
    const int cylo = PX_MAX(0, py * QSH - QPH), cyhi = PX_MIN(Ho, py * QSH - QPH + QH);
    for (int cy = cylo; cy < cyhi; ++cy) {
        for (int cx = 0; cx < Wo; ++cx) acc[cx] = b;
        for (int p = start; p < end; ++p) {
            const int e = Ak[p];
            const int iy = cy * SH - PH + ((e >> 8) & 255);
            if (iy < 0 || iy >= H) continue;
            const int kx = e & 255;
            /* cx with 0 <= cx*SW - PW + kx < W; none when the tap lies right of the padded row
             * (C division truncates toward zero, so a negative span must not reach the divide) */
            const int span = W - 1 + PW - kx;
            if (span < 0) continue;
            const int lo = PX_MAX(0, (PW - kx + SW - 1) / SW);
            const int hi = PX_MIN(Wo, span / SW + 1);
            const float v = Ax[p];
            __global const float *row = x + (size_t)(e >> 16) * cs + (size_t)iy * W - PW + kx;
            if (SW == 1) {
                for (int cx = lo; cx < hi; ++cx) acc[cx] += v * row[cx];
            } else {
                for (int cx = lo; cx < hi; ++cx) acc[cx] += v * row[cx * SW];
            }
        }
        for (int px = 0; px < Wp; ++px) {
            const int cxlo = PX_MAX(0, px * QSW - QPW), cxhi = PX_MIN(Wo, px * QSW - QPW + QW);
            float m = best[px];
            for (int cx = cxlo; cx < cxhi; ++cx) m = acc[cx] > m ? acc[cx] : m;
            best[px] = m;
        }
    }
    for (int px = 0; px < Wp; ++px) {
        const float v = relu ? (best[px] > 0.0f ? best[px] : 0.0f) : best[px];
        if (flat_out)
            Y[((size_t)(o * Hp + py) * Wp + px) * N + n] = v;
        else
            Y[(((size_t)o * N + n) * Hp + py) * Wp + px] = v;
    }
}
