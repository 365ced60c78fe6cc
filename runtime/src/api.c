/* The public functions of proxcl.h: a model file read and checked, its network built and put on
 * a device, inference, and training on the frozen support. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "model.h"

struct proxcl_model {
    px_net net;
    char *spec_text, *metadata_text;
    int half;
};


proxcl_status proxcl_check_file(const char *path, proxcl_error *err)
{
    px_file f;
    px_net net;
    memset(&net, 0, sizeof net);
    if (!path) return px_fail(err, PROXCL_ERR_INPUT, "no model file given");
    PX_TRY(px_file_read(path, &f, err));
    proxcl_status s = px_net_build(&net, f.spec_text, &f, err);
    if (s != PROXCL_OK && err) {                           /* say which file */
        char msg[sizeof err->message];
        snprintf(msg, sizeof msg, "%s", err->message);
        if (s == PROXCL_ERR_MODEL) px_fail(err, s, "%s: its model cannot be built: %s", path, msg);
    }
    px_net_free(&net);
    px_file_free(&f);
    return s;
}

proxcl_status proxcl_load(const char *path, const char *device, proxcl_model **out, proxcl_error *err)
{
    if (!out) return px_fail(err, PROXCL_ERR_INPUT, "proxcl_load: out is NULL");
    *out = NULL;
    if (!path) return px_fail(err, PROXCL_ERR_INPUT, "no model file given");
    px_file f;
    PX_TRY(px_file_read(path, &f, err));
    proxcl_model *m = px_alloc(sizeof *m, err);
    if (!m) {
        px_file_free(&f);
        return PROXCL_ERR_MEMORY;
    }
    proxcl_status s = px_net_build(&m->net, f.spec_text, &f, err);
    if (s == PROXCL_ERR_MODEL && err) {
        char msg[sizeof err->message];
        snprintf(msg, sizeof msg, "%s", err->message);
        px_fail(err, s, "%s: its model cannot be built: %s", path, msg);
    }
    m->spec_text = f.spec_text;
    m->metadata_text = f.metadata_text;
    f.spec_text = f.metadata_text = NULL;
    m->half = f.ntensors > 0 && f.tensors[0].half;
    px_file_free(&f);
    if (s == PROXCL_OK) {
        s = px_device_open(&m->net.dev, device, err);
        m->net.dev_open = 1;
    }
    if (s == PROXCL_OK) s = px_net_upload(&m->net, err);
    if (s != PROXCL_OK) {
        proxcl_free(m);
        return s;
    }
    *out = m;
    return PROXCL_OK;
}

void proxcl_free(proxcl_model *model)
{
    if (!model) return;
    px_net_free(&model->net);
    free(model->spec_text);
    free(model->metadata_text);
    free(model);
}

int proxcl_input_shape(const proxcl_model *model, int dims[3])
{
    for (int i = 0; i < 3; ++i) dims[i] = i < model->net.input_rank ? model->net.input_shape[i] : 0;
    return model->net.input_rank;
}

int proxcl_input_size(const proxcl_model *model)
{
    int v = 1;
    for (int i = 0; i < model->net.input_rank; ++i) v *= model->net.input_shape[i];
    return v;
}

int proxcl_num_classes(const proxcl_model *model) { return model->net.num_classes; }
const char *proxcl_device_name(const proxcl_model *model) { return model->net.dev.name; }
const char *proxcl_metadata(const proxcl_model *model) { return model->metadata_text; }

int proxcl_normalisation(const proxcl_model *model, double *mean, double *std)
{
    cJSON *md = cJSON_Parse(model->metadata_text);
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(md, "normalisation");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(norm, "mean"), *b = cJSON_GetObjectItemCaseSensitive(norm, "std");
    int ok = cJSON_IsNumber(a) && cJSON_IsNumber(b) && isfinite(a->valuedouble) && isfinite(b->valuedouble)
             && b->valuedouble > 0;
    if (ok) {
        *mean = a->valuedouble;
        *std = b->valuedouble;
    }
    cJSON_Delete(md);
    return ok;
}

/* (x - mean) * (1 / std) in float32, as proxcl.data.normalise */
void proxcl_normalise(float *x, size_t count, double mean, double std)
{
    const float m = (float)mean, r = (float)(1.0 / std);
    for (size_t i = 0; i < count; ++i) {
        x[i] -= m;
        x[i] *= r;
    }
}

static proxcl_status check_batch(const proxcl_model *model, const void *x, int n, const void *out, proxcl_error *err)
{
    if (!model) return px_fail(err, PROXCL_ERR_INPUT, "no model");
    if (!x || !out) return px_fail(err, PROXCL_ERR_INPUT, "inputs or outputs are NULL");
    if (n < 1) return px_fail(err, PROXCL_ERR_INPUT, "empty batch (n = %d)", n);
    if ((long long)n * proxcl_input_size(model) > 2147483647LL / 4)
        return px_fail(err, PROXCL_ERR_INPUT, "batch of %d is too large; split it", n);
    return PROXCL_OK;
}

proxcl_status proxcl_forward(proxcl_model *model, const float *x, int n, float *logits, proxcl_error *err)
{
    PX_TRY(check_batch(model, x, n, logits, err));
    return px_net_forward(&model->net, x, n, logits, NULL, err);
}

proxcl_status proxcl_probabilities(proxcl_model *model, const float *x, int n, float *probs, proxcl_error *err)
{
    PX_TRY(check_batch(model, x, n, probs, err));
    return px_net_forward(&model->net, x, n, NULL, probs, err);
}

proxcl_status proxcl_predict(proxcl_model *model, const float *x, int n, float *logits, float *probs,
                             proxcl_error *err)
{
    PX_TRY(check_batch(model, x, n, logits ? (const void *)logits : probs, err));
    return px_net_forward(&model->net, x, n, logits, probs, err);
}

void proxcl_optimizer_defaults(proxcl_optimizer *opt)
{
    opt->optimizer = "sgd";
    opt->momentum = 0.9;
    opt->beta1 = 0.9;
    opt->beta2 = 0.999;
    opt->eps = 1e-8;
}

proxcl_status proxcl_train_begin(proxcl_model *model, const proxcl_optimizer *opt, proxcl_error *err)
{
    if (!model || !opt || !opt->optimizer) return px_fail(err, PROXCL_ERR_INPUT, "no model or optimizer");
    px_net *net = &model->net;
    if (!strcmp(opt->optimizer, "sgd")) {
        if (!(opt->momentum >= 0.0 && opt->momentum < 1.0))
            return px_fail(err, PROXCL_ERR_INPUT, "sgd: momentum must be in [0, 1), got %g", opt->momentum);
        net->adam = 0;
    } else if (!strcmp(opt->optimizer, "adam")) {
        if (!(opt->beta1 >= 0.0 && opt->beta1 < 1.0 && opt->beta2 >= 0.0 && opt->beta2 < 1.0 && opt->eps > 0.0))
            return px_fail(err, PROXCL_ERR_INPUT, "adam: betas must be in [0, 1) and eps > 0");
        net->adam = 1;
    } else {
        return px_fail(err, PROXCL_ERR_INPUT, "unknown optimizer '%s' (choose sgd or adam)", opt->optimizer);
    }
    net->momentum = opt->momentum;
    net->beta1 = opt->beta1;
    net->beta2 = opt->beta2;
    net->eps = opt->eps;
    return px_net_train_begin(net, err);
}

static proxcl_status check_labels(const proxcl_model *model, const int32_t *labels, int n, proxcl_error *err)
{
    if (!labels) return px_fail(err, PROXCL_ERR_INPUT, "labels are NULL");
    for (int i = 0; i < n; ++i)
        if (labels[i] < 0 || labels[i] >= model->net.num_classes)
            return px_fail(err, PROXCL_ERR_INPUT, "labels must lie in [0, %d], got %d", model->net.num_classes - 1,
                           (int)labels[i]);
    return PROXCL_OK;
}

proxcl_status proxcl_train_step(proxcl_model *model, const float *x, const int32_t *labels, int n, double lr,
                                double *loss_sum, int *correct, proxcl_error *err)
{
    PX_TRY(check_batch(model, x, n, labels, err));
    PX_TRY(check_labels(model, labels, n, err));
    if (!model->net.training) return px_fail(err, PROXCL_ERR_INPUT, "call proxcl_train_begin first");
    if (!(lr > 0.0) || !isfinite(lr)) return px_fail(err, PROXCL_ERR_INPUT, "the learning rate must be > 0, got %g", lr);
    return px_net_loss_step(&model->net, x, labels, n, 1, lr, loss_sum, correct, err);
}

void proxcl_set_seed(proxcl_model *model, uint64_t seed)
{
    if (model) px_net_set_seed(&model->net, seed);
}

proxcl_status proxcl_evaluate(proxcl_model *model, const float *x, const int32_t *labels, int n, double *loss_sum,
                              int *correct, proxcl_error *err)
{
    PX_TRY(check_batch(model, x, n, labels, err));
    PX_TRY(check_labels(model, labels, n, err));
    return px_net_loss_step(&model->net, x, labels, n, 0, 0.0, loss_sum, correct, err);
}

proxcl_status proxcl_save(proxcl_model *model, const char *path, const char *metadata_json, proxcl_error *err)
{
    if (!model || !path || !*path) return px_fail(err, PROXCL_ERR_INPUT, "no model or no path");
    const char *md = metadata_json ? metadata_json : model->metadata_text;
    cJSON *check = cJSON_Parse(md);
    int ok = cJSON_IsObject(check);
    cJSON_Delete(check);
    if (!ok) return px_fail(err, PROXCL_ERR_INPUT, "metadata must be a JSON object");
    px_tensor *t = NULL;
    int count = 0;
    unsigned char *blob = NULL;
    size_t size = 0;
    proxcl_status s = px_net_tensors(&model->net, model->half, &t, &count, err);
    if (s == PROXCL_OK) s = px_file_bytes(model->spec_text, md, t, count, model->half, &blob, &size, err);
    px_net_tensors_free(t, count);
    px_file back;
    if (s == PROXCL_OK && (s = px_file_parse(blob, size, path, &back, err)) == PROXCL_OK)   /* never write a file */
        px_file_free(&back);                                                              /* that cannot be read */
    if (s == PROXCL_OK) s = px_write_atomic(path, blob, size, err);
    free(blob);
    return s;
}

proxcl_status proxcl_devices(char *out, size_t size, proxcl_error *err)
{
    return px_device_list(out, size, err);
}

proxcl_status proxcl_open_device(const char *device, char *name, size_t size, proxcl_error *err)
{
    px_device dev;
    proxcl_status s = px_device_open(&dev, device, err);
    if (s == PROXCL_OK && name && size) snprintf(name, size, "%s", dev.name);
    px_device_close(&dev);
    return s;
}
