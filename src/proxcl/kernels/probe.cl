/* Probes of the device, for the benchmarks' floors (host module: proxcl/ops/probe.py). */

/* Re-read a buffer small enough to stay in the device's caches: work-item g reads ROUNDS
 * vectors of VEC floats of src (nv of them), into four independent sums so that the adds do
 * not bound the loads; one float per work-item keeps them alive.  Bytes read:
 * 4 * VEC * ROUNDS * global size.
 * CONTIG 0 (GPU form): from g on, stepping by the global size (neighbouring work-items read
 * neighbouring vectors), wrapping at nv; the host keeps the global size <= nv.
 * CONTIG 1 (CPU form): ROUNDS consecutive vectors of a block of ROUNDS; nv is a multiple of
 * ROUNDS. */
#ifndef ROUNDS
#define ROUNDS 256
#endif
#ifndef CONTIG
#define CONTIG 0
#endif

__kernel void reread(const int nv, __global const floatV *restrict src, __global float *restrict out)
{
    const int g = get_global_id(0);
    floatV a0 = (floatV)(0.0f), a1 = a0, a2 = a0, a3 = a0;
#if CONTIG
    const __global floatV *p = src + (size_t)(g % (nv / ROUNDS)) * ROUNDS;
    for (int r = 0; r < ROUNDS; r += 4) {
        a0 += p[r];
        a1 += p[r + 1];
        a2 += p[r + 2];
        a3 += p[r + 3];
    }
#else
    const int step = get_global_size(0);
    int i = g % nv;
    for (int r = 0; r < ROUNDS; r += 4) {
        a0 += src[i];
        i = (i + step < nv) ? i + step : i + step - nv;
        a1 += src[i];
        i = (i + step < nv) ? i + step : i + step - nv;
        a2 += src[i];
        i = (i + step < nv) ? i + step : i + step - nv;
        a3 += src[i];
        i = (i + step < nv) ? i + step : i + step - nv;
    }
#endif
    out[g] = px_hsum((a0 + a1) + (a2 + a3));
}
