"""Model benchmark (``proxcl bench model``): whole networks, dense and CSR, against PyTorch.

For each model (lenet300, lenet5 by default) and each weight form (dense; CSR at 95 % and
99 % sparsity with random supports, every weight matrix at the same density):

* latency of one forward pass at batch 1 (numpy in, logits out: what an application sees);
* inference throughput at batch 256 (images/s, numpy in, logits out);
* one training step at batch 64 (forward + backward filling every gradient, on a batch
  already on the device; PyTorch: forward, loss, backward).

The peer is PyTorch dense float32 on the same weights: on the CPU with as many threads as the
OpenCL device has compute units (the same cores), and torch CUDA too when the OpenCL device is
a GPU and CUDA is available.  All times are wall-clock medians after warm-up
(:mod:`proxcl.bench.timing`).  Each row also checks proxcl's logits against torch's.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ..errors import InputError
from ..runtime import Device
from .timing import finish, machine_info, time_host

DEFAULT_MODELS = ("lenet300", "lenet5")
DENSITIES = (1.0, 0.05, 0.01)
BATCH_LATENCY, BATCH_THROUGHPUT, BATCH_TRAIN = 1, 256, 64


def add_arguments(p) -> None:
    p.add_argument("--device", default=None, help="OpenCL device spec (default: $PROXCL_DEVICE)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated built-in model names (default: lenet300,lenet5)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch CPU threads (default: the OpenCL device's compute units on a CPU "
                        "device, else all cores)")


def sparsify_state(model, state: dict, density: float, rng) -> dict:
    """A copy of ``state`` where every weight keeps a random round(density * size) entries."""
    out = {k: v.copy() for k, v in state.items()}
    if density >= 1.0:
        return out
    for p in model.params:
        if p.penalised:
            keep = max(1, int(round(density * p.size)))
            mask = np.zeros(p.size, bool)
            mask[rng.choice(p.size, keep, replace=False)] = True
            out[p.name] = np.where(mask.reshape(p.shape), out[p.name], 0).astype(np.float32)
    return out


def torch_model(spec: dict, state: dict, device: str = "cpu", dtype=None):
    """The network of a (normalised) proxcl spec as a torch.nn.Sequential in eval mode, with the
    given weights (PyTorch names and shapes), float32 unless dtype says otherwise.  Every module
    with weights carries its proxcl layer name as ``proxcl_name``.  Also the tests' reference."""
    import torch
    dtype = dtype or torch.float32
    mods = []
    for l in spec["layers"]:
        t = l["type"]
        if t == "linear":
            w = state[l["name"] + ".weight"]
            m = torch.nn.Linear(w.shape[1], w.shape[0], bias=l["bias"], dtype=dtype)
        elif t == "conv2d":
            w = state[l["name"] + ".weight"]
            m = torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=l["stride"],
                                padding=l["padding"], bias=l["bias"], dtype=dtype)
        elif t == "maxpool2d":
            m = torch.nn.MaxPool2d(l["kernel"], l["stride"], l["padding"])
        elif t == "relu":
            m = torch.nn.ReLU()
        elif t == "flatten":
            m = torch.nn.Flatten()
        else:
            m = torch.nn.Dropout(l["p"])
        if t in ("linear", "conv2d"):
            with torch.no_grad():
                m.weight.copy_(torch.tensor(state[l["name"] + ".weight"], dtype=dtype))
                if l["bias"]:
                    m.bias.copy_(torch.tensor(state[l["name"] + ".bias"], dtype=dtype))
            m.proxcl_name = l["name"]
        mods.append(m)
    return torch.nn.Sequential(*mods).eval().to(device)


def _torch_times(net, x1, x256, x64, y64, repeat, budget_s, sync=None) -> dict:
    import torch
    loss_fn = torch.nn.CrossEntropyLoss()
    done = sync or (lambda: None)

    def infer(x):
        with torch.no_grad():
            net.eval()
            out = net(x)
        done()
        return out

    def train():
        net.train()
        net.zero_grad(set_to_none=False)
        loss_fn(net(x64), y64).backward()
        done()

    t1 = time_host(lambda: infer(x1), repeat=repeat, budget_s=budget_s)
    t256 = time_host(lambda: infer(x256), repeat=repeat, budget_s=budget_s)
    tt = time_host(train, repeat=repeat, budget_s=budget_s)
    return {"latency_b1_ms": t1.wall_ms, "throughput_b256": BATCH_THROUGHPUT / (t256.wall_ms * 1e-3),
            "train_b64_ms": tt.wall_ms}


def _proxcl_times(model, x1, x256, xb64, yb64, repeat, budget_s) -> dict:
    t1 = time_host(lambda: model.forward(x1), repeat=repeat, budget_s=budget_s)
    t256 = time_host(lambda: model.forward(x256, batch_size=BATCH_THROUGHPUT), repeat=repeat,
                     budget_s=budget_s)
    tt = time_host(lambda: model.train_batch(xb64, yb64), repeat=repeat, budget_s=budget_s)
    return {"latency_b1_ms": t1.wall_ms, "throughput_b256": BATCH_THROUGHPUT / (t256.wall_ms * 1e-3),
            "train_b64_ms": tt.wall_ms}


def run_benchmark(device: str | None = None, models=DEFAULT_MODELS, *, quick: bool = False, seed: int = 0,
                  torch_threads: int | None = None, log=print) -> dict:
    """Run the model benchmark and return a JSON-ready dict (``rows``: one per model and form)."""
    import torch

    dev = Device(device)
    threads = torch_threads or (int(dev.cl_device.max_compute_units) if dev.is_cpu else (os.cpu_count() or 1))
    torch.set_num_threads(threads)
    cuda = (not dev.is_cpu) and torch.cuda.is_available()
    repeat, budget_s = (10, 0.3) if quick else (50, 1.0)
    rng = np.random.default_rng(seed)
    result = {
        "benchmark": "model",
        "device": {"name": dev.name, "platform": dev.platform_name, "type": "cpu" if dev.is_cpu else "gpu",
                   "compute_units": int(dev.cl_device.max_compute_units)},
        "host": machine_info(),
        "torch": {"version": torch.__version__, "threads": torch.get_num_threads(),
                  "cuda_device": torch.cuda.get_device_name() if cuda else None},
        "batches": {"latency": BATCH_LATENCY, "throughput": BATCH_THROUGHPUT, "train": BATCH_TRAIN},
        "repeat": repeat,
        "rows": [],
    }
    log(f"device: {dev.platform_name} | {dev.name}; torch {torch.__version__} on {threads} CPU threads"
        + (f" and CUDA {torch.cuda.get_device_name()}" if cuda else ""))
    t_start = time.perf_counter()
    log(table_head(cuda))
    for name in models:
        for row in _model_rows(dev, name, seed, rng, cuda, repeat, budget_s):
            result["rows"].append(row)
            log(table_row(row, cuda))
    log("")
    log(LEGEND)
    result["elapsed_s"] = time.perf_counter() - t_start
    result["host_after"] = machine_info()
    return result


def _model_rows(dev, name: str, seed: int, rng, cuda: bool, repeat: int, budget_s: float):
    """The rows of one model: dense, then CSR at each density, against torch (dense)."""
    import torch
    from .. import models as M

    model = M.build(name, device=dev, seed=seed)
    dense_state = model.state_dict()
    shape = model.input_shape
    x1 = rng.standard_normal((BATCH_LATENCY,) + shape).astype(np.float32)
    x256 = rng.standard_normal((BATCH_THROUGHPUT,) + shape).astype(np.float32)
    x64 = rng.standard_normal((BATCH_TRAIN,) + shape).astype(np.float32)
    y64 = rng.integers(0, model.num_classes, BATCH_TRAIN)
    torch_dense = None
    for density in DENSITIES:
        state = sparsify_state(model, dense_state, density, rng)
        model.to_dense()
        model.load_state_dict(state)
        if density < 1.0:
            model.to_sparse()
        xb64, yb64 = model.prepare_batch(x64, y64)
        ours = _proxcl_times(model, x1, x256, xb64, yb64, repeat, budget_s)
        net = torch_model(model.spec, state)
        with torch.no_grad():
            ref = net.eval()(torch.from_numpy(x256)).double().numpy()
        err = float(np.linalg.norm(model.forward(x256) - ref) / np.linalg.norm(ref))
        if torch_dense is None:   # torch is dense: its speed does not depend on the zeros
            tx = [torch.from_numpy(a) for a in (x1, x256, x64)]
            torch_dense = {"cpu": _torch_times(net, *tx, torch.from_numpy(y64), repeat, budget_s)}
            if cuda:
                netc = torch_model(model.spec, state, "cuda")
                tc = [a.cuda() for a in tx]
                torch_dense["cuda"] = _torch_times(netc, *tc, torch.from_numpy(y64).cuda(), repeat,
                                                   budget_s, sync=torch.cuda.synchronize)
        yield _row(model, name, density, state, ours, torch_dense, err)


def _row(model, name, density, state, ours, torch_dense, err) -> dict:
    nnz = sum(int(np.count_nonzero(state[p.name])) for p in model.params if p.penalised)
    size = sum(p.size for p in model.params if p.penalised)
    row = {"model": name, "weights": "dense" if density >= 1.0 else "csr", "density": density,
           "weight_nnz": nnz, "weight_size": size, "proxcl": ours, "torch_cpu": torch_dense["cpu"],
           "torch_cuda": torch_dense.get("cuda"), "logits_rel_err": err}
    tc = torch_dense["cpu"]
    row["ratios_vs_torch_cpu"] = {
        "latency": ours["latency_b1_ms"] / tc["latency_b1_ms"],
        "throughput": ours["throughput_b256"] / tc["throughput_b256"],
        "train": ours["train_b64_ms"] / tc["train_b64_ms"]}
    return row


def _form(row) -> str:
    return "dense" if row["weights"] == "dense" else f"CSR {100 * (1 - row['density']):.0f} % zero"


def table_head(cuda: bool) -> str:
    """The markdown table's head: times in ms, throughput in images/s."""
    head = ["model", "weights", "nnz", "b1 latency ms", "torch CPU", "b256 img/s", "torch CPU",
            "train b64 ms", "torch CPU", "logits err"]
    if cuda:
        head += ["torch CUDA b1 ms", "torch CUDA b256 img/s", "torch CUDA train ms"]
    return "| " + " | ".join(head) + " |\n|" + "---|" * len(head)


def table_row(r: dict, cuda: bool) -> str:
    o, t = r["proxcl"], r["torch_cpu"]
    cells = [r["model"], _form(r), f"{r['weight_nnz']:,}", f"{o['latency_b1_ms']:.3f}",
             f"{t['latency_b1_ms']:.3f}", f"{o['throughput_b256']:,.0f}", f"{t['throughput_b256']:,.0f}",
             f"{o['train_b64_ms']:.2f}", f"{t['train_b64_ms']:.2f}", f"{r['logits_rel_err']:.1e}"]
    if cuda:
        c = r.get("torch_cuda") or {}
        cells += [f"{c.get('latency_b1_ms', float('nan')):.3f}",
                  f"{c.get('throughput_b256', float('nan')):,.0f}", f"{c.get('train_b64_ms', float('nan')):.2f}"]
    return "| " + " | ".join(cells) + " |"


def markdown_table(result: dict) -> str:
    """The results as a markdown table (times in ms, throughput in images/s)."""
    cuda = any(r.get("torch_cuda") for r in result["rows"])
    return "\n".join([table_head(cuda)] + [table_row(r, cuda) for r in result["rows"]])


LEGEND = "\n".join([
    "Rows: dense weights, then CSR with random supports at 95 % and 99 % zero weights; the peer is PyTorch",
    "dense float32 on the same weights. Times: wall-clock medians after warm-up.",
    "  b1 latency ms  one forward pass of one image, numpy in, logits out",
    "  b256 img/s     images per second at batch 256",
    "  train b64 ms   one training step at batch 64: forward, backward, every gradient",
    "  torch CPU      PyTorch on as many CPU threads as the OpenCL device has compute units",
    "  torch CUDA     PyTorch on the GPU (an OpenCL GPU device with CUDA available)",
    "  logits err     relative difference of proxcl's logits from PyTorch's"])


def run(args) -> int:
    from . import model_names
    models = model_names(args.models)
    threads = getattr(args, "torch_threads", None)
    if threads is not None and threads < 1:
        raise InputError("--torch-threads must be at least 1")
    result = run_benchmark(args.device, models, quick=args.quick, torch_threads=threads,
                           log=lambda s: print(s, flush=True))
    finish(result, args.json)
    return 0
