/* The network of a model file on a device: what src/proxcl/spec.py, layers.py and models.py do
 * for the Python package, for the launches that inference and training on a frozen support
 * need.  spec.c builds it from the spec and the tensors, model.c runs it, api.c holds it. */
#ifndef PX_MODEL_H
#define PX_MODEL_H

#include "px.h"

enum { L_LINEAR, L_CONV, L_POOL, L_RELU, L_FLATTEN, L_DROPOUT };

typedef struct {
    char name[80];
    int rank, shape[4];          /* PyTorch's shape */
    int rows, cols;              /* the matrix it multiplies with (a bias: [n, 1]) */
    int size;                    /* product of shape */
    int penalised;               /* a weight (not a bias) */
    int csr, nnz;                /* stored as CSR, its entries */
    int idx16;                   /* CSR: aj, ai and ti are uint16 on the device (both dimensions fit,
                                    as ops.sparse.index_dtype); csr.cl's IDX16 */
    int half;                    /* the file stored its values as float16 */
    /* host copies (kept for CSR: the pattern; for every param: the values as loaded) */
    int32_t *indptr, *indices;
    float *values;
    /* device */
    int stored;                  /* values on the device: nnz or size */
    cl_mem data, grad, ap, aj, ai, tp, ti, pm, taps;
    px_pieces pieces[2];         /* CSR: the rows of (ap, aj) and of (tp, ti) in pieces, for SpMM */
    int row_max;                 /* CSR: the most entries of a row */
    cl_mem state[2];             /* optimizer: momentum, or Adam's m and v */
    long steps;
} px_param;

typedef struct {
    int kind, relu;
    int in_rank, in_shape[3], out_rank, out_shape[3];
    char name[64];
    int out, kh, kw, sh, sw, ph, pw, ho, wo, pointwise;
    px_param *weight, *bias;
    double p;                    /* dropout */
    int dropout_index, active;
    uint64_t seed, step;
    uint32_t keys[2];
} px_layer;

/* device buffers of one layer for one batch size, made on first use */
typedef struct {
    cl_mem y, idx, cols, dx, dcols, geo, geo_direct, y_direct;
    cl_mem geo_chunk[2], yc, part;       /* a convolution in batch chunks: G of a chunk (full, last),
                                            a chunk of Y or dY, a chunk's weight gradient */
    cl_mem x_kept, cols_kept, y_kept;    /* what backward needs (not owned) */
} px_lbuf;

typedef struct {
    int n;
    cl_mem input, raw, labels, partial, dz, probs;
    px_lbuf *lb;                 /* one per layer that runs */
    long used;                   /* for least-recently-used eviction */
} px_ws;

#define PX_WORKSPACES 3

typedef struct {
    px_device dev;
    int dev_open;
    px_layer *layers;
    int nlayers;
    int *exec, nexec;            /* the layers that run (a ReLU after linear/conv/pool is fused) */
    int first_param;             /* index in exec of the first layer with parameters */
    px_param **params;
    int nparams;
    int input_rank, input_shape[3], num_classes;
    px_ws ws[PX_WORKSPACES];
    long clock;
    int training;                /* proxcl_train_begin ran */
    /* which convolution's im2col columns the Python runtime's shared scratch would hold now (its
       index in exec, -1: none) and for which samples: a backward pass reuses them, as layers.py */
    int cols_owner, cols_n0, cols_nc;
    int adam;
    double momentum, beta1, beta2, eps;
} px_net;

/* Build the layers of a spec (JSON text) and match them to the file's tensors (no device). */
proxcl_status px_net_build(px_net *net, const char *spec_text, const px_file *file, proxcl_error *err);
/* Put the parameters on the device (net->dev must be open). */
proxcl_status px_net_upload(px_net *net, proxcl_error *err);
void px_net_free(px_net *net);

/* logits and/or softmax probabilities [n, K] (either may be NULL) of n samples x[n * input_size] */
proxcl_status px_net_forward(px_net *net, const float *x, int n, float *logits, float *probs, proxcl_error *err);
/* summed loss and correct count; with train, dropout on, gradients and the update at lr */
proxcl_status px_net_loss_step(px_net *net, const float *x, const int32_t *labels, int n, int train, double lr,
                               double *loss_sum, int *correct, proxcl_error *err);
proxcl_status px_net_train_begin(px_net *net, proxcl_error *err);
void px_net_set_seed(px_net *net, uint64_t seed);
/* The parameters as tensors for the writer (values read back from the device), each CSR weight in
 * the smaller of its two forms for values of float16 (half) or float32; free with
 * px_net_tensors_free (also after an error, when *out is set). */
proxcl_status px_net_tensors(px_net *net, int half, px_tensor **out, int *count, proxcl_error *err);
void px_net_tensors_free(px_tensor *t, int count);

#endif
