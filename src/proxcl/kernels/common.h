/* Shared definitions for proxcl's kernels (OpenCL C 1.2, float32, no float atomics).
 * VEC (2, 4, 8 or 16) is the vector width a kernel file is built with. */
#ifndef VEC
#define VEC 4
#endif
#define PX_CAT_(a, b) a##b
#define PX_CAT(a, b) PX_CAT_(a, b)
#define floatV PX_CAT(float, VEC)
#define intV PX_CAT(int, VEC)

/* Vector load / store of VEC floats at p.  With PX_ALIGNED=1 (the host's promise that every
 * such p is a multiple of VEC floats into a buffer; __global pointers only) they are plain
 * vector accesses.  Otherwise unaligned, written as element accesses that the compiler merges
 * into one vector access, in any address space.  (The vloadN / vstoreN builtins are
 * out-of-line calls on some CPU OpenCL builds, which spills every accumulator.) */
#ifndef PX_ALIGNED
#define PX_ALIGNED 0
#endif
#if VEC == 2
#define VLOAD_E(p) ((float2)((p)[0], (p)[1]))
#define VSTORE_E(v, p) do { const float2 px_v_ = (v); (p)[0] = px_v_.s0; (p)[1] = px_v_.s1; } while (0)
#elif VEC == 4
#define VLOAD_E(p) ((float4)((p)[0], (p)[1], (p)[2], (p)[3]))
#define VSTORE_E(v, p) do { const float4 px_v_ = (v); (p)[0] = px_v_.s0; (p)[1] = px_v_.s1; \
    (p)[2] = px_v_.s2; (p)[3] = px_v_.s3; } while (0)
#elif VEC == 8
#define VLOAD_E(p) ((float8)((p)[0], (p)[1], (p)[2], (p)[3], (p)[4], (p)[5], (p)[6], (p)[7]))
#define VSTORE_E(v, p) do { const float8 px_v_ = (v); (p)[0] = px_v_.s0; (p)[1] = px_v_.s1; \
    (p)[2] = px_v_.s2; (p)[3] = px_v_.s3; (p)[4] = px_v_.s4; (p)[5] = px_v_.s5; \
    (p)[6] = px_v_.s6; (p)[7] = px_v_.s7; } while (0)
#elif VEC == 16
#define VLOAD_E(p) ((float16)((p)[0], (p)[1], (p)[2], (p)[3], (p)[4], (p)[5], (p)[6], (p)[7], \
    (p)[8], (p)[9], (p)[10], (p)[11], (p)[12], (p)[13], (p)[14], (p)[15]))
#define VSTORE_E(v, p) do { const float16 px_v_ = (v); (p)[0] = px_v_.s0; (p)[1] = px_v_.s1; \
    (p)[2] = px_v_.s2; (p)[3] = px_v_.s3; (p)[4] = px_v_.s4; (p)[5] = px_v_.s5; \
    (p)[6] = px_v_.s6; (p)[7] = px_v_.s7; (p)[8] = px_v_.s8; (p)[9] = px_v_.s9; \
    (p)[10] = px_v_.sa; (p)[11] = px_v_.sb; (p)[12] = px_v_.sc; (p)[13] = px_v_.sd; \
    (p)[14] = px_v_.se; (p)[15] = px_v_.sf; } while (0)
#else
#error "VEC must be 2, 4, 8 or 16"
#endif
/* VLOAD_E / VSTORE_E: the element forms, for any address space (private arrays too). */
#if PX_ALIGNED
#define VLOAD(p) (*(const __global floatV *)(p))
#define VSTORE(v, p) (*(__global floatV *)(p) = (v))
#else
#define VLOAD(p) VLOAD_E(p)
#define VSTORE(v, p) VSTORE_E(v, p)
#endif

/* Integer min / max and max(v, 0) lane-wise, without builtin calls (on some CPU OpenCL builds
 * even min() and fmax() are out-of-line calls). */
#define PX_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PX_MAX(a, b) ((a) > (b) ? (a) : (b))
#define PX_RELU(v) ((v) > (floatV)(0.0f) ? (v) : (floatV)(0.0f))

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
