/* Shared definitions for proxcl's kernels (OpenCL C 1.2, float32, no float atomics).
 * VEC (2, 4, 8 or 16) is the vector width a kernel file is built with. */
#ifndef VEC
#define VEC 4
#endif
#define PX_CAT_(a, b) a##b
#define PX_CAT(a, b) PX_CAT_(a, b)
#define floatV PX_CAT(float, VEC)
#define VLOAD(p) PX_CAT(vload, VEC)(0, (p))
#define VSTORE(v, p) PX_CAT(vstore, VEC)((v), 0, (p))

/* Sum of the lanes of a floatV. */
inline float px_hsum(floatV v)
{
#if VEC == 16
    float8 a = v.lo + v.hi;
    float4 b = a.lo + a.hi;
#elif VEC == 8
    float4 b = v.lo + v.hi;
#elif VEC == 4
    float4 b = v;
#elif VEC == 2
    float4 b = (float4)(v, 0.0f, 0.0f);
#endif
    return (b.x + b.y) + (b.z + b.w);
}
