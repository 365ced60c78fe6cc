/* libproxcl: run and fine-tune proxcl model files (docs/FORMAT.md) on an OpenCL device, from C.
 *
 * The library reads a .proxcl file, builds its network on a chosen OpenCL device with the same
 * kernels and launch settings as the Python package, runs inference, and retrains the values on
 * the frozen CSR support (debiasing) with the SGD or Adam update.  It never calls exit() and
 * never prints: every function that can fail returns a proxcl_status and, when `err` is not
 * NULL, fills it with the same code and a one-line message.  The OpenCL library is opened at
 * run time (libOpenCL.so.1, or $PROXCL_OPENCL_LIBRARY).  docs/DEPLOY.md has the build and an
 * example.  C99; a model is not thread-safe (use one per thread). */
#ifndef PROXCL_H
#define PROXCL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PROXCL_VERSION "0.1.0"

typedef enum {
    PROXCL_OK = 0,
    PROXCL_ERR_IO = 1,       /* a file cannot be read or written */
    PROXCL_ERR_FORMAT = 2,   /* not a valid proxcl model file (docs/FORMAT.md section 3) */
    PROXCL_ERR_MODEL = 3,    /* a valid file whose network cannot be built from its spec */
    PROXCL_ERR_INPUT = 4,    /* a bad argument: sizes, labels, options */
    PROXCL_ERR_DEVICE = 5,   /* no OpenCL library, platform or device matching the request */
    PROXCL_ERR_OPENCL = 6,   /* an OpenCL call failed (program build, memory, launch) */
    PROXCL_ERR_MEMORY = 7,   /* out of host memory */
    PROXCL_ERR_NUMERIC = 8   /* training produced a loss or a weight that is not finite */
} proxcl_status;

typedef struct {
    proxcl_status code;
    char message[512];       /* one line, no newline */
} proxcl_error;

typedef struct proxcl_model proxcl_model;

/* A short name of a status ("io", "format", ...). */
const char *proxcl_status_name(proxcl_status code);

/* ---- loading ---------------------------------------------------------------------------- */

/* Read and check a model file without touching OpenCL: every check of docs/FORMAT.md section 3
 * and that its spec builds a network with the stored tensors. */
proxcl_status proxcl_check_file(const char *path, proxcl_error *err);

/* Read a model file and build it on an OpenCL device.  `device`: NULL (then $PROXCL_DEVICE,
 * else the first GPU, else the first device), "cpu", "gpu", "accelerator", a platform or device
 * name fragment ("pocl", "nvidia") or "P:D" indices, as the Python package takes them.
 * $PROXCL_TUNING=cpu|gpu forces a kernel form.  On success *out owns the model. */
proxcl_status proxcl_load(const char *path, const char *device, proxcl_model **out, proxcl_error *err);

/* Release a model and its OpenCL objects (NULL is fine). */
void proxcl_free(proxcl_model *model);

/* Every OpenCL device, one line each: "P:D<TAB>platform<TAB>device<TAB>type\n" (type: gpu, cpu,
 * accelerator or other), into out (truncated to size, always terminated). */
proxcl_status proxcl_devices(char *out, size_t size, proxcl_error *err);
/* Open a device as proxcl_load would (context and queue) and close it again; name gets
 * "platform | device".  For checking a setup, and as the baseline of memory measurements. */
proxcl_status proxcl_open_device(const char *device, char *name, size_t size, proxcl_error *err);

/* ---- what a model is ---------------------------------------------------------------------- */

/* The per-sample input shape (PyTorch's: [C, H, W] or [F]); returns its rank (3 or 1). */
int proxcl_input_shape(const proxcl_model *model, int dims[3]);
/* Values per sample: the product of the input shape. */
int proxcl_input_size(const proxcl_model *model);
int proxcl_num_classes(const proxcl_model *model);
/* "platform | device" of the OpenCL device the model runs on. */
const char *proxcl_device_name(const proxcl_model *model);
/* The model file's metadata (docs/FORMAT.md) as JSON text. */
const char *proxcl_metadata(const proxcl_model *model);
/* The input normalisation stored by `proxcl train`: x = (pixel - mean) / std.  Returns 1 and
 * sets mean and std when the file has one, else 0. */
int proxcl_normalisation(const proxcl_model *model, double *mean, double *std);
/* Apply it as the Python package does, in place on n*input_size raw pixel values. */
void proxcl_normalise(float *x, size_t count, double mean, double std);

/* ---- inference ---------------------------------------------------------------------------- */

/* logits[n * num_classes] (sample-major) of n normalised inputs x[n * input_size] (NCHW). */
proxcl_status proxcl_forward(proxcl_model *model, const float *x, int n, float *logits, proxcl_error *err);
/* Softmax probabilities, same shapes. */
proxcl_status proxcl_probabilities(proxcl_model *model, const float *x, int n, float *probs,
                                   proxcl_error *err);

/* Both at once (either output may be NULL): one forward pass. */
proxcl_status proxcl_predict(proxcl_model *model, const float *x, int n, float *logits, float *probs,
                             proxcl_error *err);

/* ---- fine-tuning on the frozen support (debiasing) ------------------------------------------ */

typedef struct {
    const char *optimizer;   /* "sgd" (heavy-ball momentum) or "adam" */
    double momentum;         /* sgd */
    double beta1, beta2, eps;/* adam */
} proxcl_optimizer;

/* The debiasing defaults of `proxcl train`: sgd with momentum 0.9 (adam: 0.9, 0.999, 1e-8). */
void proxcl_optimizer_defaults(proxcl_optimizer *opt);

/* Start training: every weight becomes CSR on its nonzeros (a weight already CSR keeps its
 * support), so the support is frozen; the optimizer's state starts at zero. */
proxcl_status proxcl_train_begin(proxcl_model *model, const proxcl_optimizer *opt, proxcl_error *err);
/* One step on a batch: forward (dropout on), softmax cross-entropy, backward on the CSR
 * support, and the update of every parameter at learning rate lr.  Optional outputs: the summed
 * loss and the number of correct predictions of the batch (before the update). */
proxcl_status proxcl_train_step(proxcl_model *model, const float *x, const int32_t *labels, int n,
                                double lr, double *loss_sum, int *correct, proxcl_error *err);
/* Seed the dropout masks (and restart their step counters), as Model.set_seed: `proxcl train`
 * seeds each debiasing epoch with seed * 1000003 + 100000 + epoch, and so does proxcl-run. */
void proxcl_set_seed(proxcl_model *model, uint64_t seed);
/* Summed loss and number correct of a batch in evaluation mode (no update). */
proxcl_status proxcl_evaluate(proxcl_model *model, const float *x, const int32_t *labels, int n,
                              double *loss_sum, int *correct, proxcl_error *err);

/* Write the model as a model file that the Python tools read, atomically (a temporary file
 * beside `path`, then a rename).  metadata_json: the metadata object to store (NULL keeps the
 * loaded file's).  Values are float16 when the loaded file's were, else float32. */
proxcl_status proxcl_save(proxcl_model *model, const char *path, const char *metadata_json,
                          proxcl_error *err);

#ifdef __cplusplus
}
#endif
#endif
