/* The OpenCL device: choice (the rules of proxcl.runtime._select: never a simulator by default or
 * by kind), context and in-order queue,
 * programs built once per (kernel file, options) from the embedded kernel files with
 * common.h in front, exactly as the Python package builds them (same source text, same
 * options, so a driver's program cache is shared), kernel launches and buffers.
 *
 * $PROXCL_TRACE=FILE appends one JSON line per launch (kernel, options, global and local
 * sizes, scalar arguments; buffers as "buf" or null): the tests compare it with the Python
 * package's launches. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "px.h"

struct px_program {
    char *file, *options;
    cl_program program;
    struct px_program *next;
};

#define PX_MAX_ARGS 20
struct px_kernel {
    char *file, *name, *options;
    cl_kernel kernel;
    px_arg last[PX_MAX_ARGS];
    int nlast;
    struct px_kernel *next;
};

proxcl_status px_cl_check(cl_int code, const char *what, proxcl_error *err)
{
    if (code == CL_SUCCESS) return PROXCL_OK;
    return px_fail(err, PROXCL_ERR_OPENCL, "%s failed: %s (%d)", what, px_cl_error_name(code), (int)code);
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* ---- choosing a device ---- */

static void info_str(cl_platform_id p, cl_device_id d, cl_uint what, char *out, size_t size)
{
    out[0] = 0;
    if (d) px_cl.GetDeviceInfo(d, what, size - 1, out, NULL);
    else px_cl.GetPlatformInfo(p, what, size - 1, out, NULL);
    out[size - 1] = 0;
    size_t a = 0, n = strlen(out);                      /* strip, as Python's .strip() */
    while (a < n && isspace((unsigned char)out[a])) ++a;
    while (n > a && isspace((unsigned char)out[n - 1])) --n;
    memmove(out, out + a, n - a);
    out[n - a] = 0;
}

static void lower(char *s)
{
    for (; *s; ++s) *s = (char)tolower((unsigned char)*s);
}

/* sim: no real device of any kind (runtime._simulated): it claims every device type at once
 * (Oclgrind says CPU|GPU|ACCELERATOR|DEFAULT), or its platform, vendor or device name says
 * simulator or emulator.  Such a device is chosen only by its name or index. */
typedef struct { cl_platform_id p; cl_device_id d; cl_device_type type; int pi, di, sim; } px_pair;

#define PX_EVERY_KIND (CL_DEVICE_TYPE_GPU | CL_DEVICE_TYPE_CPU | CL_DEVICE_TYPE_ACCELERATOR)

static int contains(const char *hay, const char *needle)
{
    char h[256];
    snprintf(h, sizeof h, "%s", hay);
    lower(h);
    return strstr(h, needle) != NULL;
}

static proxcl_status pick(const char *spec, px_pair *pairs, int npairs, px_pair *chosen, proxcl_error *err)
{
    char s[128];
    size_t a = 0, n;
    snprintf(s, sizeof s, "%s", spec ? spec : "");
    n = strlen(s);
    while (a < n && isspace((unsigned char)s[a])) ++a;
    while (n > a && isspace((unsigned char)s[n - 1])) --n;
    memmove(s, s + a, n - a);
    s[n - a] = 0;
    lower(s);
    if (!*s) {             /* the first real GPU, else the first CPU, else the first other real device */
        const cl_device_type kinds[3] = {CL_DEVICE_TYPE_GPU, CL_DEVICE_TYPE_CPU, CL_DEVICE_TYPE_ALL};
        for (int k = 0; k < 3; ++k)
            for (int i = 0; i < npairs; ++i)
                if (!pairs[i].sim && pairs[i].type & kinds[k]) { *chosen = pairs[i]; return PROXCL_OK; }
        char names[512] = "", pn[256];
        size_t at = 0;
        for (int i = 0; i < npairs && at < sizeof names; ++i) {
            int seen = 0;
            for (int j = 0; j < i; ++j) seen |= pairs[j].p == pairs[i].p;
            if (seen) continue;
            info_str(pairs[i].p, NULL, CL_PLATFORM_NAME, pn, sizeof pn);
            at += (size_t)snprintf(names + at, sizeof names - at, "%s%s", at ? ", " : "", pn);
        }
        return px_fail(err, PROXCL_ERR_DEVICE, "only simulators found (%s); name one to use it (--device or "
                       "$PROXCL_DEVICE), or install a device (Debian: pocl-opencl-icd)", names);
    }
    if (strchr(s, ':')) {
        char *end;
        long pi = strtol(s, &end, 10);
        long di = *end == ':' && end != s ? strtol(end + 1, &end, 10) : -1;
        if (*end == 0)
            for (int i = 0; i < npairs; ++i)
                if (pairs[i].pi == pi && pairs[i].di == di) { *chosen = pairs[i]; return PROXCL_OK; }
        return px_fail(err, PROXCL_ERR_DEVICE, "device '%s': no such platform:device index pair", spec);
    }
    cl_device_type want = !strcmp(s, "cpu") ? CL_DEVICE_TYPE_CPU : !strcmp(s, "gpu") ? CL_DEVICE_TYPE_GPU
                          : !strcmp(s, "accelerator") ? CL_DEVICE_TYPE_ACCELERATOR : 0;
    if (want) {
        for (int i = 0; i < npairs; ++i)
            if (!pairs[i].sim && pairs[i].type & want) { *chosen = pairs[i]; return PROXCL_OK; }
        return px_fail(err, PROXCL_ERR_DEVICE, "device '%s': no OpenCL %s device, simulators aside", spec, s);
    }
    for (int i = 0; i < npairs; ++i) {
        char pn[256], pv[256], dn[256];
        info_str(pairs[i].p, NULL, CL_PLATFORM_NAME, pn, sizeof pn);
        info_str(pairs[i].p, NULL, CL_PLATFORM_VENDOR, pv, sizeof pv);
        info_str(NULL, pairs[i].d, CL_DEVICE_NAME, dn, sizeof dn);
        if (contains(pn, s) || contains(pv, s) || contains(dn, s)) { *chosen = pairs[i]; return PROXCL_OK; }
    }
    return px_fail(err, PROXCL_ERR_DEVICE, "device '%s': no platform or device name contains it", spec);
}

#define PX_MAX_PLATFORMS 16
#define PX_MAX_DEVICES 64

static proxcl_status list_pairs(px_pair *pairs, int *npairs, proxcl_error *err)
{
    cl_platform_id plats[PX_MAX_PLATFORMS];
    cl_uint np = 0;
    *npairs = 0;
    if (px_cl.GetPlatformIDs(PX_MAX_PLATFORMS, plats, &np) != CL_SUCCESS || np == 0)
        return px_fail(err, PROXCL_ERR_DEVICE, "no OpenCL platform found; install one (Debian: pocl-opencl-icd)");
    if (np > PX_MAX_PLATFORMS) np = PX_MAX_PLATFORMS;
    for (cl_uint p = 0; p < np; ++p) {
        cl_device_id devs[PX_MAX_DEVICES];
        cl_uint nd = 0;
        if (px_cl.GetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, PX_MAX_DEVICES, devs, &nd) != CL_SUCCESS) continue;
        if (nd > PX_MAX_DEVICES) nd = PX_MAX_DEVICES;
        for (cl_uint d = 0; d < nd && *npairs < PX_MAX_DEVICES; ++d) {
            px_pair *q = &pairs[(*npairs)++];
            q->p = plats[p];
            q->d = devs[d];
            q->pi = (int)p;
            q->di = (int)d;
            q->type = 0;
            px_cl.GetDeviceInfo(devs[d], CL_DEVICE_TYPE, sizeof q->type, &q->type, NULL);
            char pn[256], pv[256], dn[256];
            info_str(q->p, NULL, CL_PLATFORM_NAME, pn, sizeof pn);
            info_str(q->p, NULL, CL_PLATFORM_VENDOR, pv, sizeof pv);
            info_str(NULL, q->d, CL_DEVICE_NAME, dn, sizeof dn);
            q->sim = (q->type & PX_EVERY_KIND) == PX_EVERY_KIND;
            for (int w = 0; w < 3 && !q->sim; ++w) {
                static const char *const words[3] = {"oclgrind", "simulat", "emulat"};
                q->sim = contains(pn, words[w]) || contains(pv, words[w]) || contains(dn, words[w]);
            }
        }
    }
    if (*npairs == 0)
        return px_fail(err, PROXCL_ERR_DEVICE, "OpenCL platforms exist but have no devices");
    return PROXCL_OK;
}

proxcl_status px_device_list(char *out, size_t size, proxcl_error *err)
{
    px_pair pairs[PX_MAX_DEVICES];
    int npairs;
    size_t at = 0;
    if (size) out[0] = 0;
    PX_TRY(px_cl_open(err));
    PX_TRY(list_pairs(pairs, &npairs, err));
    for (int i = 0; i < npairs && at < size; ++i) {
        char pn[120], dn[120];
        info_str(pairs[i].p, NULL, CL_PLATFORM_NAME, pn, sizeof pn);
        info_str(NULL, pairs[i].d, CL_DEVICE_NAME, dn, sizeof dn);
        cl_device_type t = pairs[i].type;
        const char *type = (t & PX_EVERY_KIND) == PX_EVERY_KIND ? "any" : t & CL_DEVICE_TYPE_GPU ? "gpu"
                           : t & CL_DEVICE_TYPE_CPU ? "cpu" : t & CL_DEVICE_TYPE_ACCELERATOR ? "accelerator" : "other";
        at += (size_t)snprintf(out + at, size - at, "%d:%d\t%s\t%s\t%s\n", pairs[i].pi, pairs[i].di, pn, dn, type);
    }
    return PROXCL_OK;
}

static proxcl_status choose_tuning(px_device *dev, proxcl_error *err)
{
    const char *env = getenv("PROXCL_TUNING");
    char kind[32];
    snprintf(kind, sizeof kind, "%s", env ? env : "");
    lower(kind);
    char *k = kind;
    while (isspace((unsigned char)*k)) ++k;
    for (size_t n = strlen(k); n && isspace((unsigned char)k[n - 1]); --n) k[n - 1] = 0;
    if (!*k) k = dev->is_cpu ? "cpu" : "gpu";
    for (int i = 0; i < 2; ++i)
        if (!strcmp(px_forms[i].kind, k)) {
            /* as proxcl.tuning.for_device: gemm_wide's GEMM block where the device's preferred
             * float vector width reaches its W */
            dev->form = px_forms[i];
            cl_uint w = 0;
            if (px_cl.GetDeviceInfo(dev->device, CL_DEVICE_PREFERRED_VECTOR_WIDTH_FLOAT, sizeof w, &w, NULL) != CL_SUCCESS)
                w = 0;
            if (dev->form.gemm_wide[0] && (int)w >= dev->form.gemm_wide[0]) {
                dev->form.gemm_rm = dev->form.gemm_wide[1];
                dev->form.gemm_vec = dev->form.gemm_wide[2];
            }
            dev->t = &dev->form;
            return PROXCL_OK;
        }
    return px_fail(err, PROXCL_ERR_INPUT, "PROXCL_TUNING must be 'cpu' or 'gpu', got '%s'", k);
}

proxcl_status px_device_open(px_device *dev, const char *spec, proxcl_error *err)
{
    memset(dev, 0, sizeof *dev);
    PX_TRY(px_cl_open(err));
    px_pair pairs[PX_MAX_DEVICES], chosen = {0};
    int npairs;
    if (!spec) spec = getenv("PROXCL_DEVICE");
    PX_TRY(list_pairs(pairs, &npairs, err));
    PX_TRY(pick(spec, pairs, npairs, &chosen, err));
    dev->platform = chosen.p;
    dev->device = chosen.d;
    dev->is_cpu = (chosen.type & CL_DEVICE_TYPE_CPU) != 0;
    cl_uint cus = 0;
    if (px_cl.GetDeviceInfo(chosen.d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cus, &cus, NULL) != CL_SUCCESS || !cus)
        cus = 1;
    dev->compute_units = (int)cus;
    PX_TRY(choose_tuning(dev, err));
    char pn[120], dn[120];
    info_str(chosen.p, NULL, CL_PLATFORM_NAME, pn, sizeof pn);
    info_str(NULL, chosen.d, CL_DEVICE_NAME, dn, sizeof dn);
    snprintf(dev->name, sizeof dev->name, "%s | %s", pn, dn);
    cl_int rc;
    dev->context = px_cl.CreateContext(NULL, 1, &dev->device, NULL, NULL, &rc);
    PX_TRY(px_cl_check(rc, "clCreateContext", err));
    dev->queue = px_cl.CreateCommandQueue(dev->context, dev->device, 0, &rc);
    PX_TRY(px_cl_check(rc, "clCreateCommandQueue", err));
    const char *trace = getenv("PROXCL_TRACE");
    if (trace && *trace && !(dev->trace = fopen(trace, "a")))
        return px_fail(err, PROXCL_ERR_IO, "cannot open PROXCL_TRACE file %s", trace);
    return PROXCL_OK;
}

void px_device_close(px_device *dev)
{
    for (px_kernel *k = dev->kernels, *next; k; k = next) {
        next = k->next;
        px_cl.ReleaseKernel(k->kernel);
        free(k->file);
        free(k->name);
        free(k->options);
        free(k);
    }
    for (struct px_program *p = dev->programs, *next; p; p = next) {
        next = p->next;
        px_cl.ReleaseProgram(p->program);
        free(p->file);
        free(p->options);
        free(p);
    }
    if (dev->queue) px_cl.ReleaseCommandQueue(dev->queue);
    if (dev->context) px_cl.ReleaseContext(dev->context);
    if (dev->trace) fclose(dev->trace);
    memset(dev, 0, sizeof *dev);
}

/* ---- programs and kernels ---- */

static int cmp_define(const void *a, const void *b)
{
    return strcmp(((const px_define *)a)->name, ((const px_define *)b)->name);
}

/* "-DK=V ..." sorted by name, then the language options: Device.program's string. */
static void build_options(const px_define *defs, int ndefs, char *out, size_t size)
{
    px_define sorted[PX_MAX_DEFINES];
    if (ndefs) memcpy(sorted, defs, (size_t)ndefs * sizeof *defs);
    qsort(sorted, (size_t)ndefs, sizeof *sorted, cmp_define);
    size_t at = 0;
    out[0] = 0;
    for (int i = 0; i < ndefs; ++i)
        at += (size_t)snprintf(out + at, size - at, "%s-D%s=%d", i ? " " : "", sorted[i].name, sorted[i].value);
    snprintf(out + at, size - at, " -cl-std=CL1.2 -cl-mad-enable");
}

static const char *kernel_text(const char *file)
{
    for (int i = 0; i < PX_KERNEL_FILES; ++i)
        if (!strcmp(px_kernel_files[i].name, file)) return px_kernel_files[i].text;
    return NULL;
}

static proxcl_status get_program(px_device *dev, const char *file, const char *options, cl_program *out,
                                 proxcl_error *err)
{
    for (struct px_program *p = dev->programs; p; p = p->next)
        if (!strcmp(p->file, file) && !strcmp(p->options, options)) { *out = p->program; return PROXCL_OK; }
    const char *text = kernel_text(file);
    if (!text) return px_fail(err, PROXCL_ERR_OPENCL, "no embedded kernel file %s", file);
    const char *parts[3] = {px_common_h, "\n", text};
    cl_int rc;
    cl_program prog = px_cl.CreateProgramWithSource(dev->context, 3, parts, NULL, &rc);
    PX_TRY(px_cl_check(rc, "clCreateProgramWithSource", err));
    rc = px_cl.BuildProgram(prog, 1, &dev->device, options, NULL, NULL);
    if (rc != CL_SUCCESS) {
        char log[400] = "";
        px_cl.GetProgramBuildInfo(prog, dev->device, CL_PROGRAM_BUILD_LOG, sizeof log - 1, log, NULL);
        px_cl.ReleaseProgram(prog);
        return px_fail(err, PROXCL_ERR_OPENCL, "building %s (%s) failed: %s: %s", file, options,
                       px_cl_error_name(rc), log);
    }
    struct px_program *p = px_alloc(sizeof *p, err);
    if (!p || !(p->file = dup_str(file)) || !(p->options = dup_str(options))) {
        if (p) free(p->file);
        free(p);
        px_cl.ReleaseProgram(prog);
        return px_fail(err, PROXCL_ERR_MEMORY, "out of memory");
    }
    p->program = prog;
    p->next = dev->programs;
    dev->programs = p;
    *out = prog;
    return PROXCL_OK;
}

proxcl_status px_kernel_get(px_device *dev, const char *file, const char *name, const px_define *defs,
                            int ndefs, px_kernel **out, proxcl_error *err)
{
    char options[512];
    if (ndefs > PX_MAX_DEFINES)
        return px_fail(err, PROXCL_ERR_OPENCL, "kernel %s: %d build defines, more than %d", name, ndefs, PX_MAX_DEFINES);
    build_options(defs, ndefs, options, sizeof options);
    for (px_kernel *k = dev->kernels; k; k = k->next)
        if (!strcmp(k->name, name) && !strcmp(k->file, file) && !strcmp(k->options, options)) {
            *out = k;
            return PROXCL_OK;
        }
    cl_program prog = NULL;
    PX_TRY(get_program(dev, file, options, &prog, err));
    cl_int rc;
    cl_kernel kern = px_cl.CreateKernel(prog, name, &rc);
    if (rc != CL_SUCCESS)
        return px_fail(err, PROXCL_ERR_OPENCL, "kernel %s of %s: %s", name, file, px_cl_error_name(rc));
    px_kernel *k = px_alloc(sizeof *k, err);
    if (!k || !(k->file = dup_str(file)) || !(k->name = dup_str(name)) || !(k->options = dup_str(options))) {
        if (k) { free(k->file); free(k->name); }
        free(k);
        px_cl.ReleaseKernel(kern);
        return px_fail(err, PROXCL_ERR_MEMORY, "out of memory");
    }
    k->kernel = kern;
    k->nlast = -1;
    k->next = dev->kernels;
    dev->kernels = k;
    *out = k;
    return PROXCL_OK;
}

/* ---- launches ---- */

static size_t ceil_to(size_t n, size_t m)
{
    size_t r = (n + m - 1) / m * m;
    return r > m ? r : m;
}

static int same_arg(const px_arg *a, const px_arg *b)
{
    if (a->kind != b->kind) return 0;
    switch (a->kind) {
    case 'i': return a->v.i == b->v.i;
    case 'u': return a->v.u == b->v.u;
    case 'f': return memcmp(&a->v.f, &b->v.f, sizeof a->v.f) == 0;
    default: return a->v.m == b->v.m;
    }
}

static void trace_launch(px_device *dev, const px_kernel *k, int dims, const size_t *g, const size_t *l,
                         const px_arg *args, int nargs)
{
    FILE *f = dev->trace;
    fprintf(f, "{\"kernel\": \"%s\", \"options\": \"%s\", \"global\": [", k->name, k->options);
    for (int d = 0; d < dims; ++d) fprintf(f, "%s%zu", d ? ", " : "", g[d]);
    fprintf(f, "], \"local\": [");
    for (int d = 0; d < dims; ++d) fprintf(f, "%s%zu", d ? ", " : "", l[d]);
    fprintf(f, "], \"args\": [");
    for (int i = 0; i < nargs; ++i) {
        const px_arg *a = &args[i];
        fprintf(f, "%s", i ? ", " : "");
        if (a->kind == 'i') fprintf(f, "%d", (int)a->v.i);
        else if (a->kind == 'u') fprintf(f, "%u", (unsigned)a->v.u);
        else if (a->kind == 'f') fprintf(f, "%.9g", (double)a->v.f);
        else fprintf(f, a->v.m ? "\"buf\"" : "null");
    }
    fprintf(f, "]}\n");
}

proxcl_status px_launch(px_device *dev, px_kernel *k, int dims, const size_t *gsize, const size_t *lsize,
                        const px_arg *args, int nargs, proxcl_error *err)
{
    if (nargs > PX_MAX_ARGS) return px_fail(err, PROXCL_ERR_OPENCL, "%s: too many arguments", k->name);
    /* set only the arguments that differ from this kernel's previous launch (as Device.launch) */
    for (int i = 0; i < nargs; ++i) {
        if (k->nlast == nargs && same_arg(&k->last[i], &args[i])) continue;
        const px_arg *a = &args[i];
        cl_int rc;
        if (a->kind == 'm') rc = px_cl.SetKernelArg(k->kernel, (cl_uint)i, sizeof(cl_mem), &a->v.m);   /* NULL: a NULL buffer */
        else rc = px_cl.SetKernelArg(k->kernel, (cl_uint)i, 4, &a->v);
        if (rc != CL_SUCCESS) {
            k->nlast = -1;
            return px_fail(err, PROXCL_ERR_OPENCL, "argument %d of %s: %s", i, k->name, px_cl_error_name(rc));
        }
    }
    memcpy(k->last, args, (size_t)nargs * sizeof *args);
    k->nlast = nargs;
    size_t g[3];
    for (int d = 0; d < dims; ++d) g[d] = ceil_to(gsize[d], lsize[d]);
    if (dev->trace) trace_launch(dev, k, dims, g, lsize, args, nargs);
    cl_int rc = px_cl.EnqueueNDRangeKernel(dev->queue, k->kernel, (cl_uint)dims, NULL, g, lsize, 0, NULL, NULL);
    if (rc != CL_SUCCESS)
        return px_fail(err, PROXCL_ERR_OPENCL, "launching %s: %s", k->name, px_cl_error_name(rc));
    return PROXCL_OK;
}

void px_forget_args(px_device *dev)
{
    for (px_kernel *k = dev->kernels; k; k = k->next) k->nlast = -1;
}

/* ---- buffers ---- */

proxcl_status px_buffer(px_device *dev, size_t bytes, cl_mem *out, proxcl_error *err)
{
    *out = NULL;
    if (!bytes) return PROXCL_OK;
    cl_int rc;
    *out = px_cl.CreateBuffer(dev->context, CL_MEM_READ_WRITE, bytes, NULL, &rc);
    if (rc != CL_SUCCESS) {
        *out = NULL;
        return px_fail(err, PROXCL_ERR_OPENCL, "allocating %zu bytes on the device: %s", bytes,
                       px_cl_error_name(rc));
    }
    return PROXCL_OK;
}

proxcl_status px_upload(px_device *dev, cl_mem dst, const void *src, size_t bytes, proxcl_error *err)
{
    if (!bytes) return PROXCL_OK;
    return px_cl_check(px_cl.EnqueueWriteBuffer(dev->queue, dst, CL_TRUE, 0, bytes, src, 0, NULL, NULL),
                       "clEnqueueWriteBuffer", err);
}

proxcl_status px_download(px_device *dev, cl_mem src, void *dst, size_t bytes, proxcl_error *err)
{
    if (!bytes) return PROXCL_OK;
    return px_cl_check(px_cl.EnqueueReadBuffer(dev->queue, src, CL_TRUE, 0, bytes, dst, 0, NULL, NULL),
                       "clEnqueueReadBuffer", err);
}

proxcl_status px_buffer_from(px_device *dev, const void *src, size_t bytes, cl_mem *out, proxcl_error *err)
{
    PX_TRY(px_buffer(dev, bytes, out, err));
    proxcl_status s = px_upload(dev, *out, src, bytes, err);
    if (s != PROXCL_OK) px_release(out);
    return s;
}

void px_release(cl_mem *m)
{
    if (*m) px_cl.ReleaseMemObject(*m);
    *m = NULL;
}
