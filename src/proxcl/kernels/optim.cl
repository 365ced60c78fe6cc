/* Optimizer updates over the flat float32 values of one parameter: a dense weight, a bias, or the
 * values Ax[nnz] of a CSR weight (the update is element-wise, so the layout does not matter).
 * Work-item q updates values [q VEC, q VEC + VEC) with vector loads; the last one does the tail
 * of n % VEC one value at a time.  Each kernel reads the gradient G[n], updates the values W[n]
 * and its per-value state in place (one launch per parameter and step), and ends with the
 * soft-threshold S_tau(z) = sign(z) max(|z| - tau, 0): an exact +0 when |z| <= tau, NaN stays NaN.
 * With tau = 0 the threshold is the identity, which gives the plain (unpenalised) updates.
 * Scalars that depend only on the step (bias corrections, sqrt(t)/gamma) come from the host.
 * The update bodies are macros over the element type T (float or floatV) and its load/store.
 *
 * Reweighted l1 (the adaptive lasso): every proximal kernel multiplies its threshold by
 *   r = rw_c / (|w| + rw_ec),  w the value before the update,
 * with rw_c = c (the layer's mean nonzero magnitude) and rw_ec = eps c, so that a weight of the
 * layer's typical size is shrunk about as by plain l1 and small ones up to 1/eps times harder.
 * Plain l1 passes rw_on = 0: r is then exactly 1 and tau unchanged bit for bit. */

#define PX_LD1(p) (*(p))
#define PX_ST1(v, p) (*(p) = (v))

/* S_tau(z) for T = float or floatV (islessequal gives 1 for a scalar, -1 per true lane of a
 * vector; select reads either). */
#define PX_SHRINK(T, z, tau) select((z) - copysign((T)(tau), (z)), (T)0.0f, islessequal(fabs(z), (T)(tau)))

/* Run BODY(T, LD, ST, i) over this work-item's values. */
#define PX_EACH(BODY)                                                        \
    do {                                                                     \
        const int i0 = get_global_id(0) * VEC;                               \
        if (n - i0 >= VEC) {                                                 \
            BODY(floatV, VLOAD, VSTORE, i0);                                 \
        } else {                                                             \
            for (int q = i0; q < n; ++q) BODY(float, PX_LD1, PX_ST1, q);     \
        }                                                                    \
    } while (0)

/* The reweighting factor r of a value w (see above). */
#define PX_RW(T, w) (rw_on ? rw_c / (fabs(w) + rw_ec) : (T)1.0f)
#define PX_RW_ARGS const int rw_on, const float rw_c, const float rw_ec

/* Prox-SGD with heavy-ball momentum:  v <- mu v + g;  w <- S_{tau r}(w - lr v),  tau = lr lambda.
 * W[n], G[n], V[n] (momentum, or NULL for mu = 0: then v = g and nothing is stored). */
#define PROX_SGD_AT(T, LD, ST, i)                                            \
    {                                                                        \
        T v_ = LD(G + (i));                                                  \
        if (V) {                                                             \
            v_ = mu * LD(V + (i)) + v_;                                      \
            ST(v_, V + (i));                                                 \
        }                                                                    \
        const T w_ = LD(W + (i));                                            \
        const T z_ = w_ - lr * v_;                                           \
        ST(PX_SHRINK(T, z_, tau * PX_RW(T, w_)), W + (i));                   \
    }

__kernel void prox_sgd(const int n, __global float *restrict W, __global const float *restrict G,
                       __global float *restrict V, const float lr, const float mu, const float tau,
                       PX_RW_ARGS)
{
    PX_EACH(PROX_SGD_AT);
}

/* Prox-Adam:  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
 *             d = sqrt(v rc2) + eps;  w <- S_{lr lambda r / d}(w - lr (m rc1) / d)
 * rc1 = 1 / (1 - b1^t), rc2 = 1 / (1 - b2^t) (bias corrections), c1 = 1 - b1, c2 = 1 - b2,
 * lr_lam = lr lambda (0 gives plain Adam).  W[n], G[n], M[n], V[n]. */
#define PROX_ADAM_AT(T, LD, ST, i)                                           \
    {                                                                        \
        const T g_ = LD(G + (i));                                            \
        const T m_ = b1 * LD(M + (i)) + c1 * g_;                             \
        const T v_ = b2 * LD(V + (i)) + c2 * (g_ * g_);                      \
        ST(m_, M + (i));                                                     \
        ST(v_, V + (i));                                                     \
        const T inv_d = 1.0f / (sqrt(v_ * rc2) + eps);                       \
        const T w_ = LD(W + (i));                                            \
        const T z_ = w_ - lr * (m_ * rc1) * inv_d;                           \
        ST(PX_SHRINK(T, z_, lr_lam * inv_d * PX_RW(T, w_)), W + (i));        \
    }

__kernel void prox_adam(const int n, __global float *restrict W, __global const float *restrict G,
                        __global float *restrict M, __global float *restrict V,
                        const float lr, const float b1, const float c1, const float b2, const float c2,
                        const float rc1, const float rc2, const float eps, const float lr_lam,
                        PX_RW_ARGS)
{
    PX_EACH(PROX_ADAM_AT);
}

/* l1-RDA anchored at the first iterate w0:
 *   gbar <- a gbar + b g  (a = (t-1)/t, b = 1/t: the running mean of the gradients);
 *   w <- S_{tau r}(w0 - s gbar),  s = sqrt(t) / gamma,  tau = lambda s.
 * W[n], G[n], Gbar[n], W0[n]. */
#define RDA_AT(T, LD, ST, i)                                                 \
    {                                                                        \
        const T gb_ = a * LD(Gbar + (i)) + b * LD(G + (i));                  \
        ST(gb_, Gbar + (i));                                                 \
        const T z_ = LD(W0 + (i)) - s * gb_;                                 \
        ST(PX_SHRINK(T, z_, tau * PX_RW(T, LD(W + (i)))), W + (i));          \
    }

__kernel void rda(const int n, __global float *restrict W, __global const float *restrict G,
                  __global float *restrict Gbar, __global const float *restrict W0,
                  const float a, const float b, const float s, const float tau, PX_RW_ARGS)
{
    PX_EACH(RDA_AT);
}

/* X <- X * M over n values: the 0/1 mask M of a pruned dense weight applied to its values or its
 * gradient (gradual magnitude pruning), so that a pruned weight stays exactly zero. */
#define MASK_AT(T, LD, ST, i) ST(LD(X + (i)) * LD(M + (i)), X + (i));

__kernel void apply_mask(const int n, __global float *restrict X, __global const float *restrict M)
{
    PX_EACH(MASK_AT);
}
