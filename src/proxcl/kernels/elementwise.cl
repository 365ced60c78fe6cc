/* Element-wise kernels over flat float32 arrays of n elements. */

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
