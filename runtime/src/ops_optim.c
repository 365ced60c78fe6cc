/* The launches of kernels/optim.cl, as src/proxcl/ops/optim.py makes them: one work-item per VEC
 * values, plain l1 (no reweighting: rw_on = 0, rw_c = rw_ec = 1). */
#include "px.h"

#define FILE_ "optim.cl"

static proxcl_status optim_launch(px_device *dev, const char *name, int n, const px_arg *args, int nargs,
                                  proxcl_error *err)
{
    const int vec = dev->t->vec;
    px_define defs[] = {{"VEC", vec}};
    px_kernel *k;
    PX_TRY(px_kernel_get(dev, FILE_, name, defs, 1, &k, err));
    size_t g = (size_t)((n + vec - 1) / vec), l = (size_t)dev->t->ew_local;
    return px_launch(dev, k, 1, &g, &l, args, nargs, err);
}

/* v <- mu v + g (v NULL: no momentum); w <- S_tau(w - lr v) */
proxcl_status px_prox_sgd(px_device *dev, int n, cl_mem w, cl_mem g, cl_mem v, float lr, float mu, float tau,
                          proxcl_error *err)
{
    px_arg args[] = {PX_I(n), PX_M(w), PX_M(g), PX_M(v), PX_F(lr), PX_F(mu), PX_F(tau), PX_I(0), PX_F(1.0f),
                     PX_F(1.0f)};
    return optim_launch(dev, "prox_sgd", n, args, 10, err);
}

/* Adam moments m, v; w <- S_{lr_lam / d}(w - lr m rc1 / d), d = sqrt(v rc2) + eps */
proxcl_status px_prox_adam(px_device *dev, int n, cl_mem w, cl_mem g, cl_mem m, cl_mem v, float lr, float b1,
                           float b2, float rc1, float rc2, float eps, float lr_lam, proxcl_error *err)
{
    px_arg args[] = {PX_I(n), PX_M(w), PX_M(g), PX_M(m), PX_M(v), PX_F(lr), PX_F(b1), PX_F(1.0f - b1), PX_F(b2),
                     PX_F(1.0f - b2), PX_F(rc1), PX_F(rc2), PX_F(eps), PX_F(lr_lam), PX_I(0), PX_F(1.0f),
                     PX_F(1.0f)};
    return optim_launch(dev, "prox_adam", n, args, 17, err);
}
