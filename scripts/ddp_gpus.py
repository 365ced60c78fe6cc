"""One GPU against several with proxcl.torch.ddp (NCCL): LeNet-5 on Fashion-MNIST, the same run at
the same global batch with 1 and with N processes.  Writes under $OUT (default runs/ddp_gpus):

* ``ddp_b{batch}_g{gpus}.json``  each run's summary (proxcl.torch.ddp --json): throughput per GPU,
  test accuracy, nonzeros, density, per-epoch history;
* ``summary.json``                per batch: throughput per GPU and in total for each GPU count, the
  scaling, and the accuracy and density differences against the 1-GPU run;
* ``lenet5_b{batch}_g{gpus}.proxcl`` the model files of the first batch size;
* ``eval_opencl.json``            where pyopencl and an OpenCL GPU are there: ``proxcl eval`` of those
  files on it, against PyTorch's accuracy.

    PYTHONPATH=src python3 scripts/ddp_gpus.py [--epochs 8 --debias-epochs 4 --batches 256,2048 --gpus 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def run(cmd: list[str], timeout: float):
    """Run cmd in its own process group; past the timeout the whole group (torchrun's workers
    too) is killed and "timeout" returned."""
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = "timeout"
    print(f"  exit {rc} after {time.perf_counter() - t0:.1f} s", flush=True)
    return rc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--debias-epochs", type=int, default=4)
    p.add_argument("--batches", default="256,2048")
    p.add_argument("--gpus", default="1,2")
    p.add_argument("--timeout", type=float, default=80.0, help="seconds per run")
    p.add_argument("ddp_args", nargs="*", help="more options for proxcl.torch.ddp (after --)")
    args = p.parse_args()
    out = os.environ.get("OUT") or "runs/ddp_gpus"
    os.makedirs(out, exist_ok=True)
    import torch
    print(f"torch {torch.__version__}, {torch.cuda.device_count()} CUDA devices", flush=True)
    batches = [int(b) for b in args.batches.split(",")]
    gpus = [int(g) for g in args.gpus.split(",")]
    results: dict = {}
    for bi, batch in enumerate(batches):
        for g in gpus:
            name = f"b{batch}_g{g}"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={g}",
                   "-m", "proxcl.torch.ddp", "--model", "lenet5", "--epochs", str(args.epochs),
                   "--debias-epochs", str(args.debias_epochs), "--batch-size", str(batch), "--backend", "auto",
                   "--json", f"{out}/ddp_{name}.json", *args.ddp_args]
            if bi == 0:
                cmd += ["--out", f"{out}/lenet5_{name}.proxcl"]
            rc = run(cmd, args.timeout)
            path = f"{out}/ddp_{name}.json"
            results[name] = json.load(open(path)) if rc == 0 and os.path.exists(path) else {"error": rc}
    summary = {"epochs": args.epochs, "debias_epochs": args.debias_epochs, "runs": {}}
    for batch in batches:
        base = results.get(f"b{batch}_g{gpus[0]}", {})
        for g in gpus:
            r = results.get(f"b{batch}_g{g}", {})
            if "error" in r or "error" in base:
                summary["runs"][f"b{batch}_g{g}"] = {"error": r.get("error", base.get("error"))}
                continue
            summary["runs"][f"b{batch}_g{g}"] = {
                "device": r["device"], "world_size": r["world_size"], "global_batch": batch,
                "samples_per_second": r["samples_per_second"],
                "samples_per_second_per_gpu": r["samples_per_second_per_device"],
                "steady_samples_per_second_per_gpu": r["steady_samples_per_second_per_device"],
                "speedup_vs_first": r["samples_per_second"] / base["samples_per_second"],
                "per_gpu_efficiency_vs_first": r["samples_per_second_per_device"] / base["samples_per_second_per_device"],
                "test_accuracy": r["test_accuracy"], "accuracy_points_vs_first": 100 * (r["test_accuracy"] - base["test_accuracy"]),
                "nnz": r["nnz"], "density": r["density"], "nnz_relative_vs_first": r["nnz"] / base["nnz"] - 1,
                "rank_max_difference": r.get("rank_max_difference")}
    evals = {}
    try:
        import pyopencl  # noqa: F401
        for g in gpus:
            model = f"{out}/lenet5_b{batches[0]}_g{g}.proxcl"
            if not os.path.exists(model):
                continue
            res = subprocess.run([sys.executable, "-m", "proxcl", "eval", model, "--device", "gpu", "--json"],
                                 capture_output=True, text=True, timeout=60)
            evals[model] = (json.loads(res.stdout)["accuracy"] if res.returncode == 0 else res.stderr.strip()[-300:])
            evals[model + " (pytorch)"] = results[f"b{batches[0]}_g{g}"].get("test_accuracy")
    except ImportError:
        evals["skipped"] = "pyopencl is not installed here"
    except Exception as e:      # noqa: BLE001 - the OpenCL check is an extra; the runs are written
        evals["error"] = repr(e)
    with open(f"{out}/eval_opencl.json", "w") as f:
        json.dump(evals, f, indent=2)
    with open(f"{out}/summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2), flush=True)
    print(json.dumps(evals, indent=2), flush=True)
    return 0 if all("error" not in r for r in summary["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
