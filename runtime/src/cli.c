/* proxcl-run: run and fine-tune proxcl model files without Python (docs/DEPLOY.md).
 *
 *   proxcl-run predict MODEL FILE...          classes of the images of IDX or .npy files
 *   proxcl-run finetune MODEL --data DIR --out NEW [--epochs N]   debiasing on the device
 *   proxcl-run check MODEL...                 validate model files (no OpenCL needed)
 *   proxcl-run bench MODEL [--batch-size N]   median wall time of one forward pass
 *   proxcl-run devices [--open DEVICE]        list OpenCL devices (or open one)
 *
 * Bad input: one line on stderr and exit status 2 (1 when the device or OpenCL fails). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "images.h"
#include "proxcl.h"

static const char *const USAGE =
    "usage: proxcl-run predict MODEL FILE... [--device D] [--json] [--batch-size N]\n"
    "       proxcl-run finetune MODEL --data DIR --out NEW [--epochs N] [--lr LR] [--optimizer sgd|adam]\n"
    "                  [--momentum M] [--batch-size N] [--schedule cosine|constant] [--seed S]\n"
    "                  [--max-steps K] [--no-shuffle] [--device D] [--quiet]\n"
    "       proxcl-run check MODEL...\n"
    "       proxcl-run bench MODEL [--batch-size N] [--repeat R] [--budget S] [--device D]\n"
    "       proxcl-run devices [--open DEVICE]\n"
    "       proxcl-run --version\n";

static int report(const proxcl_error *err)
{
    fprintf(stderr, "proxcl-run: error: %s\n", err->message);
    return err->code == PROXCL_ERR_OPENCL || err->code == PROXCL_ERR_MEMORY || err->code == PROXCL_ERR_NUMERIC ? 1 : 2;
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "proxcl-run: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s", USAGE);
    return 2;
}

static int input_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "proxcl-run: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    return 2;
}

static int parse_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || !*s || *end || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

static int parse_real(const char *s, double *out)
{
    char *end;
    double v = s ? strtod(s, &end) : 0;
    if (!s || !*s || *end || !isfinite(v)) return 0;
    *out = v;
    return 1;
}

/* ---- what a model file stores for its inputs ---- */

typedef struct { double mean, std; cJSON *metadata; const cJSON *names; } inputs;

static int model_inputs(proxcl_model *m, const char *path, inputs *in, int required, proxcl_error *err)
{
    in->metadata = cJSON_Parse(proxcl_metadata(m));
    const cJSON *names = cJSON_GetObjectItemCaseSensitive(in->metadata, "class_names");
    in->names = NULL;
    if (cJSON_IsArray(names)) {
        int all = 1;
        for (const cJSON *c = names->child; c; c = c->next) all &= cJSON_IsString(c);
        if (all) in->names = names;
    }
    if (proxcl_normalisation(m, &in->mean, &in->std)) return 1;
    if (required) {
        snprintf(err->message, sizeof err->message, "%s stores no input normalisation (not written by proxcl train)", path);
        err->code = PROXCL_ERR_FORMAT;
        return 0;
    }
    in->mean = in->std = NAN;
    return 1;
}

static int same_input(const proxcl_model *m, const px_array *a)
{
    int dims[3], rank = proxcl_input_shape(m, dims);
    if (rank != 3) return 0;
    for (int i = 0; i < 3; ++i)
        if (a->shape[1 + i] != dims[i]) return 0;
    return 1;
}

static void fill_batch(const px_array *a, const int64_t *order, int64_t start, int n, int per, const inputs *in,
                       float *x)
{
    for (int i = 0; i < n; ++i) {
        int64_t src = (order ? order[start + i] : start + i) * per;
        for (int j = 0; j < per; ++j) x[(size_t)i * per + j] = px_array_at(a, src + j);
    }
    proxcl_normalise(x, (size_t)n * per, in->mean, in->std);
}

/* ---- predict ---- */

static int predict_file(proxcl_model *m, const char *path, const inputs *in, int batch, int json, proxcl_error *err)
{
    px_array a;
    if (px_read_images(path, &a, err) != PROXCL_OK) return 0;
    if (!same_input(m, &a)) {
        int dims[3];
        proxcl_input_shape(m, dims);
        snprintf(err->message, sizeof err->message, "%s: images are [%lld, %lld, %lld], the model takes [%d, %d, %d]",
                 path, (long long)a.shape[1], (long long)a.shape[2], (long long)a.shape[3], dims[0], dims[1], dims[2]);
        err->code = PROXCL_ERR_INPUT;
        px_array_free(&a);
        return 0;
    }
    const int per = proxcl_input_size(m), k = proxcl_num_classes(m);
    const int64_t count = a.shape[0];
    float *x = malloc((size_t)batch * per * sizeof(float)), *probs = malloc((size_t)batch * k * sizeof(float));
    float *logits = json ? malloc((size_t)batch * k * sizeof(float)) : NULL;
    int ok = x && probs && (!json || logits);
    if (!ok) {
        snprintf(err->message, sizeof err->message, "out of memory");
        err->code = PROXCL_ERR_MEMORY;
    }
    for (int64_t s = 0; ok && s < count; s += batch) {
        int n = count - s < batch ? (int)(count - s) : batch;
        fill_batch(&a, NULL, s, n, per, in, x);
        if (proxcl_predict(m, x, n, logits, probs, err) != PROXCL_OK) { ok = 0; break; }
        for (int i = 0; i < n; ++i) {
            const float *p = probs + (size_t)i * k;
            int best = 0;
            for (int c = 1; c < k; ++c)
                if (p[c] > p[best]) best = c;
            const cJSON *nm = in->names ? cJSON_GetArrayItem(in->names, best) : NULL;
            char label[32];
            snprintf(label, sizeof label, "%d", best);
            const char *lab = nm ? nm->valuestring : label;
            if (!json) {
                printf("%s[%lld]: %s (class %d, p = %.3f)\n", path, (long long)(s + i), lab, best, (double)p[best]);
                continue;
            }
            cJSON *o = cJSON_CreateObject(), *lg = cJSON_CreateArray();
            cJSON_AddStringToObject(o, "file", path);
            cJSON_AddNumberToObject(o, "index", (double)(s + i));
            cJSON_AddNumberToObject(o, "class", best);
            cJSON_AddStringToObject(o, "label", lab);
            cJSON_AddNumberToObject(o, "probability", (double)p[best]);
            for (int c = 0; c < k; ++c) cJSON_AddItemToArray(lg, cJSON_CreateNumber((double)logits[(size_t)i * k + c]));
            cJSON_AddItemToObject(o, "logits", lg);
            char *text = cJSON_PrintUnformatted(o);
            if (text) puts(text);
            cJSON_free(text);
            cJSON_Delete(o);
        }
    }
    free(x);
    free(probs);
    free(logits);
    px_array_free(&a);
    return ok;
}

static int cmd_predict(int argc, char **argv)
{
    const char *model = NULL, *device = NULL;
    const char *files[256];
    int nfiles = 0, json = 0;
    long batch = 256;
    for (int i = 0; i < argc; ++i) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) device = argv[++i];
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--batch-size")) {
            if (!parse_int(i + 1 < argc ? argv[++i] : NULL, 1, 1 << 20, &batch))
                return usage_error("--batch-size needs a whole number >= 1%s", "");
        } else if (argv[i][0] == '-' && argv[i][1]) return usage_error("unknown option %s", argv[i]);
        else if (!model) model = argv[i];
        else if (nfiles < 256) files[nfiles++] = argv[i];
        else return usage_error("at most 256 input files%s", "");
    }
    if (!model || !nfiles) return usage_error("predict needs a model and at least one input file%s", "");
    proxcl_error err = {0};
    proxcl_model *m;
    if (proxcl_load(model, device, &m, &err) != PROXCL_OK) return report(&err);
    inputs in;
    int ok = model_inputs(m, model, &in, 1, &err);
    for (int f = 0; ok && f < nfiles; ++f) ok = predict_file(m, files[f], &in, (int)batch, json, &err);
    cJSON_Delete(in.metadata);
    proxcl_free(m);
    return ok ? 0 : report(&err);
}

/* ---- finetune ---- */

typedef struct {
    const char *model, *data, *out, *device, *optimizer, *schedule;
    long epochs, batch, seed, max_steps;
    double lr, momentum;
    int shuffle, quiet;
} ft_args;

/* the shuffled order of n samples for (seed, epoch): Fisher-Yates with splitmix64 */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void epoch_order(int64_t *order, int64_t n, uint64_t seed, uint64_t epoch)
{
    uint64_t state = seed * 0x100000001B3ull ^ (epoch + 1) * 0x9E3779B97F4A7C15ull;
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    for (int64_t i = n - 1; i > 0; --i) {
        uint64_t bound = (uint64_t)i + 1, limit = UINT64_MAX - UINT64_MAX % bound, r;
        do r = splitmix(&state); while (r >= limit);
        int64_t j = (int64_t)(r % bound), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

/* proxcl.schedules: CosineLR over the epochs (smooth inside each), or constant */
static double lr_at(const ft_args *a, long epoch, long step, long steps)
{
    if (!strcmp(a->schedule, "constant")) return a->lr;
    double x = ((double)epoch + (double)step / (double)steps) / (double)a->epochs;
    if (x > 1.0) x = 1.0;
    return a->lr * 0.5 * (1.0 + cos(3.14159265358979323846 * x));
}

typedef struct { px_array x, y; } split;

static int read_split(const char *dir, const char *prefix, split *s, int required, proxcl_error *err)
{
    char xp[4096], yp[4096];
    snprintf(xp, sizeof xp, "%s/%s-images-idx3-ubyte", dir, prefix);
    snprintf(yp, sizeof yp, "%s/%s-labels-idx1-ubyte", dir, prefix);
    memset(s, 0, sizeof *s);
    struct stat sb;
    if (stat(xp, &sb) != 0) {
        char gz[4200];
        snprintf(gz, sizeof gz, "%s.gz", xp);
        if (!required && stat(gz, &sb) != 0) return 1;
        if (stat(gz, &sb) == 0) snprintf(err->message, sizeof err->message, "%.400s is compressed: decompress it "
                                         "(gunzip -k); proxcl-run reads raw IDX files", gz);
        else snprintf(err->message, sizeof err->message, "%.300s: no such file (the data folder needs the IDX files "
                      "%s-images-idx3-ubyte and %s-labels-idx1-ubyte)", xp, prefix, prefix);
        err->code = PROXCL_ERR_IO;
        return 0;
    }
    if (px_read_images(xp, &s->x, err) != PROXCL_OK) return 0;
    if (px_read_array(yp, &s->y, err) != PROXCL_OK) return 0;
    if (s->y.rank != 1 || s->y.shape[0] != s->x.shape[0]) {
        snprintf(err->message, sizeof err->message, "%.400s: %lld labels for %lld images", yp,
                 (long long)(s->y.rank == 1 ? s->y.shape[0] : -1), (long long)s->x.shape[0]);
        err->code = PROXCL_ERR_INPUT;
        return 0;
    }
    return 1;
}

static int labels_of(const px_array *y, int k, int32_t **out, proxcl_error *err)
{
    *out = malloc((size_t)(y->count ? y->count : 1) * sizeof(int32_t));
    if (!*out) {
        snprintf(err->message, sizeof err->message, "out of memory");
        err->code = PROXCL_ERR_MEMORY;
        return 0;
    }
    for (int64_t i = 0; i < y->count; ++i) {
        float v = px_array_at(y, i);
        if (!(v >= 0 && v < k) || v != floorf(v)) {
            snprintf(err->message, sizeof err->message, "labels must lie in [0, %d], got %g", k - 1, (double)v);
            err->code = PROXCL_ERR_INPUT;
            return 0;
        }
        (*out)[i] = (int32_t)v;
    }
    return 1;
}

/* mean and standard deviation over all pixels (used when the model file stores none) */
static void pixel_stats(const px_array *x, double *mean, double *std)
{
    double s = 0, ss = 0;
    for (int64_t i = 0; i < x->count; ++i) s += px_array_at(x, i);
    *mean = s / (double)x->count;
    for (int64_t i = 0; i < x->count; ++i) {
        double d = px_array_at(x, i) - *mean;
        ss += d * d;
    }
    *std = sqrt(ss / (double)x->count);
    if (!(*std > 0)) *std = 1.0;
}

static int evaluate(proxcl_model *m, const split *t, const int32_t *labels, const inputs *in, double *acc, double *loss,
                    proxcl_error *err)
{
    const int per = proxcl_input_size(m), batch = 512;
    float *x = malloc((size_t)batch * per * sizeof(float));
    int64_t correct = 0, n = t->x.shape[0];
    double total = 0;
    int ok = x != NULL;
    for (int64_t s = 0; ok && s < n; s += batch) {
        int b = n - s < batch ? (int)(n - s) : batch, c;
        double l;
        fill_batch(&t->x, NULL, s, b, per, in, x);
        ok = proxcl_evaluate(m, x, labels + s, b, &l, &c, err) == PROXCL_OK;
        correct += c;
        total += l;
    }
    free(x);
    *acc = (double)correct / (double)n;
    *loss = total / (double)n;
    return ok;
}

static int finetune(const ft_args *a, proxcl_model *m, proxcl_error *err)
{
    split tr, te;
    inputs in = {0};
    memset(&tr, 0, sizeof tr);
    memset(&te, 0, sizeof te);
    int32_t *ytr = NULL, *yte = NULL;
    int64_t *order = NULL;
    float *x = NULL;
    int ok = model_inputs(m, a->model, &in, 0, err) && read_split(a->data, "train", &tr, 1, err)
             && read_split(a->data, "t10k", &te, 0, err);
    const int per = proxcl_input_size(m), k = proxcl_num_classes(m);
    if (ok && (!same_input(m, &tr.x) || (te.x.count && !same_input(m, &te.x)))) {
        snprintf(err->message, sizeof err->message, "%s: images are not of the model's input shape", a->data);
        err->code = PROXCL_ERR_INPUT;
        ok = 0;
    }
    ok = ok && labels_of(&tr.y, k, &ytr, err) && (!te.y.count || labels_of(&te.y, k, &yte, err));
    if (ok && isnan(in.mean)) pixel_stats(&tr.x, &in.mean, &in.std);
    const int64_t n = tr.x.shape[0];
    const long steps = (long)((n + a->batch - 1) / a->batch);
    order = ok ? malloc((size_t)(n ? n : 1) * sizeof *order) : NULL;
    x = ok ? malloc((size_t)a->batch * per * sizeof(float)) : NULL;
    int32_t *yb = ok ? malloc((size_t)a->batch * sizeof(int32_t)) : NULL;
    if (ok && (!order || !x || !yb)) {
        snprintf(err->message, sizeof err->message, "out of memory");
        err->code = PROXCL_ERR_MEMORY;
        ok = 0;
    }
    proxcl_optimizer opt;
    proxcl_optimizer_defaults(&opt);
    opt.optimizer = a->optimizer;
    opt.momentum = a->momentum;
    ok = ok && proxcl_train_begin(m, &opt, err) == PROXCL_OK;
    long done = 0;
    double test_acc = NAN, test_loss = NAN;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long epoch = 0; ok && epoch < a->epochs && (!a->max_steps || done < a->max_steps); ++epoch) {
        double loss_sum = 0;
        int64_t correct = 0, seen = 0;
        if (a->shuffle) epoch_order(order, n, (uint64_t)a->seed, (uint64_t)epoch);
        proxcl_set_seed(m, (uint64_t)a->seed * 1000003u + 100000u + (uint64_t)epoch);   /* dropout */
        for (long step = 0; ok && step < steps && (!a->max_steps || done < a->max_steps); ++step, ++done) {
            int64_t s = (int64_t)step * a->batch;
            int b = n - s < a->batch ? (int)(n - s) : (int)a->batch, c;
            double l;
            fill_batch(&tr.x, a->shuffle ? order : NULL, s, b, per, &in, x);
            for (int i = 0; i < b; ++i) yb[i] = ytr[a->shuffle ? order[s + i] : s + i];
            ok = proxcl_train_step(m, x, yb, b, lr_at(a, epoch, step, steps), &l, &c, err) == PROXCL_OK;
            loss_sum += l;
            correct += c;
            seen += b;
        }
        if (ok && te.x.count) ok = evaluate(m, &te, yte, &in, &test_acc, &test_loss, err);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (ok && !a->quiet) {
            fprintf(stderr, "finetune %ld/%ld  loss %.4f  train %.4f", epoch + 1, a->epochs, loss_sum / (double)seen,
                    (double)correct / (double)seen);
            if (te.x.count) fprintf(stderr, "  test %.4f", test_acc);
            fprintf(stderr, "  %.1f s\n", (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (ok) {       /* the new file's metadata: the old one's, with the test accuracy and this run */
        cJSON *md = in.metadata ? in.metadata : cJSON_CreateObject(), *ft = cJSON_CreateObject();
        in.metadata = md;
        if (te.x.count) {
            cJSON_DeleteItemFromObjectCaseSensitive(md, "test_accuracy");
            cJSON_AddNumberToObject(md, "test_accuracy", test_acc);
        }
        cJSON_AddStringToObject(ft, "optimizer", a->optimizer);
        cJSON_AddNumberToObject(ft, "lr", a->lr);
        cJSON_AddStringToObject(ft, "schedule", a->schedule);
        if (!strcmp(a->optimizer, "sgd")) cJSON_AddNumberToObject(ft, "momentum", a->momentum);
        cJSON_AddNumberToObject(ft, "epochs", (double)a->epochs);
        cJSON_AddNumberToObject(ft, "steps", (double)done);
        cJSON_AddNumberToObject(ft, "batch_size", (double)a->batch);
        cJSON_AddNumberToObject(ft, "seed", (double)a->seed);
        cJSON_AddStringToObject(ft, "device", proxcl_device_name(m));
        cJSON_AddNumberToObject(ft, "seconds",
                                round(1000.0 * ((double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec))) / 1000.0);
        cJSON_DeleteItemFromObjectCaseSensitive(md, "finetune");
        cJSON_AddItemToObject(md, "finetune", ft);
        char *text = cJSON_PrintUnformatted(md);
        ok = text && proxcl_save(m, a->out, text, err) == PROXCL_OK;
        cJSON_free(text);
        if (ok && !a->quiet) fprintf(stderr, "wrote %s\n", a->out);
    }
    cJSON_Delete(in.metadata);
    px_array_free(&tr.x);
    px_array_free(&tr.y);
    px_array_free(&te.x);
    px_array_free(&te.y);
    free(ytr);
    free(yte);
    free(order);
    free(x);
    free(yb);
    return ok;
}

static int cmd_finetune(int argc, char **argv)
{
    ft_args a = {NULL, NULL, NULL, NULL, "sgd", "cosine", 1, 128, 0, 0, 0.005, 0.9, 1, 0};
    for (int i = 0; i < argc; ++i) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int used = 1;
        if (!strcmp(o, "--data")) a.data = v;
        else if (!strcmp(o, "--out")) a.out = v;
        else if (!strcmp(o, "--device")) a.device = v;
        else if (!strcmp(o, "--optimizer")) a.optimizer = v;
        else if (!strcmp(o, "--schedule")) a.schedule = v;
        else if (!strcmp(o, "--epochs")) { if (!parse_int(v, 1, 1000000, &a.epochs)) return usage_error("--epochs needs a whole number >= 1%s", ""); }
        else if (!strcmp(o, "--batch-size")) { if (!parse_int(v, 1, 1 << 20, &a.batch)) return usage_error("--batch-size needs a whole number >= 1%s", ""); }
        else if (!strcmp(o, "--seed")) { if (!parse_int(v, 0, 2147483647, &a.seed)) return usage_error("--seed needs a whole number >= 0%s", ""); }
        else if (!strcmp(o, "--max-steps")) { if (!parse_int(v, 1, 2147483647, &a.max_steps)) return usage_error("--max-steps needs a whole number >= 1%s", ""); }
        else if (!strcmp(o, "--lr")) { if (!parse_real(v, &a.lr) || !(a.lr > 0)) return usage_error("--lr needs a number > 0%s", ""); }
        else if (!strcmp(o, "--momentum")) { if (!parse_real(v, &a.momentum) || !(a.momentum >= 0 && a.momentum < 1)) return usage_error("--momentum needs a number in [0, 1)%s", ""); }
        else if (!strcmp(o, "--no-shuffle")) { a.shuffle = 0; used = 0; }
        else if (!strcmp(o, "--quiet")) { a.quiet = 1; used = 0; }
        else if (o[0] == '-' && o[1]) return usage_error("unknown option %s", o);
        else if (!a.model) { a.model = o; used = 0; }
        else return usage_error("unexpected argument %s", o);
        if (used && !v) return usage_error("%s needs a value", o);
        i += used;
    }
    if (!a.model || !a.data || !a.out) return usage_error("finetune needs MODEL, --data DIR and --out NEW%s", "");
    if (strcmp(a.optimizer, "sgd") && strcmp(a.optimizer, "adam")) return usage_error("--optimizer must be sgd or adam, got %s", a.optimizer);
    if (strcmp(a.schedule, "cosine") && strcmp(a.schedule, "constant")) return usage_error("--schedule must be cosine or constant, got %s", a.schedule);
    struct stat sb;
    if (stat(a.out, &sb) == 0 && S_ISDIR(sb.st_mode)) return input_error("--out %s is a folder, not a file name", a.out);
    if (stat(a.data, &sb) != 0 || !S_ISDIR(sb.st_mode)) return input_error("--data %s is not a folder", a.data);
    proxcl_error err = {0};
    proxcl_model *m;
    if (proxcl_load(a.model, a.device, &m, &err) != PROXCL_OK) return report(&err);
    int ok = finetune(&a, m, &err);
    proxcl_free(m);
    return ok ? 0 : report(&err);
}

/* ---- bench: the wall time of proxcl_forward, as proxcl.bench.timing.time_host measures ---- */

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return 1e3 * (double)t.tv_sec + 1e-6 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int cmd_bench(int argc, char **argv)
{
    const char *model = NULL, *device = NULL;
    long batch = 1, repeat = 50;
    double budget = 0.5;
    for (int i = 0; i < argc; ++i) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) device = argv[++i];
        else if (!strcmp(argv[i], "--batch-size")) {
            if (!parse_int(i + 1 < argc ? argv[++i] : NULL, 1, 1 << 16, &batch)) return usage_error("--batch-size needs a whole number >= 1%s", "");
        } else if (!strcmp(argv[i], "--repeat")) {
            if (!parse_int(i + 1 < argc ? argv[++i] : NULL, 3, 100000, &repeat)) return usage_error("--repeat needs a whole number >= 3%s", "");
        } else if (!strcmp(argv[i], "--budget")) {
            if (!parse_real(i + 1 < argc ? argv[++i] : NULL, &budget) || !(budget > 0)) return usage_error("--budget needs seconds > 0%s", "");
        } else if (argv[i][0] == '-' && argv[i][1]) return usage_error("unknown option %s", argv[i]);
        else if (!model) model = argv[i];
        else return usage_error("unexpected argument %s", argv[i]);
    }
    if (!model) return usage_error("bench needs a model%s", "");
    proxcl_error err = {0};
    proxcl_model *m;
    if (proxcl_load(model, device, &m, &err) != PROXCL_OK) return report(&err);
    const int per = proxcl_input_size(m), k = proxcl_num_classes(m);
    float *x = malloc((size_t)batch * per * sizeof(float)), *out = malloc((size_t)batch * k * sizeof(float));
    double *walls = malloc((size_t)repeat * sizeof(double));
    int ok = x && out && walls;
    uint64_t state = 1;
    for (long i = 0; ok && i < batch * per; ++i) x[i] = (float)((double)(splitmix(&state) >> 11) / 9007199254740992.0 * 2 - 1);
    struct timespec settle = {0, 100000000};
    nanosleep(&settle, NULL);
    for (int w = 0; ok && w < 2; ++w) ok = proxcl_forward(m, x, (int)batch, out, &err) == PROXCL_OK;
    double t0 = now_ms();
    ok = ok && proxcl_forward(m, x, (int)batch, out, &err) == PROXCL_OK;
    double first = now_ms() - t0;
    long n = first > 0 ? (long)(budget * 1e3 / first) : repeat;
    n = n < 3 ? 3 : n > repeat ? repeat : n;
    for (long r = 0; ok && r < n; ++r) {
        t0 = now_ms();
        ok = proxcl_forward(m, x, (int)batch, out, &err) == PROXCL_OK;
        walls[r] = now_ms() - t0;
    }
    if (ok) {
        qsort(walls, (size_t)n, sizeof *walls, cmp_double);
        double med = n % 2 ? walls[n / 2] : 0.5 * (walls[n / 2 - 1] + walls[n / 2]);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "model", model);
        cJSON_AddStringToObject(o, "device", proxcl_device_name(m));
        cJSON_AddNumberToObject(o, "batch", (double)batch);
        cJSON_AddNumberToObject(o, "repeats", (double)n);
        cJSON_AddNumberToObject(o, "median_ms", med);
        cJSON_AddNumberToObject(o, "images_per_s", (double)batch / (med * 1e-3));
        char *text = cJSON_PrintUnformatted(o);
        if (text) puts(text);
        cJSON_free(text);
        cJSON_Delete(o);
    }
    free(x);
    free(out);
    free(walls);
    proxcl_free(m);
    return ok ? 0 : report(&err);
}

/* ---- check, devices ---- */

static int cmd_check(int argc, char **argv)
{
    int bad = 0;
    if (!argc) return usage_error("check needs at least one model file%s", "");
    for (int i = 0; i < argc; ++i) {
        proxcl_error err = {0};
        if (proxcl_check_file(argv[i], &err) == PROXCL_OK) {
            printf("%s: ok\n", argv[i]);
        } else {
            fprintf(stderr, "proxcl-run: error: %s\n", err.message);
            bad = 1;
        }
    }
    return bad ? 2 : 0;
}

static int cmd_devices(int argc, char **argv)
{
    proxcl_error err = {0};
    if (argc == 2 && !strcmp(argv[0], "--open")) {
        char name[256];
        if (proxcl_open_device(argv[1], name, sizeof name, &err) != PROXCL_OK) return report(&err);
        printf("%s\n", name);
        return 0;
    }
    if (argc) return usage_error("devices takes no argument but --open DEVICE%s", "");
    char list[16384];
    if (proxcl_devices(list, sizeof list, &err) != PROXCL_OK) return report(&err);
    fputs(list, stdout);
    return 0;
}

/* $PROXCL_REPORT_MEMORY: the peak resident memory of this process (Linux's VmHWM, which counts
 * only the memory of this program, not of whatever started it) on stderr at exit */
static void report_memory(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) fprintf(stderr, "proxcl-run: peak resident memory %ld KiB\n", atol(line + 6));
    if (f) fclose(f);
}

int main(int argc, char **argv)
{
    if (getenv("PROXCL_REPORT_MEMORY")) atexit(report_memory);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("proxcl-run %s\n", PROXCL_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "predict")) return cmd_predict(argc - 2, argv + 2);
    if (!strcmp(argv[1], "finetune")) return cmd_finetune(argc - 2, argv + 2);
    if (!strcmp(argv[1], "check")) return cmd_check(argc - 2, argv + 2);
    if (!strcmp(argv[1], "bench")) return cmd_bench(argc - 2, argv + 2);
    if (!strcmp(argv[1], "devices")) return cmd_devices(argc - 2, argv + 2);
    return usage_error("unknown command %s", argv[1]);
}
