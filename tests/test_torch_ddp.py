"""proxcl.torch.ddp under torchrun: two gloo processes (each half of every batch) end with the
weights of one process that takes the whole batch, to float rounding, and identical on both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import proxcl.torch as pt

RUN = ["--model", "lenet5", "--data", "synthetic:300", "--optimizer", "prox-sgd", "--l1", "1e-3",
       "--target-density", "0.3", "--density-ramp", "0.5", "--epochs", "2", "--debias-epochs", "1",
       "--batch-size", "40", "--seed", "3", "--quiet"]


def _run(tmp_path, nproc: int) -> tuple[dict, dict]:
    out, summary = tmp_path / f"m{nproc}.proxcl", tmp_path / f"r{nproc}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "proxcl.torch.ddp", *RUN, "--backend", "gloo", "--out", str(out), "--json", str(summary)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return pt.load(out).state_dict(), json.loads(summary.read_text())


def test_two_gloo_processes_match_one_with_the_whole_batch(tmp_path):
    one, r1 = _run(tmp_path, 1)
    two, r2 = _run(tmp_path, 2)
    assert r2["world_size"] == 2 and r2["backend"] == "gloo" and r1["world_size"] == 1
    assert r2["rank_max_difference"] == 0.0, "every rank must hold the same weights"
    assert r1["nnz"] == r2["nnz"] == round(0.3 * r1["weights"])
    # The two sum their gradients in other orders: a value within float rounding of a threshold
    # may land on the other side, so a few zeros may move; the rest agree.
    moved = 0
    for name, a in one.items():
        b = two[name]
        both = (a != 0) & (b != 0)
        moved += int(((a == 0) != (b == 0)).sum())
        np.testing.assert_allclose(b[both].numpy(), a[both].numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
    assert moved <= 1e-4 * r1["weights"]
    assert r1["history"][-1]["loss"] == pytest.approx(r2["history"][-1]["loss"], rel=1e-4)


def test_bad_arguments_are_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "proxcl.torch.ddp", "--batch-size", "0"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("proxcl.torch.ddp: error: ")
    assert res.stderr.count("\n") == 1
