"""The measurements of docs/DEPLOY.md: the C runtime (proxcl-run) against the Python runtime on one
OpenCL device, for a LeNet-5 model file (99 % zeros) and optionally the demo's LeNet-300-100 file.

* batch-1 latency and batch-256 throughput of one forward pass (numpy in, logits out), both timed
  as proxcl.bench.timing.time_host times (median wall time after warm-up);
* the classes of the 10,000 Fashion-MNIST test images: proxcl-run predict against proxcl predict;
* one epoch of proxcl-run finetune: its time, and the accuracy (proxcl eval) and nonzero count of
  the file it writes against the input's;
* the stripped binary's size, and the peak resident memory of proxcl-run predict against that of
  a run that only opens the device (proxcl-run devices --open).

    python scripts/deploy_bench.py --bin runtime/build/proxcl-run --model runs/x/lenet5.proxcl \
        [--demo runs/demo/model.proxcl] [--data DIR] [--device D] [--json OUT.json]

DIR holds the Fashion-MNIST IDX files (raw or .gz; default: where proxcl finds the data set); the
script decompresses them for proxcl-run, which reads raw IDX.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from proxcl import modelfile as mf                      # noqa: E402
from proxcl.bench.timing import machine_info, time_host  # noqa: E402
from proxcl.cli.predict import stored_inputs             # noqa: E402
from proxcl.data import find_files, load_dataset, normalise, read_idx  # noqa: E402
from proxcl.predict import predict_files                 # noqa: E402
from proxcl.runtime import Device                        # noqa: E402
from proxcl.training import evaluate                     # noqa: E402

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def raw_data(src: str | None, dest: Path) -> Path:
    """The four IDX files, decompressed into dest."""
    if src is None:
        found = find_files("fashion-mnist")
        if not found:
            raise SystemExit("no Fashion-MNIST files found: give --data DIR")
        src = str(Path(next(iter(found.values()))).parent)
    for name in NAMES:
        for cand in (Path(src) / name, Path(src) / (name + ".gz")):
            if cand.exists():
                opener = gzip.open if cand.suffix == ".gz" else open
                with opener(cand, "rb") as f, open(dest / name, "wb") as g:
                    shutil.copyfileobj(f, g)
                break
        else:
            raise SystemExit(f"{src}: no {name}(.gz)")
    return dest


def peak_rss_mib(cmd: list[str], env: dict) -> float:
    """Peak resident memory of a proxcl-run process, as it reports it ($PROXCL_REPORT_MEMORY: its
    VmHWM; a child's rusage would count the memory of this Python process it was forked from)."""
    r = subprocess.run(cmd, capture_output=True, text=True, env={**env, "PROXCL_REPORT_MEMORY": "1"})
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr}")
    return int(r.stderr.rsplit("peak resident memory ", 1)[1].split()[0]) / 1024.0


def c_bench(binary: str, model: str, batch: int, env: dict) -> dict:
    r = subprocess.run([binary, "bench", model, "--batch-size", str(batch), "--budget", "1.0"], capture_output=True,
                       text=True, env=env, check=True)
    return json.loads(r.stdout)


def speed(binary, model_path, dev, env) -> dict:
    model = mf.load(model_path, device=dev)
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1,) + model.input_shape).astype(np.float32)
    x256 = rng.standard_normal((256,) + model.input_shape).astype(np.float32)
    py1 = time_host(lambda: model.forward(x1), repeat=50, budget_s=1.0).wall_ms
    py256 = time_host(lambda: model.forward(x256, batch_size=256), repeat=50, budget_s=1.0).wall_ms
    c1, c256 = c_bench(binary, model_path, 1, env), c_bench(binary, model_path, 256, env)
    return {"python_b1_ms": py1, "c_b1_ms": c1["median_ms"], "python_b256_img_s": 256 / (py256 * 1e-3),
            "c_b256_img_s": c256["images_per_s"]}


def same_classes(binary, model_path, data: Path, dev, env) -> dict:
    images = str(data / "t10k-images-idx3-ubyte")
    model, meta = mf.load(model_path, device=dev, with_metadata=True)
    t0 = time.perf_counter()
    ref = [r["class"] for r in predict_files(model, [images], *stored_inputs(model_path, meta))]
    py_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = subprocess.run([binary, "predict", model_path, images, "--json"], capture_output=True, text=True, env=env,
                         check=True).stdout
    c_s = time.perf_counter() - t0
    got = [json.loads(line)["class"] for line in out.splitlines()]
    return {"images": len(ref), "same_classes": sum(a == b for a, b in zip(ref, got)) if len(got) == len(ref) else 0,
            "python_predict_s": py_s, "c_predict_process_s": c_s}


def finetune(binary, model_path, data: Path, dev, env, work: Path) -> dict:
    out = work / "finetuned.proxcl"
    t0 = time.perf_counter()
    subprocess.run([binary, "finetune", model_path, "--data", str(data), "--epochs", "1", "--out", str(out), "--quiet"],
                   env=env, check=True)
    wall = time.perf_counter() - t0
    meta = mf.read_model_file(out)[2]
    ds = load_dataset(f"fashion-mnist:{data}", normalisation=meta["normalisation"])
    acc_in = evaluate(mf.load(model_path, device=dev), ds)["accuracy"]
    acc_out = evaluate(mf.load(out, device=dev), ds)["accuracy"]
    nnz = [mf.file_report(p)["total"]["nnz"] for p in (model_path, out)]
    return {"epoch_s": meta["finetune"]["seconds"], "process_s": wall, "accuracy_in": acc_in, "accuracy_out": acc_out,
            "nnz_in": nnz[0], "nnz_out": nnz[1]}


def memory(binary, model_path, data: Path, device_name: str, env, work: Path) -> dict:
    one = work / "one.npy"
    np.save(one, read_idx(data / "t10k-images-idx3-ubyte")[:1])
    stripped = work / "proxcl-run"
    try:
        subprocess.run(["strip", "-o", str(stripped), binary], check=True)
        size = stripped.stat().st_size
    except FileNotFoundError:          # no binutils there: scripts/deploy_bench.sh prepare measured it
        size = None
    base = peak_rss_mib([binary, "devices", "--open", device_name], env)
    run1 = peak_rss_mib([binary, "predict", model_path, str(one)], env)
    run10k = peak_rss_mib([binary, "predict", model_path, str(data / "t10k-images-idx3-ubyte")], env)
    return {"stripped_bytes": size, "rss_open_device_mib": base, "rss_predict_1_mib": run1,
            "rss_predict_10000_mib": run10k, "rss_beyond_driver_1_mib": run1 - base,
            "rss_beyond_driver_10000_mib": run10k - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="runtime/build/proxcl-run")
    ap.add_argument("--model", required=True, help="LeNet-5 model file (99 %% zeros)")
    ap.add_argument("--demo", default=None, help="the demo's model file (LeNet-300-100)")
    ap.add_argument("--data", default=None, help="folder of the Fashion-MNIST IDX files (raw or .gz)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    dev = Device(args.device)
    env = {**os.environ}
    if args.device:
        env["PROXCL_DEVICE"] = args.device
    device_name = args.device or ""
    res = {"device": f"{dev.platform_name} | {dev.name}", "host": machine_info()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        data = raw_data(args.data, work / "data")
        res["lenet5"] = speed(args.bin, args.model, dev, env)
        res["lenet5"].update(same_classes(args.bin, args.model, data, dev, env))
        if args.demo:
            res["demo"] = same_classes(args.bin, args.demo, data, dev, env)
            res["demo"]["finetune"] = finetune(args.bin, args.demo, data, dev, env, work)
        res["lenet5"]["finetune"] = finetune(args.bin, args.model, data, dev, env, work)
        res["binary"] = memory(args.bin, args.model, data, device_name, env, work)
    res["host_after"] = machine_info()
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
