"""Reproduce docs/RESULTS.md: proxcl's proximal method against gradual magnitude pruning (GMP, global
and per layer), one-shot magnitude pruning and dense training, at the same nonzero count and
epochs, every row one `proxcl train` process; then render the tables and figures.

    python scripts/results.py run   [--jobs N] [--device SPEC] [--dir DIR] [--only REGEX] [--seeds 0,1,2]
    python scripts/results.py tune  [--jobs N] [--device SPEC] [--dir DIR] [--only REGEX]
    python scripts/results.py render [--dir DIR ...]  # -> tables on stdout, docs/results_*.png

`run` trains the table's rows (TABLE below); `tune` the sweeps that chose the settings of the
proximal method and of GMP (TUNE below).  A row whose result is already in DIR/runs.jsonl is not run
again, so an interrupted run continues; `--budget-seconds` stops starting new rows after that long.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

NETS = {"lenet300": [(20, 10), (60, 30)], "lenet5": [(8, 4), (24, 12)]}
DENSITIES = [0.02, 0.01, 0.005, 0.0015]

# The settings of each method, per net and budget (0: the short one, 1: three times as long), chosen
# by `tune` on the short budget and by the long-budget runs that docs/RESULTS.md lists.  With three
# times the epochs the proximal method reaches its density over the same number of epochs as in the
# short budget (a quarter of them) and then lets the lr decay; GMP is run both with its short-budget
# schedule (the cubic over half of the epochs) and over the first quarter, and the proximal method
# both with its short-budget reweighting and with a weaker one (eps 0.1); the better of each shown.
PROXCL = {"lenet300": ["--reweight-eps", "0.01"], "lenet5": ["--reweight-eps", "0.03"]}
PROXCL_BUDGET = (["--density-ramp", "0.75"], ["--density-ramp", "0.25", "--lr-schedule", "hold-cosine"])
GMP = ["--lr", "0.05", "--prune-end", "0.5"]
GMP_QUARTER = ["--lr", "0.05", "--prune-end", "0.25"]
METHODS = {
    "proxcl": lambda net, b: PROXCL[net] + PROXCL_BUDGET[b],
    "proxcl-e": lambda net, b: ["--reweight-eps", "0.1", *PROXCL_BUDGET[b]] if b else None,
    "gmp-global": lambda net, b: ["--method", "gmp", "--prune-scope", "global", *GMP],
    "gmp-global-q": lambda net, b: ["--method", "gmp", "--prune-scope", "global", *GMP_QUARTER] if b else None,
    "gmp-layer": lambda net, b: ["--method", "gmp", "--prune-scope", "layer", *GMP],
    "magnitude": lambda net, b: ["--method", "magnitude", "--prune-scope", "global", *GMP[:2]],
}
GMP_METHODS = ("gmp-global", "gmp-global-q", "gmp-layer")
PROXCL_METHODS = ("proxcl", "proxcl-e")

# Sweeps on the short budget at two densities per net: (name, method, extra arguments).
TUNE_DENSITIES = {"lenet300": [0.01, 0.005], "lenet5": [0.005, 0.0015]}
TUNE = (
    [(f"proxcl eps={e} ramp={r} lr={lr}", "proxcl",
      ["--reweight-eps", e, "--density-ramp", r, "--lr", lr])
     for e, r, lr in itertools.product(["0.01", "0.03", "0.1"], ["0.5", "0.75"], ["0.05", "0.1"])]
    + [(f"gmp lr={lr} end={end}", "gmp", ["--method", "gmp", "--lr", lr, "--prune-end", end])
       for lr, end in itertools.product(["0.02", "0.05", "0.1"], ["0.5", "0.75"])]
)


def _job(key: str, net: str, epochs: int, debias: int, args: list[str], seed: int, outdir: str,
         device: str | None) -> dict:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)
    cmd = ["proxcl", "train", "--model", net, "--seed", str(seed), *args]
    if "dense" not in args:
        cmd += ["--epochs", str(epochs), "--debias-epochs", str(debias)]
    if device:
        cmd += ["--device", device]
    return {"key": key, "net": net, "epochs": f"{epochs} + {debias}", "seed": seed,
            "command": shlex.join(cmd),
            "argv": cmd + ["--out", f"{outdir}/{slug}.proxcl", "--log", f"{outdir}/{slug}.jsonl",
                           "--no-progress", "--json"]}


def table_jobs(seeds: list[int], outdir: str, device: str | None) -> list[dict]:
    jobs = []
    for net, budgets in NETS.items():
        for b, (epochs, debias) in enumerate(budgets):
            for seed in seeds:
                for opt in ("sgd", "adam"):
                    key = f"{net}|{epochs}+{debias}|dense-{opt}|s{seed}"
                    jobs.append(_job(key, net, epochs + debias, 0, ["--method", "dense", "--optimizer", opt,
                                     "--epochs", str(epochs + debias)] + (["--lr", "1e-3"] if opt == "adam" else []),
                                     seed, outdir, device))
                for density, (method, args) in itertools.product(DENSITIES, METHODS.items()):
                    if args(net, b) is None:
                        continue
                    key = f"{net}|{epochs}+{debias}|{density}|{method}|s{seed}"
                    jobs.append(_job(key, net, epochs, debias, ["--target-density", str(density), *args(net, b)],
                                     seed, outdir, device))
    return jobs


def tune_jobs(outdir: str, device: str | None) -> list[dict]:
    jobs = []
    for net, densities in TUNE_DENSITIES.items():
        epochs, debias = NETS[net][0]
        for density, (name, _, args) in itertools.product(densities, TUNE):
            key = f"tune|{net}|{density}|{name}"
            jobs.append(_job(key, net, epochs, debias, ["--target-density", str(density), *args], 0, outdir, device))
    return jobs


def _run_one(job: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "proxcl", *job["argv"][1:]], capture_output=True, text=True)
    row = {k: job[k] for k in ("key", "net", "epochs", "seed", "command")}
    if proc.returncode != 0:
        row["error"] = proc.stderr.strip()[-500:]
        return row
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    log = job["argv"][job["argv"].index("--log") + 1]
    records = [json.loads(line) for line in open(log)]
    first = [r for r in records if r["phase"] in ("sparse", "dense", "prune")]
    row.update(accuracy=summary["test_accuracy"], nnz=summary["nnz"], weights=summary["weights"],
               density=summary["density"], before=first[-1]["test_accuracy"] if first else None,
               layers=[[x["name"], x["nnz"]] for x in records[-1]["layers"]],
               seconds=round(time.perf_counter() - t0, 1), device=_device_name(job["argv"]))
    return row


def _device_name(argv: list[str]) -> str:
    from proxcl.modelfile import read_model_file
    _, _, meta = read_model_file(argv[argv.index("--out") + 1])
    return meta.get("device", "?")


def run_jobs(jobs: list[dict], outdir: str, n_jobs: int, budget: float | None) -> None:
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "runs.jsonl")
    done = set()
    if os.path.exists(path):
        done = {json.loads(line)["key"] for line in open(path) if '"error"' not in line}
    todo = [j for j in jobs if j["key"] not in done]
    print(f"{len(todo)} of {len(jobs)} rows to run, {n_jobs} at a time", flush=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_jobs) as ex, open(path, "a") as out:
        def submit(job):
            if budget is not None and time.perf_counter() - t0 > budget:
                return None
            return ex.submit(_run_one, job)
        pending = [f for f in (submit(j) for j in todo[:n_jobs]) if f]
        queue = todo[n_jobs:]
        while pending:
            f = next(as_completed(pending))
            pending.remove(f)
            row = f.result()
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"{row['key']}: " + (row.get("error", "")[-200:] or
                  f"{row['accuracy'] * 100:.2f} % at {row['density'] * 100:.3f} % ({row['seconds']} s)"), flush=True)
            while queue and len(pending) < n_jobs:
                nxt = submit(queue.pop(0))
                if nxt is None:
                    queue = []
                    break
                pending.append(nxt)


LABELS = {"proxcl": "proxcl (reweighted l1, target density)", "proxcl-e": "proxcl, eps 0.1",
          "gmp-global": "GMP, global",
          "gmp-global-q": "GMP, global, cubic over the first quarter", "gmp-layer": "GMP, per layer",
          "magnitude": "one-shot magnitude, global"}


def _load(dirs: list[str]) -> list[dict]:
    rows = {}
    for d in dirs:
        for line in open(os.path.join(d, "runs.jsonl")):
            r = json.loads(line)
            if "error" not in r and not r["key"].startswith("tune|"):
                rows[r["key"]] = r
    return list(rows.values())


def _stats(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return m, sd


def _cell(rs: list[dict]) -> str:
    if not rs:
        return ""
    m, sd = _stats([r["accuracy"] * 100 for r in rs])
    return f"{m:.2f} %" + (f" ± {sd:.2f} ({len(rs)} seeds)" if len(rs) > 1 else "")


def render_table(rows: list[dict], net: str, budget: str) -> str:
    mine = [r for r in rows if r["net"] == net and r["key"].split("|")[1] == budget]
    if not mine:
        return ""
    by = {}
    for r in mine:
        parts = r["key"].split("|")
        by.setdefault(tuple(parts[2:4]) if len(parts) == 5 else (parts[2], ""), []).append(r)
    methods = [m for m in LABELS if any(k[1] == m for k in by)]
    out = [f"| target density | {' | '.join(LABELS[m] for m in methods)} | best proxcl − best GMP |",
           "|---:|" + "---:|" * (len(methods) + 1)]

    def best(density, names):
        groups = [by[(str(density), m)] for m in names if (str(density), m) in by]
        return max(_stats([r["accuracy"] for r in g])[0] for g in groups) if groups else None

    for density in DENSITIES:
        cells = [_cell(by.get((str(density), m), [])) for m in methods]
        prox, gmp = best(density, PROXCL_METHODS), best(density, GMP_METHODS)
        gap = f"{(prox - gmp) * 100:+.2f}" if prox is not None and gmp is not None else ""
        out.append(f"| {density * 100:g} % | " + " | ".join(cells) + f" | {gap} |")
    dense = [f"{name}: {_cell(by[(name, '')])}" for name in ("dense-sgd", "dense-adam") if (name, "") in by]
    devices = sorted({r["device"] for r in mine})
    out += ["", f"Dense, same epochs: {'; '.join(dense)}. Device: {', '.join(devices)}."]
    return "\n".join(out)


def render_figure(rows: list[dict], net: str, path: str) -> None:
    """Accuracy against nonzero share per method, solid for the short budget, dashed for the long
    one; the y axis spans the competitive range and points below it sit on its floor as triangles."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    curves, dense = [], []
    for (epochs, debias), ls in zip(NETS[net], ("-", "--")):
        budget = f"{epochs}+{debias}"
        for method, color in zip(LABELS, ("C3", "C5", "C0", "C1", "C2", "C7")):
            pts = []
            for density in DENSITIES:
                rs = [r for r in rows if r["key"].startswith(f"{net}|{budget}|{density}|{method}|")]
                if rs:
                    pts.append((_stats([r["density"] * 100 for r in rs])[0],
                                _stats([r["accuracy"] * 100 for r in rs])[0]))
            if pts:
                curves.append((pts, ls, color, f"{LABELS[method]}, {budget}"))
        ds = [r["accuracy"] * 100 for r in rows if r["key"].startswith(f"{net}|{budget}|dense-")]
        if ds:
            dense.append((max(ds), ls, f"dense, {epochs + debias} epochs"))
    strong = [a for pts, _, color, _ in curves if color in ("C3", "C0") for _, a in pts]
    lo = min(strong) - 3 if strong else 0
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for pts, ls, color, label in curves:
        xs, ys = zip(*pts)
        ax.plot(xs, [max(y, lo) for y in ys], ls=ls, color=color, label=label, marker=None)
        for x, y in pts:
            ax.plot([x], [max(y, lo)], ls="", color=color, marker="o" if y >= lo else "v")
    for acc, ls, label in dense:
        ax.axhline(acc, color="k", ls=ls, lw=0.8, label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks([d * 100 for d in DENSITIES])
    ax.set_ylim(lo, max([a for a, _, _ in dense] + strong) + 0.8)
    ax.set_xlabel("nonzero weights (%)")
    ax.set_ylabel("test accuracy (%)  (▼: below the axis)")
    ax.set_title(f"{net} on Fashion-MNIST: solid {NETS[net][0][0]}+{NETS[net][0][1]} epochs, "
                 f"dashed {NETS[net][1][0]}+{NETS[net][1][1]}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def render(dirs: list[str], docs: str = "docs") -> None:
    rows = _load(dirs)
    for net, budgets in NETS.items():
        for epochs, debias in budgets:
            text = render_table(rows, net, f"{epochs}+{debias}")
            if text:
                print(f"### {net}, {epochs} + {debias} epochs\n\n{text}\n")
        if any(r["net"] == net for r in rows):
            path = os.path.join(docs, f"results_{net}.png")
            render_figure(rows, net, path)
            print(path)
    keys = sorted({re.sub(r"\|s\d+$", "", r["key"]): r["command"] for r in rows}.items())
    print("Commands (seed 0; other seeds differ only in --seed):\n")
    for key, cmd in keys:
        cmd = re.sub(r" --seed \d+", " --seed 0", cmd)
        print(f"* {key}: `{cmd}`")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "tune"):
        p = sub.add_parser(name)
        p.add_argument("--jobs", type=int, default=1)
        p.add_argument("--device", default=None)
        p.add_argument("--dir", default="runs/results")
        p.add_argument("--only", default=None, help="run only the rows whose key matches this regex")
        p.add_argument("--budget-seconds", type=float, default=None)
        if name == "run":
            p.add_argument("--seeds", default="0")
    p = sub.add_parser("render")
    p.add_argument("--dir", action="append", default=None, help="a folder of runs.jsonl (repeatable)")
    args = ap.parse_args()
    if args.cmd == "render":
        render(args.dir or ["runs/results"])
        return 0
    jobs = (table_jobs([int(s) for s in args.seeds.split(",")], args.dir, args.device) if args.cmd == "run"
            else tune_jobs(args.dir, args.device))
    if args.only:
        jobs = [j for j in jobs if re.search(args.only, j["key"])]
    run_jobs(jobs, args.dir, args.jobs, args.budget_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
