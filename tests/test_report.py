"""The report's figures, read from their matplotlib objects: the phase changes named in the
legend, the dense reference drawn, percent ticks on the density axis, thousands separators in
the spy plots' titles; and `proxcl report --reference` and `proxcl demo` drawing it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from proxcl.ops import HostCSR
from proxcl.report import figures

def _records(phases, density0=1.0):
    out = []
    for i, phase in enumerate(phases):
        d = density0 * 0.5 ** i
        out.append({"phase": phase, "epoch": i + 1, "loss": 1.0 / (i + 1), "test_loss": 1.2 / (i + 1),
                    "train_accuracy": 0.5 + 0.04 * i, "test_accuracy": 0.45 + 0.04 * i, "density": d,
                    "layers": [{"name": "fc.weight", "nnz": int(d * 1000)}]})
    return out


@contextlib.contextmanager
def _figs(tensors, records, reference=None):
    """{file name: figure}, drawn (so that tick labels exist), closed afterwards."""
    import matplotlib.pyplot as plt
    figs = dict(figures(tensors, records, reference))
    try:
        for fig in figs.values():
            fig.canvas.draw()
        yield figs
    finally:
        for fig in figs.values():
            plt.close(fig)


@pytest.fixture
def tensors():
    rng = np.random.default_rng(0)
    w = np.where(rng.random((300, 784)) < 0.0123, 1.0, 0.0).astype(np.float32)
    rows, cols = np.nonzero(w)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=300))]).astype(np.int32)
    return {"fc1.weight": HostCSR(indptr, cols.astype(np.int32), w[rows, cols], (300, 784)),
            "fc1.bias": np.zeros(300, np.float32),
            "conv.weight": np.ones((6, 1, 5, 5), np.float32)}


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_phase_changes_are_named_and_the_reference_is_drawn(tensors):
    records = _records(["sparse"] * 3 + ["debias"] * 2)
    reference = _records(["dense"] * 5)
    with _figs(tensors, records, reference) as figs:
        for name, key, scale in (("loss.png", "test_loss", 1.0), ("accuracy.png", "test_accuracy", 100.0)):
            ax = figs[name].axes[0]
            assert "debiasing starts" in _legend(ax)
            start = next(l for l in ax.get_lines() if l.get_label() == "debiasing starts")
            assert list(start.get_xdata()) == [3.5, 3.5]
            ref = next(l for l in ax.get_lines() if l.get_label() == "dense reference (test)")
            assert np.allclose(ref.get_ydata(), [r[key] * scale for r in reference])
        assert "dense reference (test)" not in _legend(figs["density.png"].axes[0])


def test_gmp_and_magnitude_phases_are_named_as_theirs(tensors):
    for phases, want in ((["prune"] * 2 + ["retrain"] * 2, "fine-tuning starts"),
                         (["dense"] * 2 + ["retrain"] * 2, "retraining starts")):
        with _figs(tensors, _records(phases)) as figs:
            for name in ("loss.png", "accuracy.png", "density.png", "nonzeros_per_layer.png"):
                assert want in _legend(figs[name].axes[0]), (phases, name)
            assert "dense reference (test)" not in _legend(figs["accuracy.png"].axes[0])


def test_density_axis_is_in_percent(tensors):
    for records in (_records(["sparse"] * 6 + ["debias"] * 2), _records(["sparse"] * 3, density0=0.95)):
        with _figs(tensors, records) as figs:
            ax = figs["density.png"].axes[0]
            lo, hi = ax.get_ylim()
            labels = [t.get_text() for t, v in zip(ax.get_yticklabels(), ax.get_yticks()) if lo <= v <= hi]
            assert len(labels) >= 2 and all(t.endswith(" %") for t in labels), labels
            values = [float(t[:-2].replace("\N{MINUS SIGN}", "-")) for t in labels]
            assert values == sorted(values) and all(lo <= v <= hi for v in values)
            assert ax.yaxis.get_major_formatter()(10.0, 0) == "10 %"
            assert ax.yaxis.get_major_formatter()(0.5, 0) == "0.5 %"


def test_spy_titles_have_thousands_separators(tensors):
    nnz = tensors["fc1.weight"].nnz
    assert nnz >= 1000
    with _figs(tensors, _records(["sparse"])) as figs:
        assert figs["spy_fc1_weight.png"].axes[0].get_title() == \
            f"fc1.weight: {nnz:,} of 235,200 nonzero ({100 * nnz / 235200:.2f} %)"
        assert figs["spy_conv_weight.png"].axes[0].get_title() == "conv.weight: 150 of 150 nonzero (100.00 %)"
        assert "spy_fc1_bias.png" not in figs


def test_report_and_demo_draw_the_reference(tmp_path):
    """`proxcl demo` writes the dense reference's log and draws it; `proxcl report --reference`
    draws a given one."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "proxcl", "demo", "--data", "synthetic:400", "--epochs", "2",
                        "--debias-epochs", "1", "--out-dir", str(tmp_path / "demo")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""            # no bars: stderr is not a terminal
    demo = tmp_path / "demo"
    dense = [json.loads(line) for line in (demo / "dense.jsonl").read_text().splitlines()]
    assert [x["phase"] for x in dense] == ["dense"] * 3
    assert f"dense reference     test accuracy {dense[-1]['test_accuracy'] * 100:.2f} %" in r.stdout
    assert sorted(os.listdir(demo / "report"))[:3] == ["accuracy.png", "density.png", "loss.png"]
    rep = subprocess.run([sys.executable, "-m", "proxcl", "report", str(demo / "model.proxcl"), "--log",
                          str(demo / "train.jsonl"), "--reference", str(demo / "dense.jsonl"), "--out",
                          str(tmp_path / "rep")], capture_output=True, text=True, env=env)
    assert rep.returncode == 0 and rep.stderr == ""
    assert rep.stdout.splitlines()[:3] == [str(tmp_path / "rep" / n) for n in ("loss.png", "accuracy.png",
                                                                              "density.png")]
