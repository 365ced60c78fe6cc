/* The network of a spec, without a device: proxcl.spec.normalize_spec's rules for the layers and
 * their shapes, the fusion of a ReLU into the layer before it, and the match of the parameters
 * with the model file's tensors (Model.load_sparse_state's checks).  model.c runs it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "model.h"

/* ---- the spec (proxcl.spec.normalize_spec's rules) ---- */

static int spec_int(const cJSON *v, int lo, int *out)
{
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo
        || v->valuedouble > 2147483647.0)
        return 0;
    *out = (int)v->valuedouble;
    return 1;
}

/* an int or a pair of ints >= lo; missing: the default pair */
static int spec_pair(const cJSON *v, int lo, const int *dflt, int out[2])
{
    if (!v) {
        if (!dflt) return 0;
        out[0] = dflt[0];
        out[1] = dflt[1];
        return 1;
    }
    if (cJSON_IsArray(v)) {
        return cJSON_GetArraySize(v) == 2 && spec_int(v->child, lo, &out[0]) && spec_int(v->child->next, lo, &out[1]);
    }
    if (!spec_int(v, lo, &out[0])) return 0;
    out[1] = out[0];
    return 1;
}

static int allowed_keys(const cJSON *l, const char *const *keys)
{
    for (const cJSON *c = l->child; c; c = c->next) {
        int ok = 0;
        for (int i = 0; keys[i] && !ok; ++i) ok = !strcmp(c->string, keys[i]);
        if (!ok) return 0;
    }
    return 1;
}

static int out_size(int n, int k, int s, int p)
{
    return (n + 2 * p - k) / s + 1;
}

static px_param *new_param(const char *name, int rank, const int *shape, int rows, int cols, int penalised,
                           proxcl_error *err)
{
    px_param *p = px_alloc(sizeof *p, err);
    if (!p) return NULL;
    snprintf(p->name, sizeof p->name, "%.79s", name);
    p->rank = rank;
    p->size = 1;
    for (int i = 0; i < rank; ++i) p->size *= (p->shape[i] = shape[i]);
    p->rows = rows;
    p->cols = cols;
    p->penalised = penalised;
    return p;
}

static proxcl_status add_params(px_layer *L, int in_features, int has_bias, proxcl_error *err)
{
    char nm[80];
    int shape[4] = {L->out, L->in_shape[0], L->kh, L->kw};
    snprintf(nm, sizeof nm, "%.63s.weight", L->name);
    if (L->kind == L_LINEAR) {
        shape[1] = in_features;
        L->weight = new_param(nm, 2, shape, L->out, in_features, 1, err);
    } else {
        L->weight = new_param(nm, 4, shape, L->out, L->in_shape[0] * L->kh * L->kw, 1, err);
    }
    if (!L->weight) return PROXCL_ERR_MEMORY;
    if (has_bias) {
        snprintf(nm, sizeof nm, "%.63s.bias", L->name);
        if (!(L->bias = new_param(nm, 1, &L->out, L->out, 1, 0, err))) return PROXCL_ERR_MEMORY;
    }
    return PROXCL_OK;
}

static proxcl_status layer_from_spec(px_layer *L, int i, const cJSON *l, int *rank, int shape[3], int *counts,
                                     int *ndropout, proxcl_error *err)
{
    static const char *const lin_keys[] = {"type", "name", "out", "bias", NULL};
    static const char *const conv_keys[] = {"type", "name", "out", "kernel", "stride", "padding", "bias", NULL};
    static const char *const pool_keys[] = {"type", "kernel", "stride", "padding", NULL};
    static const char *const bare_keys[] = {"type", NULL};
    static const char *const drop_keys[] = {"type", "p", NULL};
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(l, "type");
    const char *t = cJSON_IsString(type) ? type->valuestring : "";
    static const char *const names[6] = {"linear", "conv2d", "maxpool2d", "relu", "flatten", "dropout"};
    const char *const *keys[6] = {lin_keys, conv_keys, pool_keys, bare_keys, bare_keys, drop_keys};
    L->kind = -1;
    for (int k = 0; k < 6; ++k)
        if (!strcmp(t, names[k])) L->kind = k;
    if (!cJSON_IsObject(l) || L->kind < 0)
        return px_fail(err, PROXCL_ERR_MODEL, "model spec: layer %d needs a type, one of linear, conv2d, maxpool2d, "
                       "relu, flatten, dropout", i);
    if (!allowed_keys(l, keys[L->kind]))
        return px_fail(err, PROXCL_ERR_MODEL, "model spec: layer %d (%s) has unknown fields", i, t);
    int has_bias = 1;
    L->in_rank = *rank;
    memcpy(L->in_shape, shape, sizeof L->in_shape);
    L->out_rank = *rank;
    memcpy(L->out_shape, shape, sizeof L->out_shape);
    if (L->kind == L_LINEAR || L->kind == L_CONV) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(l, "name"), *b = cJSON_GetObjectItemCaseSensitive(l, "bias");
        int c = ++counts[L->kind];
        if (nm && (!cJSON_IsString(nm) || !nm->valuestring[0] || strlen(nm->valuestring) >= sizeof L->name))
            return px_fail(err, PROXCL_ERR_MODEL, "model spec: layer %d has a bad name", i);
        if (nm) snprintf(L->name, sizeof L->name, "%s", nm->valuestring);
        else snprintf(L->name, sizeof L->name, "%s%d", L->kind == L_LINEAR ? "fc" : "conv", c);
        for (const char *q = L->name; *q; ++q)
            if (!(*q == '_' || (*q >= '0' && *q <= '9') || (*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z')))
                return px_fail(err, PROXCL_ERR_MODEL, "model spec: layer %d name '%s' must be letters, digits, _", i,
                               L->name);
        if (!spec_int(cJSON_GetObjectItemCaseSensitive(l, "out"), 1, &L->out))
            return px_fail(err, PROXCL_ERR_MODEL, "model spec: layer %s needs out >= 1", L->name);
        if (b && !cJSON_IsBool(b)) return px_fail(err, PROXCL_ERR_MODEL, "model spec: layer %s bias must be true or false", L->name);
        has_bias = !(b && cJSON_IsFalse(b));
    }
    if (L->kind == L_LINEAR) {
        if (*rank != 1)
            return px_fail(err, PROXCL_ERR_MODEL, "model spec: linear layer %s needs a flat input (add a flatten layer)",
                           L->name);
        PX_TRY(add_params(L, shape[0], has_bias, err));
        shape[0] = L->out;
    } else if (L->kind == L_CONV || L->kind == L_POOL) {
        int k[2], s[2], p[2], one[2] = {1, 1}, zero[2] = {0, 0};
        if (*rank != 3) return px_fail(err, PROXCL_ERR_MODEL, "model spec: layer %d needs a [C, H, W] input", i);
        if (!spec_pair(cJSON_GetObjectItemCaseSensitive(l, "kernel"), 1, NULL, k)
            || !spec_pair(cJSON_GetObjectItemCaseSensitive(l, "stride"), 1, L->kind == L_CONV ? one : k, s)
            || !spec_pair(cJSON_GetObjectItemCaseSensitive(l, "padding"), 0, zero, p))
            return px_fail(err, PROXCL_ERR_MODEL, "model spec: layer %d needs a kernel, stride and padding of whole "
                           "numbers", i);
        L->kh = k[0]; L->kw = k[1]; L->sh = s[0]; L->sw = s[1]; L->ph = p[0]; L->pw = p[1];
        if (shape[1] + 2 * L->ph < L->kh || shape[2] + 2 * L->pw < L->kw)
            return px_fail(err, PROXCL_ERR_MODEL, "model spec: layer %d: a %dx%d window does not fit a %dx%d input", i,
                           L->kh, L->kw, shape[1], shape[2]);
        L->ho = out_size(shape[1], L->kh, L->sh, L->ph);
        L->wo = out_size(shape[2], L->kw, L->sw, L->pw);
        if (L->kind == L_POOL && (2 * L->ph > L->kh || 2 * L->pw > L->kw))
            return px_fail(err, PROXCL_ERR_MODEL, "model spec: maxpool2d layer %d: padding must be at most half the "
                           "kernel", i);
        if (L->kind == L_CONV) {
            PX_TRY(add_params(L, 0, has_bias, err));
            L->pointwise = L->kh == 1 && L->kw == 1 && L->sh == 1 && L->sw == 1 && L->ph == 0 && L->pw == 0;
            shape[0] = L->out;
        }
        shape[1] = L->ho;
        shape[2] = L->wo;
    } else if (L->kind == L_FLATTEN) {
        int f = *rank == 3 ? shape[0] * shape[1] * shape[2] : shape[0];
        *rank = 1;
        shape[0] = f;
        shape[1] = shape[2] = 0;
    } else if (L->kind == L_DROPOUT) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(l, "p");
        L->p = p ? p->valuedouble : 0.5;
        if ((p && (!cJSON_IsNumber(p))) || !(L->p >= 0.0 && L->p < 1.0))
            return px_fail(err, PROXCL_ERR_MODEL, "model spec: dropout layer %d p must be in [0, 1)", i);
        L->dropout_index = (*ndropout)++;
    }
    L->out_rank = *rank;
    memcpy(L->out_shape, shape, sizeof L->out_shape);
    return PROXCL_OK;
}

/* ---- matching the file's tensors ---- */

static int same_shape(const px_tensor *t, int rank, const int *shape)
{
    if (t->rank != rank) return 0;
    for (int i = 0; i < rank; ++i)
        if (t->shape[i] != shape[i]) return 0;
    return 1;
}

static proxcl_status take_tensor(px_param *p, const px_tensor *t, proxcl_error *err)
{
    int mshape[2] = {p->rows, p->cols};
    p->half = t->half;
    if (t->csr) {
        if (!p->penalised) return px_fail(err, PROXCL_ERR_MODEL, "%s is a bias; it cannot be "
                                          "CSR", p->name);
        if (!same_shape(t, 2, mshape))
            return px_fail(err, PROXCL_ERR_MODEL, "%s: CSR shape [%lld, %lld] != [%d, %d]",
                           p->name, (long long)t->shape[0], (long long)t->shape[1], p->rows, p->cols);
        p->csr = 1;
        p->nnz = (int)t->nnz;
        p->indptr = px_alloc((size_t)(p->rows + 1) * sizeof(int32_t), err);
        p->indices = px_alloc((size_t)p->nnz * sizeof(int32_t), err);
        p->values = px_alloc((size_t)p->nnz * sizeof(float), err);
        if (!p->indptr || !p->indices || !p->values) return PROXCL_ERR_MEMORY;
        memcpy(p->indptr, t->indptr, (size_t)(p->rows + 1) * sizeof(int32_t));
        memcpy(p->indices, t->indices, (size_t)p->nnz * sizeof(int32_t));
        memcpy(p->values, t->values, (size_t)p->nnz * sizeof(float));
        return PROXCL_OK;
    }
    int bias_shape = p->rank == 1;
    if (!same_shape(t, p->rank, p->shape) && !(!bias_shape && same_shape(t, 2, mshape)))
        return px_fail(err, PROXCL_ERR_MODEL, "%s: the file's shape differs from the spec's",
                       p->name);
    if (!(p->values = px_alloc((size_t)p->size * sizeof(float), err))) return PROXCL_ERR_MEMORY;
    memcpy(p->values, t->values, (size_t)p->size * sizeof(float));
    return PROXCL_OK;
}

static proxcl_status match_tensors(px_net *net, const px_file *file, proxcl_error *err)
{
    for (int i = 0; i < net->nparams; ++i) {
        const px_tensor *t = NULL;
        for (int j = 0; j < file->ntensors && !t; ++j)
            if (!strcmp(file->tensors[j].name, net->params[i]->name)) t = &file->tensors[j];
        if (!t) return px_fail(err, PROXCL_ERR_MODEL, "the file has no tensor %s",
                               net->params[i]->name);
        PX_TRY(take_tensor(net->params[i], t, err));
    }
    for (int j = 0; j < file->ntensors; ++j) {
        int found = 0;
        for (int i = 0; i < net->nparams && !found; ++i) found = !strcmp(file->tensors[j].name, net->params[i]->name);
        if (!found) return px_fail(err, PROXCL_ERR_MODEL, "the file has a tensor %s that the "
                                   "spec has no parameter for", file->tensors[j].name);
    }
    return PROXCL_OK;
}

static proxcl_status collect(px_net *net, proxcl_error *err)
{
    net->exec = px_alloc((size_t)net->nlayers * sizeof *net->exec, err);
    net->params = px_alloc((size_t)(2 * net->nlayers) * sizeof *net->params, err);
    if (!net->exec || !net->params) return PROXCL_ERR_MEMORY;
    for (int i = 0; i < net->nlayers; ++i) {
        px_layer *L = &net->layers[i];
        if (L->weight) net->params[net->nparams++] = L->weight;
        if (L->bias) net->params[net->nparams++] = L->bias;
        px_layer *prev = net->nexec ? &net->layers[net->exec[net->nexec - 1]] : NULL;
        if (L->kind == L_RELU && prev && (prev->kind == L_LINEAR || prev->kind == L_CONV || prev->kind == L_POOL)
            && !prev->relu) {
            prev->relu = 1;
            continue;
        }
        net->exec[net->nexec++] = i;
    }
    net->first_param = net->nexec;
    for (int e = net->nexec - 1; e >= 0; --e)
        if (net->layers[net->exec[e]].weight) net->first_param = e;
    for (int i = 0; i < net->nparams; ++i)
        for (int j = 0; j < i; ++j)
            if (!strcmp(net->params[i]->name, net->params[j]->name))
                return px_fail(err, PROXCL_ERR_MODEL, "model spec: two layers are named %.*s",
                               (int)(strlen(net->params[i]->name) - strlen(strrchr(net->params[i]->name, '.'))),
                               net->params[i]->name);
    return PROXCL_OK;
}

proxcl_status px_net_build(px_net *net, const char *spec_text, const px_file *file, proxcl_error *err)
{
    cJSON *spec = cJSON_Parse(spec_text);
    proxcl_status s = PROXCL_OK;
    if (!cJSON_IsObject(spec)) s = px_fail(err, PROXCL_ERR_MODEL, "model spec is not a JSON object");
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(spec, "input_shape");
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(spec, "layers");
    int rank = cJSON_GetArraySize(in), shape[3] = {0, 0, 0};
    if (s == PROXCL_OK && (!cJSON_IsArray(in) || (rank != 1 && rank != 3)))
        s = px_fail(err, PROXCL_ERR_MODEL, "model spec: input_shape must be [features] or [C, H, W]");
    for (int i = 0; s == PROXCL_OK && i < rank; ++i)
        if (!spec_int(cJSON_GetArrayItem(in, i), 1, &shape[i]))
            s = px_fail(err, PROXCL_ERR_MODEL, "model spec: input_shape entries must be whole numbers >= 1");
    if (s == PROXCL_OK && (!cJSON_IsArray(layers) || !cJSON_GetArraySize(layers)))
        s = px_fail(err, PROXCL_ERR_MODEL, "model spec: layers must be a non-empty list");
    if (s == PROXCL_OK) {
        net->input_rank = rank;
        memcpy(net->input_shape, shape, sizeof shape);
        net->nlayers = cJSON_GetArraySize(layers);
        if (!(net->layers = px_alloc((size_t)net->nlayers * sizeof *net->layers, err))) s = PROXCL_ERR_MEMORY;
    }
    int counts[2] = {0, 0}, ndropout = 0, i = 0;
    for (const cJSON *l = layers ? layers->child : NULL; s == PROXCL_OK && l; l = l->next, ++i)
        s = layer_from_spec(&net->layers[i], i, l, &rank, shape, counts, &ndropout, err);
    if (s == PROXCL_OK && rank != 1)
        s = px_fail(err, PROXCL_ERR_MODEL, "model spec: the last layer's output must be flat");
    if (s == PROXCL_OK) {
        net->num_classes = shape[0];
        const cJSON *nc = cJSON_GetObjectItemCaseSensitive(spec, "num_classes");
        int k;
        if (nc && (!spec_int(nc, 0, &k) || k != net->num_classes))
            s = px_fail(err, PROXCL_ERR_MODEL, "model spec: num_classes differs from the last layer's output");
        else if (net->num_classes < 2)
            s = px_fail(err, PROXCL_ERR_MODEL, "model spec: a classifier needs at least 2 outputs");
    }
    cJSON_Delete(spec);
    if (s == PROXCL_OK) s = collect(net, err);
    if (s == PROXCL_OK && file) s = match_tensors(net, file, err);
    return s;
}

