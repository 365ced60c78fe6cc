/* The OpenCL library, opened at run time: a build needs only the OpenCL headers, and a binary
 * runs wherever an ICD loader or a vendor's libOpenCL is found (Android ships no loader in the
 * NDK; boards name theirs differently).  $PROXCL_OPENCL_LIBRARY names one to use instead. */
#ifdef __linux__
#define _GNU_SOURCE      /* sched_getaffinity, CPU_ISSET */
#include <sched.h>
#include <unistd.h>
#endif
#include <dlfcn.h>
#include <stdlib.h>

#include "px.h"

px_cl_api px_cl;
static void *lib;

static const char *const candidates[] = {
    "libOpenCL.so.1", "libOpenCL.so",
    "/system/vendor/lib64/libOpenCL.so", "/vendor/lib64/libOpenCL.so",   /* Android */
    "/system/lib64/libOpenCL.so",
};

/* A function pointer from the library (through a data pointer, as POSIX allows for dlsym). */
#define PX_SYM(field, sym)                                                        \
    do {                                                                          \
        void *p_ = dlsym(lib, sym);                                               \
        if (!p_) {                                                                \
            dlclose(lib);                                                         \
            lib = NULL;                                                           \
            return px_fail(err, PROXCL_ERR_DEVICE, "%s lacks the OpenCL function %s", path, sym); \
        }                                                                         \
        *(void **)(&px_cl.field) = p_;                                            \
    } while (0)

/* POCL_AFFINITY=1 (PoCL's CPU driver pins its worker thread i to CPU i) where the process may
 * run on every CPU and the environment sets neither it nor POCL_MAX_PTHREAD_COUNT, as
 * proxcl.runtime.pocl_affinity_default: unpinned workers sometimes share a core for a whole
 * process (docs/PORTABILITY.md).  Off Linux, nothing. */
static void pocl_affinity_default(void)
{
#ifdef __linux__
    if (getenv("POCL_AFFINITY") || getenv("POCL_MAX_PTHREAD_COUNT")) return;
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    if (n <= 0 || n > CPU_SETSIZE || sched_getaffinity(0, sizeof set, &set) || CPU_COUNT(&set) != n) return;
    for (long i = 0; i < n; ++i)
        if (!CPU_ISSET(i, &set)) return;
    setenv("POCL_AFFINITY", "1", 0);
#endif
}

proxcl_status px_cl_open(proxcl_error *err)
{
    if (lib) return PROXCL_OK;
    pocl_affinity_default();
    const char *path = getenv("PROXCL_OPENCL_LIBRARY");
    if (path && *path) {
        lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!lib) return px_fail(err, PROXCL_ERR_DEVICE, "cannot open %s (PROXCL_OPENCL_LIBRARY): %s", path,
                                 dlerror());
    } else {
        for (size_t i = 0; i < sizeof candidates / sizeof *candidates && !lib; ++i) {
            path = candidates[i];
            lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        }
        if (!lib)
            return px_fail(err, PROXCL_ERR_DEVICE, "no OpenCL library found (libOpenCL.so.1); install an "
                           "OpenCL driver and its ICD loader (Debian: pocl-opencl-icd), or name the library "
                           "in PROXCL_OPENCL_LIBRARY");
    }
    PX_SYM(GetPlatformIDs, "clGetPlatformIDs");
    PX_SYM(GetPlatformInfo, "clGetPlatformInfo");
    PX_SYM(GetDeviceIDs, "clGetDeviceIDs");
    PX_SYM(GetDeviceInfo, "clGetDeviceInfo");
    PX_SYM(CreateContext, "clCreateContext");
    PX_SYM(CreateCommandQueue, "clCreateCommandQueue");
    PX_SYM(CreateProgramWithSource, "clCreateProgramWithSource");
    PX_SYM(BuildProgram, "clBuildProgram");
    PX_SYM(GetProgramBuildInfo, "clGetProgramBuildInfo");
    PX_SYM(CreateKernel, "clCreateKernel");
    PX_SYM(SetKernelArg, "clSetKernelArg");
    PX_SYM(EnqueueNDRangeKernel, "clEnqueueNDRangeKernel");
    PX_SYM(CreateBuffer, "clCreateBuffer");
    PX_SYM(EnqueueWriteBuffer, "clEnqueueWriteBuffer");
    PX_SYM(EnqueueReadBuffer, "clEnqueueReadBuffer");
    PX_SYM(Finish, "clFinish");
    PX_SYM(ReleaseMemObject, "clReleaseMemObject");
    PX_SYM(ReleaseKernel, "clReleaseKernel");
    PX_SYM(ReleaseProgram, "clReleaseProgram");
    PX_SYM(ReleaseCommandQueue, "clReleaseCommandQueue");
    PX_SYM(ReleaseContext, "clReleaseContext");
    return PROXCL_OK;
}

const char *px_cl_error_name(cl_int code)
{
    switch (code) {
    case CL_DEVICE_NOT_FOUND: return "CL_DEVICE_NOT_FOUND";
    case CL_DEVICE_NOT_AVAILABLE: return "CL_DEVICE_NOT_AVAILABLE";
    case CL_COMPILER_NOT_AVAILABLE: return "CL_COMPILER_NOT_AVAILABLE";
    case CL_MEM_OBJECT_ALLOCATION_FAILURE: return "CL_MEM_OBJECT_ALLOCATION_FAILURE";
    case CL_OUT_OF_RESOURCES: return "CL_OUT_OF_RESOURCES";
    case CL_OUT_OF_HOST_MEMORY: return "CL_OUT_OF_HOST_MEMORY";
    case CL_BUILD_PROGRAM_FAILURE: return "CL_BUILD_PROGRAM_FAILURE";
    case CL_INVALID_VALUE: return "CL_INVALID_VALUE";
    case CL_INVALID_PLATFORM: return "CL_INVALID_PLATFORM";
    case CL_INVALID_DEVICE: return "CL_INVALID_DEVICE";
    case CL_INVALID_CONTEXT: return "CL_INVALID_CONTEXT";
    case CL_INVALID_COMMAND_QUEUE: return "CL_INVALID_COMMAND_QUEUE";
    case CL_INVALID_MEM_OBJECT: return "CL_INVALID_MEM_OBJECT";
    case CL_INVALID_BUILD_OPTIONS: return "CL_INVALID_BUILD_OPTIONS";
    case CL_INVALID_PROGRAM: return "CL_INVALID_PROGRAM";
    case CL_INVALID_KERNEL_NAME: return "CL_INVALID_KERNEL_NAME";
    case CL_INVALID_KERNEL: return "CL_INVALID_KERNEL";
    case CL_INVALID_ARG_INDEX: return "CL_INVALID_ARG_INDEX";
    case CL_INVALID_ARG_VALUE: return "CL_INVALID_ARG_VALUE";
    case CL_INVALID_ARG_SIZE: return "CL_INVALID_ARG_SIZE";
    case CL_INVALID_KERNEL_ARGS: return "CL_INVALID_KERNEL_ARGS";
    case CL_INVALID_WORK_DIMENSION: return "CL_INVALID_WORK_DIMENSION";
    case CL_INVALID_WORK_GROUP_SIZE: return "CL_INVALID_WORK_GROUP_SIZE";
    case CL_INVALID_WORK_ITEM_SIZE: return "CL_INVALID_WORK_ITEM_SIZE";
    case CL_INVALID_GLOBAL_WORK_SIZE: return "CL_INVALID_GLOBAL_WORK_SIZE";
    case CL_INVALID_BUFFER_SIZE: return "CL_INVALID_BUFFER_SIZE";
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR";
    default: return "an OpenCL error";
    }
}
