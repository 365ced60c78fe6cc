"""Files through the command line: a file of the wrong kind is named for what it looks like, a
weight is stored as CSR only when that is smaller, places that cannot be written are said in one
line, mismatched data sets and logs are warned about, and output cut short by its reader ends
quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

DATA = "synthetic:400"


def proxcl(*args, **kw):
    return subprocess.run([sys.executable, "-m", "proxcl", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)


def error_line(r) -> str:
    """The one line a failed command wrote, checked to be its only output."""
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("proxcl: error: "), r.stderr
    return r.stderr[len("proxcl: error: "):-1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small run whose last layer is not penalised: fc1 ends sparse enough for CSR, fc3 dense."""
    d = tmp_path_factory.mktemp("files")
    r = proxcl("train", "--data", DATA, "--epochs", 2, "--debias-epochs", 1, "--batch-size", 64, "--l1", 1e-2,
               "--l1-factor", "fc3=0", "--out", d / "m.proxcl", "--log", d / "run.jsonl", "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    return d, d / "m.proxcl", d / "run.jsonl", json.loads(r.stdout)


@pytest.fixture(scope="module")
def wrong_files(tmp_path_factory):
    import torch
    from PIL import Image
    d = tmp_path_factory.mktemp("wrong")
    (d / "notes.txt").write_text("my notes\nsecond line\n")
    torch.save({"w": torch.zeros(3)}, d / "model.pt")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(d / "image.png")
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(d / "photo.jpg")
    np.save(d / "array.npy", np.zeros((28, 28), np.uint8))
    np.savez(d / "arrays.npz", a=np.zeros(3))
    (d / "spec.json").write_text('{"layers": []}')
    (d / "folder").mkdir()
    return d


# ---- a file of the wrong kind -------------------------------------------------------------------

@pytest.mark.parametrize("name, what", [
    ("notes.txt", "text"),
    ("model.pt", "a PyTorch zip archive (torch.save)"),
    ("image.png", "a PNG image"),
    ("photo.jpg", "a JPEG image"),
    ("array.npy", "a numpy .npy array"),
    ("arrays.npz", "a numpy .npz archive"),
    ("spec.json", "JSON text"),
])
def test_info_names_what_a_wrong_file_looks_like(wrong_files, name, what):
    path = wrong_files / name
    assert error_line(proxcl("info", path)) == f"{path}: not a proxcl model file: it looks like {what}"


def test_a_cut_short_zip_archive_is_named_so(wrong_files, tmp_path):
    cut = tmp_path / "cut.pt"
    blob = (wrong_files / "model.pt").read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    assert error_line(proxcl("info", cut)) == \
        f"{cut}: not a proxcl model file: it looks like a damaged or cut-short zip archive"


def test_model_and_images_swapped_or_wrong(run, wrong_files):
    _, model, _, _ = run
    png, folder = wrong_files / "image.png", wrong_files / "folder"
    assert error_line(proxcl("predict", png, model)) == f"{png}: not a proxcl model file: it looks like a PNG image"
    assert error_line(proxcl("predict", model, folder)) == f"{folder}: is a directory, not an image file"
    assert error_line(proxcl("info", folder)) == f"{folder}: is a directory, not a model file"
    notes = wrong_files / "notes.txt"
    assert error_line(proxcl("predict", model, notes)) == \
        f"{notes}: not a PNG, .npy or IDX image file: it looks like text"
    assert error_line(proxcl("predict", model, model)) == \
        f"{model}: not a PNG, .npy or IDX image file: it looks like a proxcl model file"
    ckpt = model.parent / "m.proxcl.ckpt"
    assert error_line(proxcl("info", ckpt)) == f"{ckpt}: not a proxcl model file: it looks like a proxcl " \
                                               f"training checkpoint"


@pytest.mark.parametrize("name, line", [
    ("notes.txt", "{p}: not a proxcl checkpoint: it looks like text"),
    ("model.pt", "{p}: not a proxcl checkpoint: it looks like a PyTorch zip archive (torch.save)"),
    ("arrays.npz", "{p}: not a proxcl checkpoint: it looks like a numpy .npz archive"),
    ("folder", "checkpoint {p} is a directory, not a checkpoint file"),
    ("absent.ckpt", "checkpoint {p}: no such file"),
])
def test_resume_from_a_wrong_file(wrong_files, tmp_path, name, line):
    p = wrong_files / name
    r = proxcl("train", "--data", DATA, "--resume", p, "--out", tmp_path / "m.proxcl")
    assert error_line(r) == line.format(p=p)
    assert "allow_pickle" not in r.stderr


def test_resume_from_a_model_file(run, tmp_path):
    _, model, _, _ = run
    assert error_line(proxcl("train", "--data", DATA, "--resume", model, "--out", tmp_path / "m.proxcl")) == \
        f"{model}: not a proxcl checkpoint: it looks like a proxcl model file"


# ---- CSR only where it is smaller ---------------------------------------------------------------

def _csr_bytes(rows, cols, nnz):           # int32 row pointers, uint16 indices, float32 values
    return 4 * (rows + 1) + (2 + 4) * nnz


def test_each_weight_is_stored_in_its_smaller_form(run):
    _, model, _, summary = run
    info = json.loads(proxcl("info", model, "--json").stdout)
    layers = {layer["name"]: layer for layer in info["layers"]}
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        layer = layers[name]
        rows, cols = layer["shape"][0], int(np.prod(layer["shape"][1:]))
        csr, dense = _csr_bytes(rows, cols, layer["nnz"]), 4 * rows * cols
        assert layer["bytes"] == min(csr, dense), layer
        assert layer["kind"] == ("csr" if csr < dense else "dense"), layer
    assert layers["fc1.weight"]["kind"] == "csr" and layers["fc3.weight"]["kind"] == "dense"
    # the file reads back into the model that was trained
    r = proxcl("eval", model, "--data", DATA, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-12)


def test_the_choice_at_the_exact_byte_boundary(dev, tmp_path):
    """fc 10x100: CSR takes 44 + 6 nnz bytes, dense 4000: CSR up to 659 entries, dense from 660
    (equal sizes would be 659.33 entries)."""
    from proxcl import models
    from proxcl.modelfile import file_report, save
    spec = {"input_shape": [100], "num_classes": 10, "layers": [{"type": "linear", "name": "fc", "out": 10}]}
    for nnz, kind in ((659, "csr"), (660, "dense")):
        model = models.build(spec, device=dev, seed=0)
        state = model.state_dict()
        w = np.zeros(1000, np.float32)
        w[np.random.default_rng(nnz).choice(1000, nnz, replace=False)] = 1.5
        state["fc.weight"] = w.reshape(10, 100)
        model.load_state_dict(state)
        model.to_sparse(None)
        path = tmp_path / f"{nnz}.proxcl"
        save(model, str(path))
        layer = next(l for l in file_report(str(path))["layers"] if l["name"] == "fc.weight")
        assert (layer["kind"], layer["nnz"], layer["bytes"]) == (kind, nnz, min(44 + 6 * nnz, 4000))
        assert json.loads(proxcl("info", path, "--json").stdout)["layers"][0]["kind"] == kind


def test_a_file_larger_than_dense_says_larger_and_still_loads(dev, tmp_path):
    """A file of the earlier writer, every weight CSR at full density, still loads; info says how
    much larger than dense it is instead of '0.7x smaller'."""
    from proxcl import models
    from proxcl.modelfile import load, write_model_file
    from proxcl.ops import HostCSR
    model = models.build("lenet300", device=dev, seed=0)
    tensors = {}
    for name, v in model.state_dict().items():
        if name.endswith("weight"):
            rows, cols = v.shape
            tensors[name] = HostCSR(np.arange(0, rows * cols + 1, cols, dtype=np.int32),
                                    np.tile(np.arange(cols, dtype=np.int32), rows), v.ravel(), (rows, cols))
        else:
            tensors[name] = v
    path = tmp_path / "old.proxcl"
    write_model_file(str(path), model.spec, tensors)
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert np.array_equal(load(str(path), device=dev).forward(x), model.forward(x))
    r = proxcl("info", path)
    assert r.returncode == 0
    size = path.stat().st_size
    assert f"compression  {size / 1_066_440:.1f}x larger than dense float32" in r.stdout
    assert size / 1_066_440 > 1.4


# ---- places that cannot be written, logs that cannot be read ------------------------------------

def test_unwritable_places_and_missing_logs_are_one_line(run, tmp_path):
    _, model, log, _ = run
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "report"
    assert error_line(proxcl("report", model, "--log", log, "--out", out)) == \
        f"--out {out}: cannot write in {out} ({blocker} is a file, not a folder)"
    assert error_line(proxcl("demo", "--data", DATA, "--out-dir", out)) == \
        f"--out-dir {out}: cannot write in {out} ({blocker} is a file, not a folder)"
    assert error_line(proxcl("report", model, "--log", tmp_path / "nosuch.jsonl", "--out", tmp_path / "r")) == \
        f"{tmp_path / 'nosuch.jsonl'}: no such file"
    assert error_line(proxcl("report", model, "--log", tmp_path, "--out", tmp_path / "r")) == \
        f"{tmp_path}: is a directory, not a training log"
    assert not (tmp_path / "r").exists()


def test_outputs_that_are_not_regular_files_are_refused(run, tmp_path):
    """A FIFO (or a device) given as an output is refused, not replaced by a file; an empty name
    is refused; a symbolic link is written through, the link kept."""
    _, model, _, _ = run
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused = f"--out {fifo} is not a regular file (a device, FIFO or socket); proxcl writes only files"
    assert error_line(proxcl("train", "--data", DATA, "--epochs", 1, "--out", fifo)) == refused
    assert error_line(proxcl("import", model, "--out", fifo)) == refused
    assert error_line(proxcl("train", "--data", DATA, "--epochs", 1, "--out", "")) == "--out is empty: name a file"
    assert fifo.is_fifo() and sorted(os.listdir(tmp_path)) == ["fifo"]
    target, link = tmp_path / "target.pt", tmp_path / "link.pt"
    link.symlink_to(target.name)
    assert proxcl("import", model, "--out", link).returncode == 0
    assert link.is_symlink() and target.stat().st_size > 0


def test_the_check_before_a_run_sees_what_the_write_will_meet(tmp_path):
    """check_writable follows a symbolic link as atomic_write does, and names a file or a broken
    link where a folder is needed, so a run is refused before it trains, not after."""
    from proxcl.errors import InputError
    from proxcl.fileio import atomic_write_bytes, check_writable
    (tmp_path / "afile").write_text("x")
    (tmp_path / "link.pt").symlink_to("afile/x.pt")
    (tmp_path / "dl").symlink_to("nowhere")
    cases = {"link.pt": f"--out {tmp_path / 'link.pt'}: cannot write in {tmp_path / 'afile'} "
                        f"({tmp_path / 'afile'} is a file, not a folder)",
             "dl/m.proxcl": f"--out {tmp_path / 'dl/m.proxcl'}: cannot write in {tmp_path / 'dl'} "
                            f"({tmp_path / 'dl'} is a broken symbolic link, not a folder)"}
    for name, line in cases.items():
        with pytest.raises(InputError) as e:
            check_writable(tmp_path / name, "--out")
        assert str(e.value) == line
        with pytest.raises(OSError, match=r"^cannot write .*a file or a broken link stands where a folder is needed"):
            atomic_write_bytes(tmp_path / name, b"abc")
    good = tmp_path / "good.pt"
    (tmp_path / "to-good.pt").symlink_to(good.name)
    check_writable(tmp_path / "to-good.pt", "--out")
    atomic_write_bytes(tmp_path / "to-good.pt", b"abc")
    assert good.read_bytes() == b"abc" and (tmp_path / "to-good.pt").is_symlink()


def test_import_checks_both_outputs_before_writing_either(run, tmp_path):
    _, model, _, _ = run
    same = tmp_path / "s.pt"
    assert error_line(proxcl("import", model, "--out", same, "--spec-out", same)) == \
        f"--out and --spec-out name the same file: {same}"
    (tmp_path / "folder").mkdir()
    assert error_line(proxcl("import", model, "--out", same, "--spec-out", tmp_path / "folder")) == \
        f"--spec-out {tmp_path / 'folder'} is a folder, not a file name"
    assert error_line(proxcl("export", tmp_path / "absent.pt", "--spec", "lenet300", "--out", tmp_path / "folder")) \
        == f"--out {tmp_path / 'folder'} is a folder, not a file name"
    assert sorted(os.listdir(tmp_path)) == ["folder"]


def test_a_run_refused_at_the_start_leaves_no_folder(tmp_path):
    assert proxcl("train", "--data", "nope", "--out", tmp_path / "new" / "m.proxcl").returncode == 2
    assert proxcl("demo", "--data", "nope", "--out-dir", tmp_path / "demo").returncode == 2
    assert os.listdir(tmp_path) == []


def test_train_json_is_alone_on_stdout(tmp_path):
    r = proxcl("train", "--data", DATA, "--epochs", 1, "--debias-epochs", 1, "--out", tmp_path / "m.proxcl",
               "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["out"] == str(tmp_path / "m.proxcl")
    assert "sparse   1/1" in r.stderr and "debias   1/1" in r.stderr


def test_a_diverging_run_stops_in_the_phase_that_diverged(tmp_path):
    """Weights that stay finite but overflow the forward pass: caught at the end of the epoch by
    the test loss, the hint naming that phase's learning rate; no file left.  (100 images: one
    step per epoch, whose loss is taken before the update.)"""
    r = proxcl("train", "--data", "synthetic:100", "--epochs", 1, "--debias-epochs", 1, "--lr", 1e30,
               "--out", tmp_path / "m.proxcl", "--log", tmp_path / "log.jsonl", "--quiet")
    assert error_line(r) == "the test loss became nan after phase sparse, epoch 1; try a smaller learning rate (--lr)"
    assert not (tmp_path / "m.proxcl").exists() and not (tmp_path / "m.proxcl.ckpt").exists()


def test_info_refuses_a_file_whose_model_cannot_be_built(run, tmp_path):
    """A file that reads (checksum and all) but whose spec does not match its tensors: the table,
    then one error line and status 2."""
    from proxcl.modelfile import read_model_file, write_model_file
    _, model, _, _ = run
    spec, tensors, meta = read_model_file(model)
    spec["layers"][1]["out"] = 200
    bad = tmp_path / "mismatch.proxcl"
    write_model_file(bad, spec, tensors, meta)
    r = proxcl("info", bad)
    assert r.returncode == 2 and "fc1.weight" in r.stdout
    assert r.stderr.startswith(f"proxcl: error: {bad}: its model cannot be built: ") and r.stderr.count("\n") == 1
    assert proxcl("info", model).returncode == 0


def test_images_out_of_range_are_refused_or_warned_about(run, tmp_path):
    """predict: NaN or pixels outside 0..255 are refused; pixels all in 0..1 are predicted with a
    warning; a 16-bit PNG is scaled to 0..255; a file is read by what it holds, not its name."""
    from PIL import Image
    _, model, _, _ = run
    img = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)
    np.save(tmp_path / "nan.npy", np.full((28, 28), np.nan, np.float32))
    np.save(tmp_path / "neg.npy", np.full((28, 28), -3.0, np.float32))
    np.save(tmp_path / "scaled.npy", img.astype(np.float32) / 255)
    assert error_line(proxcl("predict", model, tmp_path / "nan.npy")) == \
        f"{tmp_path / 'nan.npy'}: the images hold NaN or infinite values"
    assert error_line(proxcl("predict", model, tmp_path / "neg.npy")) == \
        f"{tmp_path / 'neg.npy'}: pixel values from -3 to -3; raw pixels 0..255 are expected (proxcl normalises " \
        "them as it did in training)"
    r = proxcl("predict", model, tmp_path / "scaled.npy")
    assert r.returncode == 0 and r.stdout.startswith(f"{tmp_path / 'scaled.npy'}[0]: ")
    assert r.stderr.startswith(f"proxcl: warning: {tmp_path / 'scaled.npy'}: every pixel is between 0 and 1")
    Image.fromarray(img).save(tmp_path / "eight.png")
    Image.fromarray(img.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    (tmp_path / "png-named.npy").write_bytes((tmp_path / "eight.png").read_bytes())
    lines = [proxcl("predict", model, tmp_path / f, "--json").stdout
             for f in ("eight.png", "sixteen.png", "png-named.npy")]
    probs = [json.loads(line)["probability"] for line in lines]
    assert probs[0] == probs[2] and abs(probs[0] - probs[1]) < 1e-5, probs
    assert error_line(proxcl("predict", model, "/dev/null")) == "/dev/null: not a regular file"


# ---- mismatches ---------------------------------------------------------------------------------

def test_eval_on_another_data_set_warns_and_evaluates(run):
    _, model, _, _ = run
    other = proxcl("eval", model, "--data", "fashion-mnist", "--json")
    assert other.returncode == 0
    assert other.stderr == f"proxcl: warning: {model} was trained on {DATA}, evaluating it on fashion-mnist\n"
    assert json.loads(other.stdout)["n"] == 10_000
    same = proxcl("eval", model, "--data", "synthetic:2000", "--json")
    assert same.returncode == 0 and same.stderr == ""


def test_report_with_the_log_of_another_run_warns(run, tmp_path):
    d, model, log, _ = run
    other_log = tmp_path / "other.jsonl"
    r = proxcl("train", "--data", DATA, "--epochs", 1, "--debias-epochs", 0, "--out", tmp_path / "o.proxcl",
               "--log", other_log, "--quiet")
    assert r.returncode == 0, r.stderr
    last = json.loads(other_log.read_text().splitlines()[-1])
    fc1 = next(layer["nnz"] for layer in last["layers"] if layer["name"] == "fc1.weight")
    info = json.loads(proxcl("info", model, "--json").stdout)
    mine = next(layer["nnz"] for layer in info["layers"] if layer["name"] == "fc1.weight")
    assert fc1 != mine
    warned = proxcl("report", model, "--log", other_log, "--out", tmp_path / "r1")
    assert warned.returncode == 0
    assert warned.stderr == (f"proxcl: warning: {other_log} does not look like the log of {model}: the log ends "
                             f"with {fc1:,} nonzero weights in fc1.weight, the model has {mine:,}\n")
    assert len(warned.stdout.splitlines()) == 7
    fine = proxcl("report", model, "--log", log, "--out", tmp_path / "r2")
    assert fine.returncode == 0 and fine.stderr == ""


# ---- output cut short ---------------------------------------------------------------------------

def test_predict_into_head_ends_quietly(run, tmp_path):
    """5000 result lines are more than a pipe holds, so predict is still writing when head
    exits: no 'Broken pipe' error, no traceback."""
    from proxcl.data import write_idx
    _, model, _, _ = run
    images = tmp_path / "many-idx3-ubyte"
    write_idx(images, np.random.default_rng(0).integers(0, 256, (5000, 28, 28), dtype=np.uint8))
    cmd = f"{sys.executable} -m proxcl predict {model} {images} | head -1; echo \"status ${{PIPESTATUS[0]}}\" >&2"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    assert r.stdout.startswith(f"{images}[0]: ") and r.stdout.count("\n") == 1
    assert r.stderr == "status 1\n"
