/* A made-up OpenCL library for the tests of device choice (tests/test_runtime_c.py): the platforms
 * and devices that $PX_FAKE_PLATFORMS lists, as "platform|device|type;platform|device|type;..."
 * (type: the CL_DEVICE_TYPE bits in decimal; a platform with an empty device has none, as Mesa's
 * Clover without a GPU).  It answers the queries of device choice and makes a context and a queue
 * that do nothing; every other entry point fails.  Loaded through $PROXCL_OPENCL_LIBRARY.  A
 * platform named "POCL_AFFINITY=" is named after the value of that variable when the platforms
 * are first listed ("POCL_AFFINITY=unset" without it), as a driver would read it then. */
#include <stdlib.h>
#include <string.h>

#include <CL/cl.h>

#define MAX 8
static struct { char name[64], device[64]; cl_device_type type; int has_device; } plats[MAX];
static int nplats = -1;
static int dummy;

static void load(void)
{
    if (nplats >= 0) return;
    nplats = 0;
    const char *spec = getenv("PX_FAKE_PLATFORMS");
    char buf[1024];
    strncpy(buf, spec ? spec : "", sizeof buf - 1);
    buf[sizeof buf - 1] = 0;
    for (char *save = NULL, *item = strtok_r(buf, ";", &save); item && nplats < MAX;
         item = strtok_r(NULL, ";", &save)) {
        char *dev = strchr(item, '|'), *type = dev ? strchr(dev + 1, '|') : NULL;
        if (dev) *dev++ = 0;
        if (type) *type++ = 0;
        strncpy(plats[nplats].name, item, sizeof plats[nplats].name - 1);
        if (!strcmp(item, "POCL_AFFINITY=")) {
            const char *v = getenv("POCL_AFFINITY");
            strncat(plats[nplats].name, v ? v : "unset", sizeof plats[nplats].name - strlen(item) - 1);
        }
        strncpy(plats[nplats].device, dev ? dev : "", sizeof plats[nplats].device - 1);
        plats[nplats].type = type ? (cl_device_type)strtoul(type, NULL, 10) : 0;
        plats[nplats].has_device = dev && *dev;
        ++nplats;
    }
}

/* platform i is (cl_platform_id)&plats[i], its device (cl_device_id)&plats[i].device */
static int index_of(const void *p)
{
    for (int i = 0; i < nplats; ++i)
        if (p == (const void *)&plats[i] || p == (const void *)plats[i].device) return i;
    return -1;
}

static cl_int answer(const void *data, size_t n, size_t size, void *value, size_t *size_ret)
{
    if (size_ret) *size_ret = n;
    if (value) {
        if (size < n) return CL_INVALID_VALUE;
        memcpy(value, data, n);
    }
    return CL_SUCCESS;
}

cl_int clGetPlatformIDs(cl_uint num_entries, cl_platform_id *platforms, cl_uint *num_platforms)
{
    load();
    if (num_platforms) *num_platforms = (cl_uint)nplats;
    for (int i = 0; platforms && i < nplats && (cl_uint)i < num_entries; ++i) platforms[i] = (cl_platform_id)&plats[i];
    return nplats ? CL_SUCCESS : -1001;
}

cl_int clGetPlatformInfo(cl_platform_id p, cl_platform_info what, size_t size, void *value, size_t *size_ret)
{
    int i = index_of(p);
    if (i < 0) return CL_INVALID_PLATFORM;
    if (what == CL_PLATFORM_NAME || what == CL_PLATFORM_VENDOR)
        return answer(plats[i].name, strlen(plats[i].name) + 1, size, value, size_ret);
    if (what == CL_PLATFORM_VERSION) return answer("OpenCL 1.2 fake", 16, size, value, size_ret);
    return CL_INVALID_VALUE;
}

cl_int clGetDeviceIDs(cl_platform_id p, cl_device_type type, cl_uint num_entries, cl_device_id *devices,
                      cl_uint *num_devices)
{
    int i = index_of(p);
    if (i < 0) return CL_INVALID_PLATFORM;
    if (!plats[i].has_device || !(plats[i].type & type)) return CL_DEVICE_NOT_FOUND;
    if (num_devices) *num_devices = 1;
    if (devices && num_entries) devices[0] = (cl_device_id)plats[i].device;
    return CL_SUCCESS;
}

cl_int clGetDeviceInfo(cl_device_id d, cl_device_info what, size_t size, void *value, size_t *size_ret)
{
    int i = index_of(d);
    if (i < 0) return CL_INVALID_DEVICE;
    if (what == CL_DEVICE_TYPE) return answer(&plats[i].type, sizeof plats[i].type, size, value, size_ret);
    if (what == CL_DEVICE_NAME) return answer(plats[i].device, strlen(plats[i].device) + 1, size, value, size_ret);
    return CL_INVALID_VALUE;
}

cl_context clCreateContext(const cl_context_properties *props, cl_uint n, const cl_device_id *devices,
                           void (*notify)(const char *, const void *, size_t, void *), void *user, cl_int *rc)
{
    (void)props, (void)n, (void)devices, (void)notify, (void)user;
    if (rc) *rc = CL_SUCCESS;
    return (cl_context)&dummy;
}

cl_command_queue clCreateCommandQueue(cl_context c, cl_device_id d, cl_command_queue_properties props, cl_int *rc)
{
    (void)c, (void)d, (void)props;
    if (rc) *rc = CL_SUCCESS;
    return (cl_command_queue)&dummy;
}

cl_int clReleaseCommandQueue(cl_command_queue q) { (void)q; return CL_SUCCESS; }
cl_int clReleaseContext(cl_context c) { (void)c; return CL_SUCCESS; }

/* the rest: present (the runtime looks every entry point up), never used by device choice */
cl_program clCreateProgramWithSource(cl_context c, cl_uint n, const char **s, const size_t *l, cl_int *rc)
{ (void)c, (void)n, (void)s, (void)l; if (rc) *rc = CL_INVALID_OPERATION; return NULL; }
cl_int clBuildProgram(cl_program p, cl_uint n, const cl_device_id *d, const char *o, void (*f)(cl_program, void *),
                      void *u)
{ (void)p, (void)n, (void)d, (void)o, (void)f, (void)u; return CL_INVALID_OPERATION; }
cl_int clGetProgramBuildInfo(cl_program p, cl_device_id d, cl_program_build_info w, size_t s, void *v, size_t *r)
{ (void)p, (void)d, (void)w, (void)s, (void)v, (void)r; return CL_INVALID_OPERATION; }
cl_kernel clCreateKernel(cl_program p, const char *n, cl_int *rc)
{ (void)p, (void)n; if (rc) *rc = CL_INVALID_OPERATION; return NULL; }
cl_int clSetKernelArg(cl_kernel k, cl_uint i, size_t s, const void *v)
{ (void)k, (void)i, (void)s, (void)v; return CL_INVALID_OPERATION; }
cl_int clEnqueueNDRangeKernel(cl_command_queue q, cl_kernel k, cl_uint d, const size_t *o, const size_t *g,
                              const size_t *l, cl_uint n, const cl_event *w, cl_event *e)
{ (void)q, (void)k, (void)d, (void)o, (void)g, (void)l, (void)n, (void)w, (void)e; return CL_INVALID_OPERATION; }
cl_mem clCreateBuffer(cl_context c, cl_mem_flags f, size_t s, void *h, cl_int *rc)
{ (void)c, (void)f, (void)s, (void)h; if (rc) *rc = CL_INVALID_OPERATION; return NULL; }
cl_int clEnqueueWriteBuffer(cl_command_queue q, cl_mem m, cl_bool b, size_t o, size_t s, const void *p, cl_uint n,
                            const cl_event *w, cl_event *e)
{ (void)q, (void)m, (void)b, (void)o, (void)s, (void)p, (void)n, (void)w, (void)e; return CL_INVALID_OPERATION; }
cl_int clEnqueueReadBuffer(cl_command_queue q, cl_mem m, cl_bool b, size_t o, size_t s, void *p, cl_uint n,
                           const cl_event *w, cl_event *e)
{ (void)q, (void)m, (void)b, (void)o, (void)s, (void)p, (void)n, (void)w, (void)e; return CL_INVALID_OPERATION; }
cl_int clFinish(cl_command_queue q) { (void)q; return CL_SUCCESS; }
cl_int clReleaseMemObject(cl_mem m) { (void)m; return CL_SUCCESS; }
cl_int clReleaseKernel(cl_kernel k) { (void)k; return CL_SUCCESS; }
cl_int clReleaseProgram(cl_program p) { (void)p; return CL_SUCCESS; }
