/* Internal declarations of libproxcl, shared by its modules:
 *
 *   cl.c          the OpenCL library, opened at run time (function table `px_cl`)
 *   device.c      device choice, context and queue, program builds, kernel launches, buffers
 *   ops_*.c       one host module per kernel file, as the Python ops modules: the launches
 *   sha256.c, half.c, json.c, modelfile.c, modelfile_write.c     the model file
 *   spec.c        spec -> layers, matched with the file's tensors (no device)
 *   model.c       forward, backward, training step on the device
 *   api.c         the public functions of proxcl.h
 *
 * Data flows one way: cl -> device -> ops -> model -> api, as in the Python package. */
#ifndef PX_H
#define PX_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <CL/cl.h>

#include "proxcl.h"
#include "embedded.h"

/* ---- errors: a status and a one-line message ---- */
#if defined(__GNUC__)
#define PX_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define PX_PRINTF(a, b)
#endif
proxcl_status px_fail(proxcl_error *err, proxcl_status code, const char *fmt, ...) PX_PRINTF(3, 4);
void *px_alloc(size_t n, proxcl_error *err);          /* calloc, or a memory error */
#define PX_TRY(expr) do { proxcl_status px_s_ = (expr); if (px_s_ != PROXCL_OK) return px_s_; } while (0)

/* ---- cl.c: the OpenCL entry points proxcl uses ---- */
typedef struct {
    cl_int (*GetPlatformIDs)(cl_uint, cl_platform_id *, cl_uint *);
    cl_int (*GetPlatformInfo)(cl_platform_id, cl_platform_info, size_t, void *, size_t *);
    cl_int (*GetDeviceIDs)(cl_platform_id, cl_device_type, cl_uint, cl_device_id *, cl_uint *);
    cl_int (*GetDeviceInfo)(cl_device_id, cl_device_info, size_t, void *, size_t *);
    cl_context (*CreateContext)(const cl_context_properties *, cl_uint, const cl_device_id *,
                                void (*)(const char *, const void *, size_t, void *), void *, cl_int *);
    cl_command_queue (*CreateCommandQueue)(cl_context, cl_device_id, cl_command_queue_properties, cl_int *);
    cl_program (*CreateProgramWithSource)(cl_context, cl_uint, const char **, const size_t *, cl_int *);
    cl_int (*BuildProgram)(cl_program, cl_uint, const cl_device_id *, const char *,
                           void (*)(cl_program, void *), void *);
    cl_int (*GetProgramBuildInfo)(cl_program, cl_device_id, cl_program_build_info, size_t, void *, size_t *);
    cl_kernel (*CreateKernel)(cl_program, const char *, cl_int *);
    cl_int (*SetKernelArg)(cl_kernel, cl_uint, size_t, const void *);
    cl_int (*EnqueueNDRangeKernel)(cl_command_queue, cl_kernel, cl_uint, const size_t *, const size_t *,
                                   const size_t *, cl_uint, const cl_event *, cl_event *);
    cl_mem (*CreateBuffer)(cl_context, cl_mem_flags, size_t, void *, cl_int *);
    cl_int (*EnqueueWriteBuffer)(cl_command_queue, cl_mem, cl_bool, size_t, size_t, const void *, cl_uint,
                                 const cl_event *, cl_event *);
    cl_int (*EnqueueReadBuffer)(cl_command_queue, cl_mem, cl_bool, size_t, size_t, void *, cl_uint,
                                const cl_event *, cl_event *);
    cl_int (*Finish)(cl_command_queue);
    cl_int (*ReleaseMemObject)(cl_mem);
    cl_int (*ReleaseKernel)(cl_kernel);
    cl_int (*ReleaseProgram)(cl_program);
    cl_int (*ReleaseCommandQueue)(cl_command_queue);
    cl_int (*ReleaseContext)(cl_context);
} px_cl_api;

extern px_cl_api px_cl;
proxcl_status px_cl_open(proxcl_error *err);            /* idempotent */
const char *px_cl_error_name(cl_int code);

/* ---- device.c ---- */
#define PX_MAX_DEFINES 12                                /* defines of one kernel build, at most */
typedef struct { const char *name; int value; } px_define;

typedef struct px_kernel px_kernel;                     /* a built kernel with its defines */

typedef struct px_device {
    cl_platform_id platform;
    cl_device_id device;
    cl_context context;
    cl_command_queue queue;
    char name[256];                                     /* "platform | device" */
    int is_cpu;
    int compute_units;                                  /* CL_DEVICE_MAX_COMPUTE_UNITS (1 if unknown) */
    const px_tuning *t;                                 /* the kernel form's launch settings: */
    px_tuning form;                                     /* its copy, as this device runs it */
    px_kernel *kernels;                                 /* built kernels, a list */
    struct px_program *programs;                        /* built programs, a list */
    FILE *trace;                                        /* $PROXCL_TRACE: one line per launch */
} px_device;

proxcl_status px_device_open(px_device *dev, const char *spec, proxcl_error *err);
void px_device_close(px_device *dev);
proxcl_status px_device_list(char *out, size_t size, proxcl_error *err);
/* The kernel `name` of a kernel file built with these defines (memoised). */
proxcl_status px_kernel_get(px_device *dev, const char *file, const char *name, const px_define *defs,
                            int ndefs, px_kernel **out, proxcl_error *err);

/* Launch arguments: int, float, uint or a buffer (NULL allowed). */
typedef struct { char kind; union { cl_int i; cl_float f; cl_uint u; cl_mem m; } v; } px_arg;
#define PX_I(x) ((px_arg){'i', {.i = (cl_int)(x)}})
#define PX_F(x) ((px_arg){'f', {.f = (cl_float)(x)}})
#define PX_U(x) ((px_arg){'u', {.u = (cl_uint)(x)}})
#define PX_M(x) ((px_arg){'m', {.m = (x)}})
/* Enqueue with global sizes rounded up to the local size (at least one group), as Device.launch. */
proxcl_status px_launch(px_device *dev, px_kernel *k, int dims, const size_t *gsize, const size_t *lsize,
                        const px_arg *args, int nargs, proxcl_error *err);

/* Forget the arguments kernels were last launched with (before buffers are released: a new
 * buffer may get an old one's handle). */
void px_forget_args(px_device *dev);
proxcl_status px_buffer(px_device *dev, size_t bytes, cl_mem *out, proxcl_error *err);  /* 0 bytes: NULL */
proxcl_status px_upload(px_device *dev, cl_mem dst, const void *src, size_t bytes, proxcl_error *err);
proxcl_status px_download(px_device *dev, cl_mem src, void *dst, size_t bytes, proxcl_error *err);
proxcl_status px_buffer_from(px_device *dev, const void *src, size_t bytes, cl_mem *out, proxcl_error *err);
void px_release(cl_mem *m);
proxcl_status px_cl_check(cl_int code, const char *what, proxcl_error *err);

/* ---- ops_dense.c, ops_csr.c, ops_nn.c, ops_optim.c: the launches of the Python ops modules ----
 * No work-item loops more than the tuning's loop_max times (llvmpipe ends a work-item's loops
 * silently after 65,535 iterations, docs/PORTABILITY.md): long inner dimensions, rows and columns
 * are split over work-items or launches exactly where the Python ops split them. */
/* dense.cl (ops/dense.py) */
proxcl_status px_gemm(px_device *dev, cl_mem a, cl_mem b, cl_mem out, int M, int N, int K, int trans_a,
                      cl_mem bias, int relu, proxcl_error *err);
/* out[size] (rows of cols) = the sum of part[slices, size] over its slices, in order (+ bias per
 * row) (ReLU): ops.dense.sum_slices, the reduction of every split product */
proxcl_status px_sum_slices(px_device *dev, cl_mem part, int slices, cl_mem out, int size, int cols, cl_mem bias,
                            int relu, proxcl_error *err);
/* csr.cl (ops/sparse.py).  The rows of a CSR support cut into pieces of at most a limit of entries
 * (ops.sparse.RowPieces): piece s is the entries [qp[s], qp[s+1]), row i the pieces [rp[i], rp[i+1]);
 * count 0 when no row is longer than the limit (then no arrays). */
typedef struct { int count; cl_mem qp, rp; } px_pieces;
/* The pieces of the rows of host row pointers indptr[m+1] for SpMM (CSRPattern.pieces with
 * px_spmm_piece's limit); px_pieces_release frees them. */
proxcl_status px_row_pieces(px_device *dev, const int32_t *indptr, int m, px_pieces *out, proxcl_error *err);
void px_pieces_release(px_pieces *p);
/* shape (m, k), row pointers ap, indices aj, values ax, pm (NULL or the transpose permutation), the
 * rows' pieces (ap's, NULL: none) */
proxcl_status px_spmm(px_device *dev, int m, int k, cl_mem ap, cl_mem aj, int idx16, cl_mem ax, cl_mem pm,
                      const px_pieces *pieces, cl_mem x, int n, cl_mem bias, int relu, cl_mem out, proxcl_error *err);
proxcl_status px_sddmm(px_device *dev, int nnz, int n, cl_mem ai, cl_mem aj, int idx16, cl_mem a, cl_mem b,
                       cl_mem g, proxcl_error *err);
/* nn.cl (ops/nn.py).  px_nn_rows: global (rows, cols), local (nn_rows, 1); px_nn_row_pieces: a
 * work-item per image row of `width` columns (im2col, col2im, maxpool_fwd/bwd), the rows cut into
 * pieces of columns (a PX_SPLIT build, pieces in the third dimension) where per_col loop iterations
 * per column plus fixed ones would pass loop_max. */
proxcl_status px_nn_rows(px_device *dev, const char *name, size_t rows, size_t cols, const px_arg *args,
                         int nargs, proxcl_error *err);
proxcl_status px_nn_row_pieces(px_device *dev, const char *name, size_t rows, size_t cols, int width, int per_col,
                               int fixed, const px_arg *args, int nargs, proxcl_error *err);
/* Whether csr_conv_pool's work-items stay within loop_max (ops.nn.conv_pool_fits) for the
 * geometry G's values g[21] and a CSR weight whose longest row has row_max entries. */
int px_conv_pool_fits(const px_device *dev, const int32_t *g, int row_max);
proxcl_status px_nn_each(px_device *dev, const char *name, size_t n, const px_arg *args, int nargs,
                         proxcl_error *err);
proxcl_status px_permute3(px_device *dev, cl_mem src, cl_mem dst, const int dims[3], const int strides[3],
                          proxcl_error *err);
proxcl_status px_bias_grad(px_device *dev, int m, int n, cl_mem dy, cl_mem y, int relu, cl_mem db,
                           proxcl_error *err);
int px_softmax_groups(const px_device *dev, int n);
proxcl_status px_softmax_xent(px_device *dev, int k, int n, cl_mem z, cl_mem labels, cl_mem dz, float gscale,
                              cl_mem probs, cl_mem partial, proxcl_error *err);
/* optim.cl (ops/optim.py) */
proxcl_status px_prox_sgd(px_device *dev, int n, cl_mem w, cl_mem g, cl_mem v, float lr, float mu, float tau,
                          proxcl_error *err);
proxcl_status px_prox_adam(px_device *dev, int n, cl_mem w, cl_mem g, cl_mem m, cl_mem v, float lr, float b1,
                           float b2, float rc1, float rc2, float eps, float lr_lam, proxcl_error *err);

/* ---- sha256.c ---- */
typedef struct { uint32_t h[8]; uint64_t len; unsigned char buf[64]; size_t fill; } px_sha256;
void px_sha256_init(px_sha256 *s);
void px_sha256_update(px_sha256 *s, const void *data, size_t n);
void px_sha256_hex(px_sha256 *s, char out[65]);

/* ---- half.c ---- */
float px_half_to_float(uint16_t h);
/* Round to nearest even; returns 0 when |f| is too large for float16 (the result is then inf). */
int px_float_to_half(float f, uint16_t *out);

/* ---- modelfile.c (reading), modelfile_write.c: a checked model file in host memory ---- */
enum { PX_F32, PX_F16, PX_I32, PX_U16, PX_NDTYPES };   /* the file's dtypes */
extern const char *const px_dtype_names[PX_NDTYPES];
extern const int px_dtype_size[PX_NDTYPES];
typedef struct {
    char *name;
    int csr;                     /* kind: 0 dense, 1 csr */
    int rank;                    /* dense: 0..8; csr: 2 */
    int64_t shape[8];
    int half;                    /* values stored as F16 */
    int64_t nnz;                 /* csr */
    int32_t *indptr, *indices;   /* csr, int32 whatever their storage */
    float *values;               /* float32 whatever their storage; dense: product(shape) */
    int64_t count;               /* number of values */
    int owned;                   /* values were allocated for the writer */
} px_tensor;

typedef struct {
    char *spec_text, *metadata_text; /* the JSON texts exactly as stored */
    px_tensor *tensors;
    int ntensors;
} px_file;

proxcl_status px_file_parse(const unsigned char *blob, size_t size, const char *name, px_file *out,
                            proxcl_error *err);
proxcl_status px_file_read(const char *path, px_file *out, proxcl_error *err);
void px_file_free(px_file *f);
/* The bytes of a model file (docs/FORMAT.md section 5); *blob is malloc'd. */
proxcl_status px_file_bytes(const char *spec_text, const char *metadata_text, const px_tensor *tensors,
                            int ntensors, int half, unsigned char **blob, size_t *size, proxcl_error *err);
/* Write bytes atomically: a temporary file beside path, fsync, rename. */
proxcl_status px_write_atomic(const char *path, const unsigned char *blob, size_t size, proxcl_error *err);

#endif
