/* The library's contract where the command does not reach it: errors come back as codes and one-line
 * messages (never exit(), never a crash) for NULL arguments, bad sizes and files, and a loaded model
 * describes itself.  Run by tests/test_runtime_c.py:  api-check MODEL [DEVICE] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxcl.h"

static int failures;

static void expect(int cond, const char *what)
{
    if (!cond) {
        printf("FAIL %s\n", what);
        ++failures;
    }
}

static void expect_error(proxcl_status s, const proxcl_error *err, proxcl_status code, const char *what)
{
    expect(s == code && err->code == code && err->message[0] && !strchr(err->message, '\n'), what);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: api-check MODEL [DEVICE]\n");
        return 2;
    }
    const char *device = argc > 2 ? argv[2] : NULL;
    proxcl_error err;
    proxcl_model *m = (proxcl_model *)&err;
    memset(&err, 0, sizeof err);
    expect_error(proxcl_load("/nonexistent/model.proxcl", device, &m, &err), &err, PROXCL_ERR_IO, "load missing file");
    expect(m == NULL, "load failure leaves *out NULL");
    expect_error(proxcl_load(NULL, device, &m, &err), &err, PROXCL_ERR_INPUT, "load NULL path");
    expect_error(proxcl_load(argv[1], device, NULL, &err), &err, PROXCL_ERR_INPUT, "load NULL out");
    expect(proxcl_load("/", device, &m, NULL) == PROXCL_ERR_IO, "errors without an error struct");
    expect_error(proxcl_check_file("/", &err), &err, PROXCL_ERR_IO, "check a folder");
    expect(!strcmp(proxcl_status_name(PROXCL_ERR_FORMAT), "format"), "status names");
    proxcl_free(NULL);

    proxcl_status s = proxcl_load(argv[1], device, &m, &err);
    expect(s == PROXCL_OK, "load the model");
    if (s != PROXCL_OK) {
        printf("load: %s\n", err.message);
        return 1;
    }
    int dims[3], rank = proxcl_input_shape(m, dims), per = proxcl_input_size(m), k = proxcl_num_classes(m);
    expect(rank == 3 && dims[0] * dims[1] * dims[2] == per && k >= 2, "shape and classes");
    expect(proxcl_device_name(m)[0] != 0 && proxcl_metadata(m)[0] == '{', "device name and metadata");
    float *x = calloc((size_t)per * 2, sizeof(float)), *out = calloc((size_t)k * 2, sizeof(float));
    int32_t labels[2] = {0, k};
    expect_error(proxcl_forward(m, x, 0, out, &err), &err, PROXCL_ERR_INPUT, "forward n = 0");
    expect_error(proxcl_forward(m, NULL, 1, out, &err), &err, PROXCL_ERR_INPUT, "forward NULL input");
    expect_error(proxcl_forward(m, x, 1, NULL, &err), &err, PROXCL_ERR_INPUT, "forward NULL output");
    expect_error(proxcl_train_step(m, x, labels, 1, 0.01, NULL, NULL, &err), &err, PROXCL_ERR_INPUT,
                 "train before train_begin");
    expect_error(proxcl_evaluate(m, x, labels, 2, NULL, NULL, &err), &err, PROXCL_ERR_INPUT, "label out of range");
    proxcl_optimizer opt;
    proxcl_optimizer_defaults(&opt);
    opt.optimizer = "lbfgs";
    expect_error(proxcl_train_begin(m, &opt, &err), &err, PROXCL_ERR_INPUT, "unknown optimizer");
    expect(proxcl_probabilities(m, x, 2, out, &err) == PROXCL_OK, "probabilities");
    double sum = 0;
    for (int c = 0; c < k; ++c) sum += out[c];
    expect(sum > 0.999 && sum < 1.001, "probabilities sum to 1");
    expect_error(proxcl_save(m, "/nonexistent-folder/x.proxcl", NULL, &err), &err, PROXCL_ERR_IO, "save to a missing folder");
    expect_error(proxcl_save(m, "x.proxcl", "[1]", &err), &err, PROXCL_ERR_INPUT, "save with metadata not an object");
    proxcl_free(m);
    free(x);
    free(out);
    printf("%s: %d failure%s\n", failures ? "FAILED" : "ok", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
