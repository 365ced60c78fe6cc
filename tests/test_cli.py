"""The proxcl command end to end, through subprocesses: train -> info -> eval -> predict -> report,
and bad input giving one line and exit status 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

DATA = "synthetic:400"


def proxcl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "proxcl", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) >= 1 and lines[-1].startswith(("proxcl: error:", "usage:")) or "error:" in lines[-1]
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    out, log = d / "m.proxcl", d / "log.jsonl"
    r = proxcl("train", "--model", "lenet300", "--data", DATA, "--epochs", 2, "--debias-epochs", 1,
               "--batch-size", 64, "--l1", 1e-3, "--switch-density", 0.5, "--out", out, "--log", log,
               "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    return d, out, log, json.loads(r.stdout.strip().splitlines()[-1])


def test_train_writes_model_log_and_checkpoint(trained):
    d, out, log, summary = trained
    assert out.exists() and (d / "m.proxcl.ckpt").exists()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["phase"] for r in records] == ["sparse", "sparse", "debias"]
    for r in records:
        assert {"loss", "train_accuracy", "test_accuracy", "nnz", "density", "layers", "seconds"} <= r.keys()
    assert summary["density"] == pytest.approx(records[-1]["density"])
    peaks = [r["memory"]["peak"] for r in records]
    assert summary["peak_bytes"] >= peaks[-1]["total"] > 0 and summary["peak_state_bytes"] >= peaks[-1]["state"]
    assert not [p for p in os.listdir(d) if p.endswith(".part") or p.startswith(".")]


def test_info_json_matches_the_file(trained):
    _, out, _, summary = trained
    r = proxcl("info", out, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["total"]["file_bytes"] == out.stat().st_size
    weights = [layer for layer in info["layers"] if layer["name"].endswith("weight")]
    assert sum(layer["nnz"] for layer in weights) == summary["nnz"]
    table = proxcl("info", out).stdout
    assert "fc1.weight" in table and "compression" in table
    # the device memory of inference, weights plus the largest activations and the input
    mem = info["inference_memory"]
    for batch in ("1", "256"):
        m = mem[batch]
        assert m["total"] == m["weights"] + m["activations"] + m["input"]
        assert m["input"] == 784 * 4 * int(batch)
        assert f"batch {batch:>3}:" in table
    assert mem["256"]["activations"] > mem["1"]["activations"] and mem["256"]["weights"] == mem["1"]["weights"]


def test_train_summary_names_the_peak(tmp_path):
    r = proxcl("train", "--model", "lenet300", "--data", DATA, "--epochs", 1, "--debias-epochs", 0,
               "--init-density", 0.1, "--out", tmp_path / "m.proxcl", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "peak device memory" in r.stdout and "weights, gradients and optimizer state" in r.stdout


def test_bench_memory_tables_the_categories_and_checks_the_bar(tmp_path):
    r = proxcl("bench", "memory", "--models", "lenet300", "--batch-size", 32, "--json", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "m.json").read_text())
    rows = {row["density"]: row for row in res["rows"]}
    assert set(rows) == {1.0, 0.05, 0.02, 0.01}
    for row in rows.values():
        assert row["state"] == sum(row["live"][c] for c in ("weights", "gradients", "optimizer"))
        assert row["peak"]["total"] >= sum(row["live"].values())
        assert abs(row["weight_nnz"] - row["density"] * row["weight_size"]) <= 3   # rounded per layer
    assert rows[0.02]["state_vs_dense"] <= 0.1 and rows[0.01]["state_vs_dense"] < rows[0.02]["state_vs_dense"]
    assert "weights + gradients + optimizer state" in r.stdout and "NOT met" not in r.stdout


def test_eval_json_agrees_with_training(trained):
    _, out, _, summary = trained
    r = proxcl("eval", out, "--data", DATA, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res) == {"accuracy", "loss", "n", "per_class"}
    assert res["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)
    assert len(res["per_class"]) == 10 and res["n"] == 80


def test_predict_npy_and_idx(trained, tmp_path):
    from proxcl.data import synthetic_arrays, write_idx
    _, out, _, _ = trained
    _, _, xte, yte = synthetic_arrays(400)
    np.save(tmp_path / "one.npy", xte[0])
    write_idx(tmp_path / "five-idx3-ubyte", xte[:5].reshape(5, 28, 28).astype(np.uint8))
    r = proxcl("predict", out, tmp_path / "one.npy", tmp_path / "five-idx3-ubyte", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 6
    for row in rows:
        assert 0 <= row["class"] < 10 and 0.1 <= row["probability"] <= 1.0
    assert rows[0]["class"] == rows[1]["class"]  # the same image twice


def test_predict_png_matches_npy(trained, tmp_path):
    from PIL import Image
    from proxcl.data import synthetic_arrays
    _, out, _, _ = trained
    _, _, xte, _ = synthetic_arrays(400)
    img = xte[3].reshape(28, 28).astype(np.uint8)
    Image.fromarray(img, mode="L").save(tmp_path / "img.png")
    np.save(tmp_path / "img.npy", img)
    r = proxcl("predict", out, tmp_path / "img.png", tmp_path / "img.npy", "--json")
    assert r.returncode == 0, r.stderr
    png, npy = (json.loads(line) for line in r.stdout.splitlines())
    assert png["class"] == npy["class"] and png["probability"] == pytest.approx(npy["probability"])
    text = proxcl("predict", out, tmp_path / "img.png").stdout
    assert "img.png[0]:" in text and "p = " in text
    wrong = tmp_path / "small.npy"
    np.save(wrong, np.zeros((5, 5), np.uint8))
    _one_line_error(proxcl("predict", out, wrong), "the model takes")


def test_report_writes_pngs(trained, tmp_path):
    _, out, log, _ = trained
    r = proxcl("report", out, "--log", log, "--out", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(tmp_path / "rep"))
    for want in ("loss.png", "accuracy.png", "density.png", "nonzeros_per_layer.png", "spy_fc1_weight.png"):
        assert want in names
    for n in names:
        assert (tmp_path / "rep" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_subcommand_has_help():
    import argparse
    from proxcl.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"train", "export", "import"} <= set(sub.choices)
    for cmd in sub.choices:         # a module of proxcl.cli may add more than one (interop)
        r = proxcl(cmd, "--help")
        assert r.returncode == 0 and "usage: proxcl" in r.stdout, cmd
    for cmd in ("kernels", "model", "memory"):   # and no argparse escape left in a description
        r = proxcl("bench", cmd, "--help")
        assert r.returncode == 0 and "%%" not in r.stdout, cmd


@pytest.mark.parametrize("args, needle", [
    (("train", "--data", "nosuch"), "unknown data set"),
    (("train", "--data", DATA, "--model", "nosuchnet", "--epochs", 1), "nosuchnet"),
    (("train", "--data", DATA, "--optimizer", "adam"), "proximal optimizer"),
    (("train", "--data", DATA, "--switch-density", "2"), "density"),
    (("train", "--data", DATA, "--device", "no-such-device"), "no-such-device"),
    (("train", "--data", DATA, "--log", "/proc/no/log.jsonl"), "cannot write"),
    (("train", "--data", DATA, "--log", "{out}"), "same file"),
    (("train", "--data", DATA, "--gamma", "nan"), "gamma"),
    (("train", "--data", DATA, "--momentum", "1.5"), "momentum"),
    (("train", "--data", DATA, "--method", "dense", "--optimizer", "rda"), "sgd or adam"),
    (("train", "--data", "synthetic:99999999999"), "at most"),
    (("report", "/nonexistent/m.proxcl", "--log", "/tmp", "--out", "/tmp/r"), "nonexistent"),
    (("info", "/nonexistent/model.proxcl"), "nonexistent"),
    (("eval", "/nonexistent/model.proxcl", "--data", DATA), "nonexistent"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    out = tmp_path / "x.proxcl"
    args = [str(out) if a == "{out}" else a for a in args]
    r = proxcl(*args, "--out", out) if args[0] == "train" else proxcl(*args)
    _one_line_error(r, needle)
    assert not (tmp_path / "x.proxcl").exists()


def test_bad_logs_and_metadata_exit_2(trained, tmp_path):
    from proxcl.modelfile import read_model_file, write_model_file
    _, out, log, _ = trained
    for i, text in enumerate(['[1, 2]', '{"phase": "sparse", "epoch": 1, "loss": "x", "density": 0.5}',
                              '{"phase": "sparse", "epoch": 1, "loss": 1.0, "density": 0.5, "layers": [{}]}']):
        bad = tmp_path / f"log{i}.jsonl"
        bad.write_text(text + "\n")
        _one_line_error(proxcl("report", out, "--log", bad, "--out", tmp_path / f"r{i}"), "record 1")
        assert not (tmp_path / f"r{i}").exists() or not os.listdir(tmp_path / f"r{i}")
    _one_line_error(proxcl("report", out, "--log", tmp_path, "--out", tmp_path / "r"))
    spec, tensors, meta = read_model_file(str(out))
    np.save(tmp_path / "img.npy", np.zeros((28, 28), np.uint8))
    for j, norm in enumerate([{"mean": "a", "std": 1}, [1, 2], {"mean": 0.0, "std": 0.0}]):
        f = tmp_path / f"norm{j}.proxcl"
        write_model_file(str(f), spec, tensors, {**meta, "normalisation": norm})
        _one_line_error(proxcl("predict", f, tmp_path / "img.npy"), "normalisation")
    f = tmp_path / "names.proxcl"
    write_model_file(str(f), spec, tensors, {**meta, "class_names": 5})
    assert proxcl("predict", f, tmp_path / "img.npy").returncode == 0


def test_model_with_fewer_classes_than_the_data_exit_2(tmp_path):
    from proxcl import models
    from proxcl.modelfile import save
    spec = {"input_shape": [1, 28, 28], "num_classes": 5,
            "layers": [{"type": "flatten"}, {"type": "linear", "name": "fc", "out": 5}]}
    save(models.build(spec), str(tmp_path / "m5.proxcl"))
    _one_line_error(proxcl("eval", tmp_path / "m5.proxcl", "--data", DATA), "classes")
    spec_file = tmp_path / "s5.json"
    spec_file.write_text(json.dumps(spec))
    _one_line_error(proxcl("train", "--model", spec_file, "--data", DATA, "--out", tmp_path / "x.proxcl"),
                    "classes")


def test_corrupt_model_file_exit_2(trained, tmp_path):
    _, out, log, _ = trained
    bad = tmp_path / "bad.proxcl"
    bad.write_bytes(out.read_bytes()[:100])
    for args in (("info", bad), ("eval", bad, "--data", DATA), ("predict", bad, bad),
                 ("report", bad, "--log", log, "--out", tmp_path / "r")):
        _one_line_error(proxcl(*args))


def test_resume_through_the_cli(tmp_path):
    """An interrupted run resumed by the command ends with the weights of an uninterrupted one
    and a log with every epoch once."""
    from proxcl.data import load_dataset
    from proxcl.modelfile import load
    from proxcl.training import TrainConfig, train

    args = ["train", "--model", "lenet300", "--data", DATA, "--epochs", 2, "--debias-epochs", 1,
            "--batch-size", 64, "--no-progress", "--json"]
    a = proxcl(*args, "--out", tmp_path / "a.proxcl")
    assert a.returncode == 0, a.stderr

    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    ckpt = tmp_path / "b.ckpt"
    cfg = TrainConfig(model="lenet300", data=DATA, epochs=2, debias_epochs=1, batch_size=64,
                      checkpoint=str(ckpt), log=str(tmp_path / "b.jsonl"), progress=False)
    with pytest.raises(Stop):
        train(cfg, dataset=load_dataset(DATA), on_epoch_end=stop)
    b = proxcl(*args, "--out", tmp_path / "b.proxcl", "--resume", ckpt, "--checkpoint", ckpt,
               "--log", tmp_path / "b.jsonl")
    assert b.returncode == 0, b.stderr
    records = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in records] == [("sparse", 1), ("sparse", 2), ("debias", 1)]
    sa = load(str(tmp_path / "a.proxcl")).state_dict()
    sb = load(str(tmp_path / "b.proxcl")).state_dict()
    for k in sa:
        assert np.array_equal(sa[k], sb[k]), k
