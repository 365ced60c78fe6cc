"""Reproduce docs/RESULTS.md: train every row with the proxcl command, then render the tables
and the accuracy-versus-nonzeros figures.

    python scripts/results.py run lenet300 [--jobs N] [--device SPEC] [--dir runs/results]
    python scripts/results.py run lenet5   [--jobs N] ...
    python scripts/results.py render [--dir runs/results]   # -> docs/RESULTS.md tables, docs/*.png

`run` trains the dense reference and the proximal rows first, then magnitude pruning with
retraining at exactly the nonzero fraction of each proximal row (both scopes, per layer and global).
Each row is one `proxcl train` process; its command, device, seed and JSON summary are kept in
DIR/<model>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

# (tag, extra arguments).  Every row also gets --model, --seed 0 and the epochs below.
ROWS = {
    "lenet300": {
        "epochs": 20, "debias_epochs": 10,
        "proximal": [
            ("prox-adam l1=1e-4", ["--optimizer", "prox-adam", "--l1", "1e-4"]),
            ("prox-adam l1=2e-4", ["--optimizer", "prox-adam", "--l1", "2e-4"]),
            ("prox-adam l1=4e-4", ["--optimizer", "prox-adam", "--l1", "4e-4"]),
            ("prox-adam l1=1e-3", ["--optimizer", "prox-adam", "--l1", "1e-3"]),
            ("prox-adam l1=2e-3", ["--optimizer", "prox-adam", "--l1", "2e-3"]),
            ("prox-sgd l1=5e-3", ["--optimizer", "prox-sgd", "--lr", "0.05", "--l1", "5e-3"]),
            ("prox-sgd l1=1e-2", ["--optimizer", "prox-sgd", "--lr", "0.05", "--l1", "1e-2"]),
            ("rda l1=5e-4", ["--optimizer", "rda", "--gamma", "1", "--l1", "5e-4"]),
            ("rda l1=1e-3", ["--optimizer", "rda", "--gamma", "1", "--l1", "1e-3"]),
        ],
    },
    "lenet5": {
        "epochs": 8, "debias_epochs": 4,
        "proximal": [
            ("prox-adam l1=5e-4", ["--optimizer", "prox-adam", "--l1", "5e-4"]),
            ("prox-adam l1=1e-3", ["--optimizer", "prox-adam", "--l1", "1e-3"]),
            ("prox-adam l1=2e-3", ["--optimizer", "prox-adam", "--l1", "2e-3"]),
            ("prox-sgd l1=3e-3", ["--optimizer", "prox-sgd", "--lr", "0.05", "--l1", "3e-3"]),
            ("prox-sgd l1=5e-3", ["--optimizer", "prox-sgd", "--lr", "0.05", "--l1", "5e-3"]),
            ("prox-sgd l1=1e-2", ["--optimizer", "prox-sgd", "--lr", "0.05", "--l1", "1e-2"]),
            ("prox-sgd l1=2e-2", ["--optimizer", "prox-sgd", "--lr", "0.05", "--l1", "2e-2"]),
            ("rda gamma=10 l1=1e-3", ["--optimizer", "rda", "--gamma", "10", "--l1", "1e-3"]),
            ("rda gamma=5 l1=5e-4", ["--optimizer", "rda", "--gamma", "5", "--l1", "5e-4"]),
            ("rda gamma=2 l1=1e-3", ["--optimizer", "rda", "--gamma", "2", "--l1", "1e-3"]),
            ("rda gamma=2 l1=3e-3", ["--optimizer", "rda", "--gamma", "2", "--l1", "3e-3"]),
            ("rda gamma=3 l1=3e-3", ["--optimizer", "rda", "--gamma", "3", "--l1", "3e-3"]),
        ],
    },
}


SCOPES = ["global", "layer"]   # magnitude pruning scopes to run (--scopes)
OVERRIDE: dict = {}   # --data / --epochs / --debias-epochs from the command line (for trying the script)


def _epochs(model: str) -> tuple[int, int]:
    r = ROWS[model]
    return OVERRIDE.get("epochs") or r["epochs"], OVERRIDE.get("debias_epochs") or r["debias_epochs"]


def _command(model: str, tag: str, extra: list[str], outdir: str, device: str | None) -> list[str]:
    epochs, debias = _epochs(model)
    slug = tag.replace(" ", "_").replace("=", "").replace("@", "at")
    cmd = ["proxcl", "train", "--model", model, "--seed", "0", *extra]
    if OVERRIDE.get("data"):
        cmd += ["--data", OVERRIDE["data"]]
    if "--method" not in extra or "magnitude" in extra:
        cmd += ["--epochs", str(epochs), "--debias-epochs", str(debias)]
    if device:
        cmd += ["--device", device]
    return cmd + ["--out", f"{outdir}/{model}_{slug}.proxcl", "--log", f"{outdir}/{model}_{slug}.jsonl",
                  "--no-progress", "--json"]


def _run_one(job):
    model, tag, cmd, outdir = job
    proc = subprocess.run([sys.executable, "-m", "proxcl", *cmd[1:]], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"model": model, "tag": tag, "command": shlex.join(cmd[:cmd.index("--out")]),
                "error": proc.stderr.strip()[-500:]}
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    log = cmd[cmd.index("--log") + 1]
    records = [json.loads(line) for line in open(log)]
    first_phase = [r for r in records if r["phase"] in ("sparse", "dense")]
    device = _device_name(cmd[cmd.index("--out") + 1])
    row = {"model": model, "tag": tag, "command": shlex.join(cmd[:cmd.index("--out")]), "device": device,
           "seed": 0, "accuracy": summary["test_accuracy"], "nnz": summary["nnz"],
           "weights": summary["weights"], "density": summary["density"],
           "before": first_phase[-1]["test_accuracy"] if first_phase else None,
           "seconds": summary["seconds"], "file": cmd[cmd.index("--out") + 1]}
    print(json.dumps(row), flush=True)
    return row


def _device_name(model_file: str) -> str:
    from proxcl.modelfile import read_model_file
    _, _, meta = read_model_file(model_file)
    return meta.get("device", "?")


def run(model: str, outdir: str, jobs: int, device: str | None) -> None:
    os.makedirs(outdir, exist_ok=True)
    r = ROWS[model]
    epochs, debias = _epochs(model)
    only = OVERRIDE.get("only")
    first = [] if only else [(model, "dense", _command(model, "dense", ["--method", "dense", "--optimizer", "adam",
                                                         "--epochs", str(epochs + debias)],
                                       outdir, device), outdir)]
    first += [(model, tag, _command(model, tag, extra, outdir, device), outdir) for tag, extra in r["proximal"]
              if not only or only in tag]
    with ThreadPoolExecutor(jobs) as ex:
        rows = list(ex.map(_run_one, first))
    second = []
    for row in rows:
        if row["tag"] == "dense" or "error" in row:
            continue
        dens = f"{row['nnz'] / row['weights']:.6f}"
        for scope in SCOPES:
            tag = f"magnitude {scope} @ {row['tag']}"
            extra = ["--method", "magnitude", "--optimizer", "adam", "--target-density", dens,
                     "--prune-scope", scope]
            second.append((model, tag, _command(model, tag, extra, outdir, device), outdir))
    with ThreadPoolExecutor(jobs) as ex:
        rows += list(ex.map(_run_one, second))
    with open(os.path.join(outdir, f"{model}.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def render(outdir: str, docs: str = "docs") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for model in ROWS:
        path = os.path.join(outdir, f"{model}.jsonl")
        if not os.path.exists(path):
            continue
        rows = [json.loads(line) for line in open(path)]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        dense = next((r for r in rows if r["tag"] == "dense" and "error" not in r), None)
        if dense:
            ax.axhline(dense["accuracy"] * 100, color="k", ls="--", lw=1, label="dense")
        groups = {}
        for r in rows:
            if r["tag"] == "dense" or "error" in r:
                continue
            key = r["tag"].split(" l1")[0] if not r["tag"].startswith("magnitude") else \
                "magnitude (" + r["tag"].split()[1] + ")"
            groups.setdefault(key, []).append(r)
        for key, rs in sorted(groups.items()):
            rs.sort(key=lambda r: r["density"])
            ax.plot([r["density"] * 100 for r in rs], [r["accuracy"] * 100 for r in rs], marker="o", label=key)
        ax.set_xscale("log")
        ax.set_xlabel("nonzero weights (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model} on Fashion-MNIST")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        png = os.path.join(docs, f"results_{model}.png")
        fig.savefig(png, dpi=110, bbox_inches="tight")
        plt.close(fig)
        print(png)
        print(table(rows))


def table(rows: list[dict]) -> str:
    """The RESULTS.md table of one model: proximal rows with the magnitude rows at their nonzero
    count beside them, then the dense reference; every row's exact command below it."""
    ok = [r for r in rows if "error" not in r]
    mag = {r["tag"].split(" @ ", 1)[1] + "|" + r["tag"].split()[1]: r for r in ok if r["tag"].startswith("magnitude")}
    out = ["| row | before debiasing | after debiasing | nonzero weights | compression "
           "| magnitude, global | magnitude, per layer |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for r in rows:
        if r["tag"] == "dense" or r["tag"].startswith("magnitude"):
            continue
        if "error" in r:
            msg = r["error"].replace("proxcl: error: ", "").split(";")[0]
            out.append(f"| {r['tag']} | {msg} | | | | | |")
            notes.append((r["tag"], r["command"]))
            continue
        cells = []
        for scope in ("global", "layer"):
            m = mag.get(r["tag"] + "|" + scope)
            if m is None:
                cells.append("")
                continue
            diff = (r["accuracy"] - m["accuracy"]) * 100
            cells.append(f"{m['accuracy'] * 100:.2f} % ({diff:+.2f})")
            notes.append((m["tag"], m["command"]))
        out.append(f"| {r['tag']} | {r['before'] * 100:.2f} % | **{r['accuracy'] * 100:.2f} %** | "
                   f"{r['nnz']:,} ({r['density'] * 100:.2f} %) | {r['weights'] / max(r['nnz'], 1):.1f}x | "
                   f"{cells[0]} | {cells[1]} |")
        notes.insert(len(notes) - sum(1 for c in cells if c), (r["tag"], r["command"]))
    dense = next((r for r in ok if r["tag"] == "dense"), None)
    if dense:
        out.append(f"| dense | | **{dense['accuracy'] * 100:.2f} %** | {dense['nnz']:,} (100 %) | 1.0x | | |")
        notes.insert(0, ("dense", dense["command"]))
    devices = sorted({r["device"] for r in ok})
    seeds = sorted({r["seed"] for r in ok})
    out += ["", f"Device: {', '.join(devices)}; seed {', '.join(map(str, seeds))}. In the magnitude columns, "
            "the accuracy of magnitude pruning with retraining at exactly the row's nonzero count, and in "
            "brackets how many points proxcl is ahead (negative: magnitude pruning is better). The dense "
            "accuracy before pruning is the magnitude rows' \"before\" value.", "", "Commands:", ""]
    out += [f"* {tag}: `{cmd}`" for tag, cmd in notes]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("model", choices=sorted(ROWS))
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--dir", default="runs/results")
    p.add_argument("--scopes", default="global,layer", help="magnitude pruning scopes (default %(default)s)")
    p.add_argument("--only", default=None, help="run only the proximal rows whose tag contains this "
                                                "(and their magnitude rows); no dense row")
    p.add_argument("--data", default=None, help="another data set (to try the script)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--debias-epochs", type=int, default=None)
    p = sub.add_parser("render")
    p.add_argument("--dir", default="runs/results")
    args = ap.parse_args()
    if args.cmd == "run":
        OVERRIDE.update(data=args.data, epochs=args.epochs, debias_epochs=args.debias_epochs, only=args.only)
        SCOPES[:] = args.scopes.split(",")
        run(args.model, args.dir, args.jobs, args.device)
    else:
        render(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
