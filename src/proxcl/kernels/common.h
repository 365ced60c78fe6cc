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
/* VLOAD_PART(p, k) / VSTORE_PART(v, p, k): the first k lanes (k < VEC; the others load as 0 and
 * are not stored), for vectors cut by the end of a row, without a private array (one makes
 * PoCL's code for the whole kernel slower). */
#define PX_LN(p, l, k) ((l) < (k) ? (p)[l] : 0.0f)
#define PX_SL(v, p, l, k, s) if ((l) < (k)) (p)[l] = (v).s
#if VEC == 2
#define VLOAD_PART(p, k) ((float2)(PX_LN(p, 0, k), 0.0f))
#define VSTORE_PART(v, p, k) do { const float2 px_w_ = (v); PX_SL(px_w_, p, 0, k, s0); } while (0)
#elif VEC == 4
#define VLOAD_PART(p, k) ((float4)(PX_LN(p, 0, k), PX_LN(p, 1, k), PX_LN(p, 2, k), 0.0f))
#define VSTORE_PART(v, p, k) do { const float4 px_w_ = (v); PX_SL(px_w_, p, 0, k, s0); \
    PX_SL(px_w_, p, 1, k, s1); PX_SL(px_w_, p, 2, k, s2); } while (0)
#elif VEC == 8
#define VLOAD_PART(p, k) ((float8)(PX_LN(p, 0, k), PX_LN(p, 1, k), PX_LN(p, 2, k), PX_LN(p, 3, k), \
    PX_LN(p, 4, k), PX_LN(p, 5, k), PX_LN(p, 6, k), 0.0f))
#define VSTORE_PART(v, p, k) do { const float8 px_w_ = (v); PX_SL(px_w_, p, 0, k, s0); \
    PX_SL(px_w_, p, 1, k, s1); PX_SL(px_w_, p, 2, k, s2); PX_SL(px_w_, p, 3, k, s3); \
    PX_SL(px_w_, p, 4, k, s4); PX_SL(px_w_, p, 5, k, s5); PX_SL(px_w_, p, 6, k, s6); } while (0)
#elif VEC == 16
#define VLOAD_PART(p, k) ((float16)(PX_LN(p, 0, k), PX_LN(p, 1, k), PX_LN(p, 2, k), PX_LN(p, 3, k), \
    PX_LN(p, 4, k), PX_LN(p, 5, k), PX_LN(p, 6, k), PX_LN(p, 7, k), PX_LN(p, 8, k), PX_LN(p, 9, k), \
    PX_LN(p, 10, k), PX_LN(p, 11, k), PX_LN(p, 12, k), PX_LN(p, 13, k), PX_LN(p, 14, k), 0.0f))
#define VSTORE_PART(v, p, k) do { const float16 px_w_ = (v); PX_SL(px_w_, p, 0, k, s0); \
    PX_SL(px_w_, p, 1, k, s1); PX_SL(px_w_, p, 2, k, s2); PX_SL(px_w_, p, 3, k, s3); \
    PX_SL(px_w_, p, 4, k, s4); PX_SL(px_w_, p, 5, k, s5); PX_SL(px_w_, p, 6, k, s6); \
    PX_SL(px_w_, p, 7, k, s7); PX_SL(px_w_, p, 8, k, s8); PX_SL(px_w_, p, 9, k, s9); \
    PX_SL(px_w_, p, 10, k, sa); PX_SL(px_w_, p, 11, k, sb); PX_SL(px_w_, p, 12, k, sc); \
    PX_SL(px_w_, p, 13, k, sd); PX_SL(px_w_, p, 14, k, se); } while (0)
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
/* Slices of a long dimension (docs/PORTABILITY.md: no work-item may loop too long).  A kernel
 * that can take a slice of its rows, columns or inner dimension built with PX_SPLIT=1 takes slice
 * PX_SLICE(d) of PX_SLICES(d), the number of work-groups (of one work-item each) in launch
 * dimension d; built without it, the kernel runs whole ranges as if in one slice, with no
 * overhead (the hosts build it so unless a launch needs slices). */
#ifndef PX_SPLIT
#define PX_SPLIT 0
#endif
#if PX_SPLIT
#define PX_SLICES(d) ((int)get_num_groups(d))
#define PX_SLICE(d) ((int)get_group_id(d))
#else
#define PX_SLICES(d) 1
#define PX_SLICE(d) 0
#endif
/* ceil(len / parts): the length of each of `parts` slices of `len`. */
#define PX_PART(len, parts) (((len) + (parts) - 1) / (parts))
/* x rounded up to a multiple of VEC. */
#define PX_VEC_UP(x) (((x) + VEC - 1) / VEC * VEC)
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
