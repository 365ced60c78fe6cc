"""Memory benchmark (``proxcl bench memory``): the device bytes of training, per category.

For each model (lenet300, lenet5 by default) and each weight form (dense; CSR at 5 %, 2 % and
1 % density, every weight matrix on a random support of that density, made CSR without a dense
copy), on a fresh device so that nothing else is counted: the model is built, a few training
steps (forward, backward, the optimizer's step; prox-adam by default, the optimizer with the
most state) and an evaluation pass run at the training batch size, and proxcl.memory reports

* the live bytes per category after the last step (weights, gradients, optimizer state,
  activations and workspaces, data batches) and weights + gradients + optimizer state;
* the peak over the whole run, in all and of weights + gradients + optimizer state, and what
  the pools held at most;
* the activations and workspaces per layer (``activations_by_layer``);
* the median wall time of a training step;
* on another fresh device, the memory of inference at batch 1 and 256 (weights, largest live
  activations, input: ``Model.inference_memory``).

The ratio column compares weights + gradients + optimizer state with the dense form's.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import InputError
from ..memory import CATEGORIES, format_bytes
from ..runtime import Device
from .timing import finish, machine_info

DEFAULT_MODELS = ("lenet300", "lenet5")
DENSITIES = (1.0, 0.05, 0.02, 0.01)
STEPS = 4


def add_arguments(p) -> None:
    p.add_argument("--device", default=None, help="OpenCL device spec (default: $PROXCL_DEVICE)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated built-in model names (default: lenet300,lenet5)")
    p.add_argument("--optimizer", default="prox-adam",
                   help="the training optimizer (default prox-adam, the one with the most state)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size (default 128)")


def _model(dev, name: str, density: float, seed: int):
    """The model with its default init (dense), or every weight on a random support of the
    density, made CSR without a dense copy."""
    from .. import models as M
    from ..ops import HostCSR
    from ..sparse_init import random_support
    from ..spec import weight_shapes

    if density >= 1.0:
        return M.build(name, device=dev, seed=seed)
    rng = np.random.default_rng(seed)
    spec = M.normalize_spec(name)
    model = M.build(spec, device=dev, seed=seed, csr=list(weight_shapes(spec)))
    state = model.sparse_state()
    for p in model.params:
        if p.penalised:
            m, k = p.matrix_shape
            indptr, indices = random_support(rng, (m, k), max(1, int(round(density * m * k))))
            values = rng.uniform(-0.1, 0.1, indices.size).astype(np.float32)
            state[p.name] = HostCSR(indptr, indices, values, (m, k))
    model.load_sparse_state(state)
    return model


def measure(device: str | None, name: str, density: float, *, optimizer: str = "prox-adam",
            batch: int = 128, seed: int = 0) -> dict:
    """One row: a fresh device, the model in one weight form, STEPS training steps and an
    evaluation pass; the memory figures and the step time; then, on another fresh device, the
    memory of inference at batch 1 and 256 (Model.inference_memory)."""
    from ..optim import make_optimizer

    dev = Device(device)
    rng = np.random.default_rng(seed + 1)
    mem = dev.memory
    mem.reset_peak()
    model = _model(dev, name, density, seed)
    opt = make_optimizer(optimizer, lr=1e-3, l1=1e-5 if optimizer.startswith(("prox", "rda")) else 0.0,
                         device=dev)
    x = rng.standard_normal((batch,) + model.input_shape).astype(np.float32)
    y = rng.integers(0, model.num_classes, batch)
    times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        model.train_batch(*model.stage_batch(x, y))
        opt.step(model.params, lr=1e-3)
        dev.finish()
        times.append(time.perf_counter() - t0)
    live = mem.live()
    model.eval_batch(*model.stage_batch(x, y))
    dev.finish()
    peak = mem.peak()
    nnz = sum(p.stored for p in model.params if p.penalised)
    size = sum(p.size for p in model.params if p.penalised)
    row = {"model": name, "density": density, "weight_nnz": nnz, "weight_size": size, "optimizer": optimizer,
           "batch": batch, "live": live, "state": sum(live[c] for c in ("weights", "gradients", "optimizer")),
           "peak": peak, "activations_by_layer": model.activation_bytes(),
           "step_ms": float(np.median(times[1:]) * 1e3), "device": f"{dev.platform_name} | {dev.name}"}
    del model, opt
    infer = _model(Device(device), name, density, seed)
    row["inference"] = {str(b): infer.inference_memory(b) for b in (1, 256)}
    return row


def run_benchmark(device, models=DEFAULT_MODELS, *, optimizer="prox-adam", batch=128, log=print) -> dict:
    result = {"benchmark": "memory", "host": machine_info(), "optimizer": optimizer, "batch": batch,
              "steps": STEPS, "rows": []}
    t0 = time.perf_counter()
    for name in models:
        dense_state = None
        for density in DENSITIES:
            row = measure(device, name, density, optimizer=optimizer, batch=batch)
            if density >= 1.0:
                dense_state = row["state"]
            row["state_vs_dense"] = row["state"] / dense_state if dense_state else None
            result["rows"].append(row)
            result["device"] = row["device"]
            log(_row_line(row))
    result["elapsed_s"] = time.perf_counter() - t0
    result["host_after"] = machine_info()
    return result


def _form(row) -> str:
    return "dense" if row["density"] >= 1.0 else f"CSR {100 * row['density']:g} %"


def _row_line(row) -> str:
    live, peak = row["live"], row["peak"]
    parts = "  ".join(f"{c} {format_bytes(live[c])}" for c in CATEGORIES)
    return (f"{row['model']:<9} {_form(row):<9} {parts}  w+g+o {format_bytes(row['state'])} "
            f"({row['state_vs_dense']:.3f} of dense)  peak {format_bytes(peak['total'])}  "
            f"step {row['step_ms']:.1f} ms")


def markdown_table(result: dict) -> str:
    """Bytes per category after the training steps, weights + gradients + optimizer state and
    its share of the dense form's, the peaks (live bytes; the pools' most in "pool peak"), the
    step time, and the total device memory of inference at batch 1 and 256."""
    head = ["model", "form", "nnz", *(f"{c} B" for c in CATEGORIES), "w+g+o B", "vs dense", "peak w+g+o",
            "peak total", "pool peak", "step ms", "inference b1", "inference b256"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        live, peak = r["live"], r["peak"]
        cells = [r["model"], _form(r), f"{r['weight_nnz']:,}", *(f"{live[c]:,}" for c in CATEGORIES),
                 f"{r['state']:,}", f"{r['state_vs_dense']:.3f}", f"{peak['state']:,}", f"{peak['total']:,}",
                 f"{peak['pool']:,}", f"{r['step_ms']:.1f}", f"{r['inference']['1']['total']:,}",
                 f"{r['inference']['256']['total']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layer_table(result: dict) -> str:
    """Activations and workspaces per owner (layer, shared scratch, loss) for each model's
    dense and sparsest forms."""
    lines = []
    for r in result["rows"]:
        if r["density"] not in (1.0, min(DENSITIES)):
            continue
        items = sorted(r["activations_by_layer"].items(), key=lambda kv: -kv[1])
        cells = ", ".join(f"{k} {format_bytes(v)}" for k, v in items)
        lines.append(f"* {r['model']} {_form(r)}: {cells}")
    return "\n".join(lines)


def bar_check(result: dict) -> list[str]:
    """The issue's bar: at <= 2 % density, weights + gradients + optimizer state <= 1/10 of the
    dense form's, for every model."""
    out = []
    for r in result["rows"]:
        if r["density"] <= 0.02:
            ok = r["state_vs_dense"] <= 0.1
            out.append(f"bar ({r['model']}, {_form(r)}, {r['optimizer']}): weights + gradients + optimizer "
                       f"state {r['state_vs_dense']:.3f} of dense (need <= 0.1): {'met' if ok else 'NOT met'}")
    return out


def run(args) -> int:
    from ..optim import OPTIMIZERS
    from . import model_names
    models = model_names(args.models)
    if args.optimizer not in OPTIMIZERS:
        raise InputError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {args.optimizer!r}")
    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    result = run_benchmark(args.device, models, optimizer=args.optimizer, batch=args.batch_size,
                           log=lambda s: print(s, flush=True))
    print()
    print(f"device: {result['device']}; {args.optimizer}, batch {args.batch_size}, {STEPS} training steps "
          "and an evaluation pass per row; live bytes after the steps, peaks over the row")
    print()
    print(markdown_table(result))
    print()
    print("activations and workspaces per owner:")
    print(layer_table(result))
    print()
    for line in bar_check(result):
        print(line)
    finish(result, args.json)
    return 0
