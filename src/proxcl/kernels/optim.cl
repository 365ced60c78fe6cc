/* Optimizer updates over the flat float32 values of one parameter: a dense weight, a bias, or the
 * values Ax[nnz] of a CSR weight (the update is element-wise, so the layout does not matter).
 * One work-item per value q < n.  Each kernel reads the gradient G[n], updates the values W[n] and
 * its per-value state in place (one launch per parameter and step), and ends with the
 * soft-threshold S_tau(z) = sign(z) max(|z| - tau, 0), which is an exact 0 when |z| <= tau.
 * With tau = 0 the threshold is the identity, which gives the plain (unpenalised) updates.
 * Scalars that depend only on the step (bias corrections, sqrt(t)/gamma) come from the host. */

inline float px_shrink(const float z, const float tau)
{
    return fabs(z) > tau ? z - copysign(tau, z) : 0.0f;
}

/* Prox-SGD with heavy-ball momentum:  v <- mu v + g;  w <- S_tau(w - lr v),  tau = lr lambda.
 * W[n], G[n], V[n] (momentum, or NULL for mu = 0: then v = g and nothing is stored). */
__kernel void prox_sgd(const int n, __global float *restrict W, __global const float *restrict G,
                       __global float *restrict V, const float lr, const float mu, const float tau)
{
    const int q = get_global_id(0);
    if (q >= n) return;
    float v = G[q];
    if (V) {
        v = mu * V[q] + v;
        V[q] = v;
    }
    W[q] = px_shrink(W[q] - lr * v, tau);
}

/* Prox-Adam:  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
 *             d = sqrt(v rc2) + eps;  w <- S_{lr lambda / d}(w - lr (m rc1) / d)
 * rc1 = 1 / (1 - b1^t), rc2 = 1 / (1 - b2^t) (bias corrections), c1 = 1 - b1, c2 = 1 - b2,
 * lr_lam = lr lambda (0 gives plain Adam).  W[n], G[n], M[n], V[n]. */
__kernel void prox_adam(const int n, __global float *restrict W, __global const float *restrict G,
                        __global float *restrict M, __global float *restrict V,
                        const float lr, const float b1, const float c1, const float b2, const float c2,
                        const float rc1, const float rc2, const float eps, const float lr_lam)
{
    const int q = get_global_id(0);
    if (q >= n) return;
    const float g = G[q];
    const float m = b1 * M[q] + c1 * g;
    const float v = b2 * V[q] + c2 * (g * g);
    M[q] = m;
    V[q] = v;
    const float inv_d = 1.0f / (sqrt(v * rc2) + eps);
    W[q] = px_shrink(W[q] - lr * (m * rc1) * inv_d, lr_lam * inv_d);
}

/* l1-RDA anchored at the first iterate w0:
 *   gbar <- a gbar + b g  (a = (t-1)/t, b = 1/t: the running mean of the gradients);
 *   w <- S_tau(w0 - s gbar),  s = sqrt(t) / gamma,  tau = lambda s.
 * W[n], G[n], Gbar[n], W0[n]. */
__kernel void rda(const int n, __global float *restrict W, __global const float *restrict G,
                  __global float *restrict Gbar, __global const float *restrict W0,
                  const float a, const float b, const float s, const float tau)
{
    const int q = get_global_id(0);
    if (q >= n) return;
    const float gb = a * Gbar[q] + b * G[q];
    Gbar[q] = gb;
    W[q] = px_shrink(W0[q] - s * gb, tau);
}
