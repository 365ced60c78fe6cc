"""The C runtime (runtime/: libproxcl and proxcl-run), built with -fsanitize=address,undefined and
driven through its command and a small program on its library, against the Python runtime as the
reference: logits, one fine-tuning step, every kind of damaged model file, the launches it makes,
the library's error contract, and the 64-bit ARM cross build.  In CI (CI=true) a missing compiler
or package fails these tests instead of skipping them."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import rel_err
from proxcl import modelfile as mf
from proxcl.bench.model import sparsify_state
from proxcl.data import normalise, write_idx
from proxcl.ops import HostCSR
from proxcl.runtime import ceil_to
from test_modelfile import BAD, _mutated, _raw_file, craft, csr_parts, dense_parts

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "runtime"
NORM = {"mean": 72.94, "std": 90.02}


def _build(*make_args: str) -> None:
    """make in runtime/, one process at a time (pytest-xdist's workers would otherwise rebuild the
    same files at once after a change to the sources)."""
    import fcntl
    RUNTIME.joinpath("build").mkdir(exist_ok=True)
    with open(RUNTIME / "build" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        r = subprocess.run(["make", "-C", str(RUNTIME), f"PYTHON={sys.executable}", *make_args],
                           capture_output=True, text=True)
    if r.returncode:
        msg = f"the C runtime did not build (make {' '.join(make_args)}):\n{r.stdout[-2000:]}{r.stderr[-3000:]}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg + "\n(run `make -C runtime deps` as root to install the packages)")


@pytest.fixture(scope="session")
def crt():
    """The sanitizer build's folder (proxcl-run, api-check)."""
    _build("asan")
    return RUNTIME / "build" / "asan"


# Leaks are reported (exit status unchanged) and judged here: a leak counts when its allocation
# stack passes through the library's own code.  The drivers keep memory until the process ends,
# some of it allocated by an ICD the loader has unloaded again ("<unknown module>", which no
# suppression can name); lsan.supp removes the named ones from the report.  The slow unwinder,
# which would name more of them, deadlocks on rusticl's threads.
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
           "LSAN_OPTIONS": f"suppressions={RUNTIME / 'tests' / 'lsan.supp'}:print_suppressions=0:exitcode=0"}
LEAK_REPORT = re.compile(r"=+\n==\d+==ERROR: LeakSanitizer: detected memory leaks\n.*", re.S)
OWN_FRAME = re.compile(r" in (proxcl_|px_)\w*|/runtime/(src|include|tools)/")


def sanitizer_findings(stderr: str) -> list[str]:
    """The sanitizer reports in a run's stderr that are proxcl's: every AddressSanitizer error
    and UBSan finding, and each leak whose stack has a frame of the library or proxcl-run."""
    found = []
    for block in re.split(r"\n\s*\n", stderr):
        if re.search(r"(Direct|Indirect) leak of", block):
            if OWN_FRAME.search(block):
                found.append(block)
        elif ("ERROR: AddressSanitizer" in block or "runtime error:" in block or "UndefinedBehaviorSanitizer" in block
              or ("LeakSanitizer" in block and "detected memory leaks" not in block)):
            found.append(block)
    return found


def run(crt, *args, env=None, check=True):
    e = {**os.environ, **SAN_ENV, **(env or {})}
    r = subprocess.run([str(crt / "proxcl-run"), *map(str, args)], capture_output=True, text=True, env=e)
    assert not sanitizer_findings(r.stderr), r.stderr
    r.stderr = LEAK_REPORT.sub("", r.stderr)     # the drivers' leaks, judged above: not proxcl's output
    if check:
        assert r.returncode == 0, r.stderr
    return r


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("proxcl-run: error: ") and len(lines[0]) > 25, r.stderr
    for n in needles:
        assert re.search(n, lines[0]), (n, lines[0])


# ---- models and inputs --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(dev, tmp_path_factory):
    """lenet300 and lenet5, dense and CSR (5 % of the weights kept), float32 and float16 files;
    raw uint8 images as .npy (1 and 256) and as IDX."""
    from proxcl import models
    d = tmp_path_factory.mktemp("crt")
    rng = np.random.default_rng(14)
    out = {}
    for name in ("lenet300", "lenet5"):
        for kind in ("dense", "csr"):
            m = models.build(name, device=dev, seed=3)
            m.load_state_dict(sparsify_state(m, m.state_dict(), 1.0 if kind == "dense" else 0.05, rng))
            if kind == "csr":
                m.to_sparse(None)
            for half in (False, True):
                p = d / f"{name}-{kind}-{'f16' if half else 'f32'}.proxcl"
                mf.save(m, p, half=half, metadata={"normalisation": NORM, "class_names": list("abcdefghij")})
                out[(name, kind, half)] = p
    spec = {"input_shape": [1, 28, 28], "layers": [       # dropout and a ReLU of its own
        {"type": "flatten"}, {"type": "linear", "name": "fc1", "out": 64}, {"type": "dropout", "p": 0.5},
        {"type": "relu"}, {"type": "linear", "name": "fc2", "out": 10}]}
    m = models.build(spec, device=dev, seed=4)
    m.load_state_dict(sparsify_state(m, m.state_dict(), 0.3, rng))
    out[("dropout", "dense", False)] = p = d / "dropout.proxcl"
    mf.save(m, p, metadata={"normalisation": NORM})
    x = rng.integers(0, 256, (256, 28, 28), dtype=np.uint8)
    np.save(d / "x1.npy", x[:1])
    np.save(d / "x256.npy", x)
    write_idx(d / "x256-idx3-ubyte", x)
    out["x"], out["dir"] = x, d
    return out


# ---- inference ------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("half", [False, True], ids=["f32", "f16"])
@pytest.mark.parametrize("kind", ["dense", "csr"])
@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_logits_equal_the_python_runtime(crt, dev, files, name, kind, half, batch):
    path = files[(name, kind, half)]
    x = files["x"][:batch]
    r = run(crt, "predict", path, files["dir"] / f"x{batch}.npy", "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    got = np.array([row["logits"] for row in rows], np.float64)
    ref = mf.load(path, device=dev).forward(normalise(x, NORM["mean"], NORM["std"]))
    assert got.shape == (batch, 10)
    assert rel_err(got, ref) <= 1e-5
    probs = np.exp(ref - ref.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert [row["class"] for row in rows] == list(probs.argmax(1))
    assert [row["label"] for row in rows] == [("abcdefghij")[k] for k in probs.argmax(1)]
    np.testing.assert_allclose([row["probability"] for row in rows], probs.max(1), rtol=1e-5)


def test_predict_prints_what_proxcl_predict_prints(crt, files, capsys):
    """The same lines as the Python command, from an IDX file, in batches of 256 and 100."""
    from proxcl.cli import main
    path, idx = files[("lenet5", "csr", False)], files["dir"] / "x256-idx3-ubyte"
    assert main(["predict", str(path), str(idx)]) == 0
    want = capsys.readouterr().out
    assert run(crt, "predict", path, idx).stdout == want
    assert run(crt, "predict", path, idx, "--batch-size", 100).stdout == want


# ---- fine-tuning ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(files):
    """A training split (300 images) and a test split (200) as raw IDX files."""
    rng = np.random.default_rng(5)
    d = files["dir"] / "data"
    d.mkdir()
    for split, n in (("train", 300), ("t10k", 200)):
        write_idx(d / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(d / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return d


def _python_debias_steps(dev, path, data_dir, steps, batch, optimizer):
    """The Python debiasing phase's first steps on the first images in order (no shuffling)."""
    from proxcl.data import read_idx
    from proxcl.optim import make_optimizer
    from proxcl.schedules import make_lr_schedule
    x = normalise(read_idx(data_dir / "train-images-idx3-ubyte"), NORM["mean"], NORM["std"])
    y = read_idx(data_dir / "train-labels-idx1-ubyte").astype(np.int64)
    model = mf.load(path, device=dev)
    model.to_sparse(None)                      # what debiasing does on entering (training._Run._enter)
    model.set_seed(100_000)                    # the dropout stream of debiasing's first epoch, seed 0
    opt = make_optimizer(optimizer, lr=0.005, momentum=0.9, device=dev)
    sched = make_lr_schedule("cosine", 0.005, 1)
    per_epoch = -(-len(y) // batch)
    for s in range(steps):
        xb, yb = x[s * batch:(s + 1) * batch], y[s * batch:(s + 1) * batch]
        model.train_batch(*model.prepare_batch(xb, yb))
        opt.step(model.params, lr=sched.lr_at(0, s, per_epoch))
    shapes = {p.name: p.shape for p in model.params}       # as proxcl.save writes it
    return {k: mf.smaller_form(t, shapes[k]) for k, t in model.sparse_state().items()}


@pytest.mark.parametrize("name, kind, optimizer, steps", [
    ("lenet300", "csr", "sgd", 1), ("lenet5", "csr", "sgd", 1), ("lenet300", "dense", "sgd", 1),
    ("lenet5", "dense", "sgd", 1), ("lenet5", "csr", "adam", 2), ("lenet300", "csr", "sgd", 3),
    ("dropout", "dense", "sgd", 2)])
def test_finetune_steps_equal_the_python_debias_steps(crt, dev, files, data_dir, tmp_path, name, kind, optimizer,
                                                      steps):
    path, out = files[(name, kind, False)], tmp_path / "new.proxcl"
    run(crt, "finetune", path, "--data", data_dir, "--out", out, "--max-steps", steps, "--no-shuffle",
        "--batch-size", 128, "--optimizer", optimizer, "--quiet")
    ref = _python_debias_steps(dev, path, data_dir, steps, 128, optimizer)
    _, got, meta = mf.read_model_file(out)
    assert list(got) == list(ref)
    for k, v in ref.items():
        g = got[k]
        assert isinstance(g, HostCSR) == isinstance(v, HostCSR)
        if isinstance(v, HostCSR):                # the support is the one Python froze
            np.testing.assert_array_equal(g.indptr, v.indptr)
            np.testing.assert_array_equal(g.indices, v.indices)
            g, v = g.data, v.data
        assert rel_err(g, v) <= 1e-5, k
    assert meta["finetune"]["steps"] == steps and meta["finetune"]["optimizer"] == optimizer
    assert meta["normalisation"] == NORM


def test_finetune_epochs_write_a_file_the_python_tools_read(crt, dev, files, data_dir, tmp_path):
    """Two shuffled epochs of float16 LeNet-5: same supports, test accuracy as Python evaluates it."""
    from proxcl.data import from_arrays, read_idx
    from proxcl.training import evaluate
    path, out = files[("lenet5", "csr", True)], tmp_path / "new.proxcl"
    r = run(crt, "finetune", path, "--data", data_dir, "--out", out, "--epochs", 2, "--batch-size", 64,
            "--seed", 7)
    assert re.search(r"finetune 2/2 .* test 0\.\d{4}", r.stderr) and "wrote" in r.stderr
    before, after = mf.file_report(path), mf.file_report(out)
    assert [(l["name"], l["kind"], l["nnz"]) for l in before["layers"]] == \
           [(l["name"], l["kind"], l["nnz"]) for l in after["layers"]]
    spec, old, _ = mf.read_model_file(path)
    _, new, meta = mf.read_model_file(out)
    assert any(not np.array_equal(old[k].data, new[k].data) for k in old if k.endswith("weight"))
    assert json.loads(out.read_bytes()[8:8 + struct.unpack("<Q", out.read_bytes()[:8])[0]])[
        "conv1.weight.data"]["dtype"] == "F16"
    assert meta["finetune"]["epochs"] == 2 and meta["finetune"]["steps"] == 10
    images = {s: read_idx(data_dir / f"{s}-images-idx3-ubyte") for s in ("train", "t10k")}
    labels = {s: read_idx(data_dir / f"{s}-labels-idx1-ubyte") for s in ("train", "t10k")}
    ds = from_arrays("d", images["train"], labels["train"], images["t10k"], labels["t10k"], list("abcdefghij"),
                     normalisation=NORM)
    assert evaluate(mf.load(out, device=dev), ds)["accuracy"] == pytest.approx(meta["test_accuracy"], abs=1e-9)


def test_finetune_bad_input(crt, files, data_dir, tmp_path):
    path = files[("lenet5", "csr", False)]
    gz = tmp_path / "gz"
    gz.mkdir()
    (gz / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08")
    one_line_error(run(crt, "finetune", path, "--data", gz, "--out", tmp_path / "o", check=False),
                   "compressed: decompress it")
    one_line_error(run(crt, "finetune", path, "--data", tmp_path / "none", "--out", tmp_path / "o", check=False),
                   "not a folder")
    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    write_idx(bad / "train-labels-idx1-ubyte", np.full(300, 10, np.uint8))
    one_line_error(run(crt, "finetune", path, "--data", bad, "--out", tmp_path / "o", check=False),
                   r"labels must lie in \[0, 9\]")
    write_idx(bad / "train-labels-idx1-ubyte", np.zeros(299, np.uint8))
    one_line_error(run(crt, "finetune", path, "--data", bad, "--out", tmp_path / "o", check=False),
                   "299 labels for 300 images")
    r = run(crt, "finetune", path, "--data", data_dir, "--out", tmp_path / "o", "--lr", "-1", check=False)
    assert r.returncode == 2 and "--lr" in r.stderr
    assert not (tmp_path / "o").exists()


# ---- damaged model files --------------------------------------------------------------------------

def _damaged(good: bytes) -> dict[str, bytes]:
    """Every kind of damage of tests/test_modelfile.py: its crafted bad files (bad indices, indptr
    not monotone, shapes that disagree, ...), truncations, flipped bits and a huge header length."""
    (n,) = struct.unpack("<Q", good[:8])
    out = {f"crafted: {k}": _mutated(mutate) for k, (mutate, _) in BAD.items()}
    for cut in (0, 5, 8, 9, 8 + n // 2, 8 + n, len(good) // 2 + n // 2, len(good) - 1):
        out[f"truncated at {cut}"] = good[:cut]
    out["one byte more"] = good + b"\0"
    for pos in (8 + n, 8 + n + 13, len(good) - 1, 20):
        b = bytearray(good)
        b[pos] ^= 0x01
        out[f"bit flip at {pos}"] = bytes(b)
    b = bytearray(good)
    b[7] = 0x7F
    out["huge header length"] = bytes(b)
    out["header not UTF-8"] = _raw_file(b"\xff\xfe{}")
    out["header nests deeply"] = _raw_file(b"{" * 5000 + b"}" * 5000)
    out["duplicate key"] = _raw_file(b'{"__metadata__": {"format": "proxcl"}, "__metadata__": {}}')
    return out


def test_every_damaged_file_is_refused(crt, files, tmp_path):
    """`check` (no OpenCL) and `predict` (with the device) refuse each with one line and exit 2,
    with no sanitizer report; the Python reader refuses each too."""
    good = files[("lenet5", "csr", False)].read_bytes()
    cases = _damaged(good)
    needles = {"truncated at 5": "too short", "huge header length": "over the .*-byte limit",
               "bit flip at 20": "no __metadata__", "crafted: wrong checksum": "checksum mismatch",
               "crafted: index out of range": "column index 6 out of range",
               "crafted: indptr decreasing": "indptr decreases at row 1",
               "crafted: shape mismatch": "shape", "truncated at 8": "runs past the end|not a safetensors"}
    for i, (what, blob) in enumerate(cases.items()):
        with pytest.raises(mf.ModelFileError):
            mf.parse_model_bytes(blob, what)
        p = tmp_path / f"bad{i}.proxcl"
        p.write_bytes(blob)
        r = run(crt, "check", p, check=False)
        one_line_error(r, needles.get(what, ""))
        if what in needles:
            one_line_error(run(crt, "predict", p, files["dir"] / "x1.npy", check=False), needles[what])
    ok = run(crt, "check", files[("lenet5", "csr", False)], files[("lenet300", "dense", True)])
    assert ok.stdout.count(": ok\n") == 2


def test_crafted_valid_file_and_unbuildable_spec(crt, tmp_path):
    """The independent writer's file (no alignment, any order) passes `check`; a file whose spec does
    not match its tensors is refused as the Python loader refuses it."""
    d1, a1 = csr_parts("fc.weight", [0, 2, 2, 3], [1, 4, 0], [1.0, -2.0, 0.5], (3, 6))
    d2, a2 = dense_parts("fc.bias", [0.1, 0.2, 0.3])
    spec = {"input_shape": [6], "num_classes": 3, "layers": [{"type": "linear", "name": "fc", "out": 3}]}
    p = tmp_path / "crafted.proxcl"
    p.write_bytes(craft([d1, d2], dict(reversed(list({**a1, **a2}.items()))), spec=spec, pad=False))
    run(crt, "check", p)
    p.write_bytes(craft([d1, d2], {**a1, **a2}, spec={**spec, "layers": [{"type": "linear", "name": "fc", "out": 4}]}))
    with pytest.raises(mf.ModelFileError, match="cannot be built"):
        mf.load(p)
    one_line_error(run(crt, "check", p, check=False), "cannot be built")


def test_random_mutations_get_the_python_readers_verdict(crt, files, tmp_path):
    """Flipped, set, inserted and deleted bytes: the C reader accepts exactly the files Python accepts."""
    good = mf.model_file_bytes({"name": "fuzz"}, {"a.weight": HostCSR(np.array([0, 2, 3]), np.array([1, 4, 2]),
                                                                      np.float32([1, -2, 3]), (2, 6)),
                                                   "a.bias": np.float32([0.5, -0.5])}, {"acc": 0.5})
    rng = np.random.default_rng(9)
    paths, verdicts = [], []
    for i in range(160):
        b = bytearray(good)
        for _ in range(rng.integers(1, 3)):
            pos, kind = int(rng.integers(0, len(b))), rng.integers(0, 4)
            if kind == 0:
                b[pos] ^= int(rng.integers(1, 256))
            elif kind == 1:
                b[pos] = int(rng.choice(list(b'{}[]",: \t0123456789.e-')))
            elif kind == 2:
                b.insert(pos, int(rng.integers(0, 256)))
            else:
                del b[pos:pos + int(rng.integers(1, 8))]
        try:
            mf.parse_model_bytes(bytes(b))
            verdicts.append(True)
        except mf.ModelFileError:
            verdicts.append(False)
        p = tmp_path / f"m{i}"
        p.write_bytes(bytes(b))
        paths.append(p)
    r = run(crt, "check", *paths, check=False)
    accepted = {line.rsplit(":", 1)[0] for line in r.stdout.splitlines()}
    assert [str(p) in accepted for p in paths] == verdicts
    assert r.stderr.count("\n") == verdicts.count(False)


# ---- the launches: the same sequence as the Python runtime -----------------------------------------

def _record(monkeypatch, dev):
    """Every launch of the Python runtime on dev, as proxcl-run's $PROXCL_TRACE writes them."""
    import pyopencl as cl
    import pyopencl.array as cla
    calls, names = [], {}
    kernel, launch = dev.kernel, dev.launch

    def rec_kernel(filename, name, **defines):
        k = kernel(filename, name, **defines)
        opts = " ".join(f"-D{a}={b}" for a, b in sorted(defines.items())) + " -cl-std=CL1.2 -cl-mad-enable"
        names[k] = (name, opts)
        return k

    def arg(a):
        if isinstance(a, (cla.Array, cl.Buffer)):
            return "buf"
        if a is None:
            return None
        if isinstance(a, (float, np.floating)):
            return float(np.float32(a))
        return int(a)

    def rec_launch(k, gsize, lsize, *args, wait_for=None):
        name, opts = names[k]
        calls.append({"kernel": name, "options": opts, "global": [ceil_to(g, l) for g, l in zip(gsize, lsize)],
                      "local": list(lsize), "args": [arg(a) for a in args]})
        return launch(k, gsize, lsize, *args, wait_for=wait_for)

    monkeypatch.setattr(dev, "kernel", rec_kernel)
    monkeypatch.setattr(dev, "launch", rec_launch)
    return calls


def _trace(path):
    out = []
    for line in Path(path).read_text().splitlines():
        t = json.loads(line)
        t["args"] = [float(np.float32(a)) if isinstance(a, float) else a for a in t["args"]]
        out.append(t)
    return out


def _compare_launches(crt, d, files, data_dir, tmp_path, monkeypatch, trained=(("lenet5", "csr"),)) -> list:
    """Kernel, build options, global and local sizes and every scalar argument, launch by launch,
    of proxcl-run against the Python runtime on device d: inference of dense and CSR LeNets (37
    images, and 256 for the dense LeNet-300) (with
    the classes and probabilities they give), and for each (model, kind) of ``trained`` the second
    training step of debiasing.  Returns every launch of the C runs."""
    from proxcl.optim import make_optimizer
    from proxcl.schedules import make_lr_schedule
    traced = []
    # 256 images: the dense LeNet-300's first product is large enough for the CPU form's packed GEMM
    # where the threshold is TIGHT_PACK_MACS
    for key, n in ((("lenet300", "dense", False), 37), (("lenet300", "dense", False), 256),
                   (("lenet5", "dense", False), 37), (("lenet5", "csr", True), 37), (("lenet300", "csr", False), 37)):
        x = normalise(files["x"][:n], NORM["mean"], NORM["std"])
        np.save(tmp_path / "x.npy", files["x"][:n])
        trace = tmp_path / f"{'-'.join(map(str, key))}-{n}.jsonl"
        r = run(crt, "predict", files[key], tmp_path / "x.npy", "--json", env={"PROXCL_TRACE": str(trace)})
        model = mf.load(files[key], device=d)
        with monkeypatch.context() as mp:
            calls = _record(mp, d)
            probs = model.predict_proba(x)
        traced += _trace(trace)
        assert _trace(trace) == calls, key
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        assert [row["class"] for row in rows] == list(probs.argmax(1)), key
        np.testing.assert_allclose([row["probability"] for row in rows], probs.max(1), rtol=1e-5)
    # training: the C run's second step against Python's second step, at the same learning rate
    for name, kind in trained:
        path, trace = files[(name, kind, False)], tmp_path / f"train-{name}-{kind}.jsonl"
        run(crt, "finetune", path, "--data", data_dir, "--out", tmp_path / "o", "--max-steps", 2, "--no-shuffle",
            "--batch-size", 96, "--quiet", env={"PROXCL_TRACE": str(trace)})
        model = mf.load(path, device=d)
        model.to_sparse(None)
        opt, sched = make_optimizer("sgd", lr=0.005, momentum=0.9, device=d), make_lr_schedule("cosine", 0.005, 1)
        xb, yb = normalise(files["x"][:96], NORM["mean"], NORM["std"]), np.arange(96) % 10
        model.train_batch(*model.prepare_batch(xb, yb))
        opt.step(model.params, lr=sched.lr_at(0, 0, 4))           # 300 images in batches of 96: 4 steps
        with monkeypatch.context() as mp:
            calls = _record(mp, d)
            model.train_batch(*model.prepare_batch(xb, yb))
            opt.step(model.params, lr=sched.lr_at(0, 1, 4))
        steps = _trace(trace)                                     # then the evaluation of the test split
        traced += steps
        assert steps[len(calls):2 * len(calls)] == calls, (name, kind)
    return traced


@pytest.mark.parametrize("form", ["cpu", "gpu"])
def test_launches_are_the_python_runtimes(crt, dev, files, data_dir, tmp_path, monkeypatch, form):
    """The launches of inference (the direct sparse convolution, split-K GEMMs) and of a training step."""
    import proxcl
    monkeypatch.setenv("PROXCL_TUNING", form)
    _compare_launches(crt, proxcl.Device(dev.spec), files, data_dir, tmp_path, monkeypatch)


TIGHT_LOOP_MAX = 256      # as tests/conftest.py's TIGHT: every split path at LeNet sizes
TIGHT_PACK_MACS = 1 << 24  # the CPU form packs LeNet-300's first product at batch 256 (60M multiply-adds)


@pytest.fixture(scope="session")
def crt_tight(tmp_path_factory):
    """The sanitizer build of the C runtime with a loop budget of TIGHT_LOOP_MAX in both kernel forms
    (and the CPU form's packed products from TIGHT_PACK_MACS multiply-adds on):
    built from a copy of the package whose tuning table says so (the table the build embeds)."""
    import re as re_
    d = tmp_path_factory.mktemp("crt-tight")
    pkg = d / "proxcl"
    shutil.copytree(ROOT / "src" / "proxcl", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    tuning = pkg / "tuning.py"
    text, count = re_.subn(r'"loop_max": \(\d+, \d+\)', f'"loop_max": ({TIGHT_LOOP_MAX}, {TIGHT_LOOP_MAX})',
                           tuning.read_text())
    assert count == 1, "tuning.py's table has no loop_max entry to change"
    text, count = re_.subn(r'"gemm_pack": \(\([\d_]+,', f'"gemm_pack": (({TIGHT_PACK_MACS},', text)
    assert count == 1, "tuning.py's table has no gemm_pack entry to change"
    tuning.write_text(text)
    _build("asan", f"ASAN_OUT={d / 'build'}", f"PKG={pkg}")
    return d / "build"


@pytest.mark.parametrize("form", ["cpu", "gpu"])
def test_launches_split_as_the_python_runtimes(crt_tight, dev, files, data_dir, tmp_path, monkeypatch, form):
    """With a loop budget of 256 in both runtimes, the C runtime splits every long loop as the Python
    runtime does, launch by launch, and gives the same classes: GEMM slices of K (of the packed CPU
    product too, with the threshold lowered: LeNet-300's first layer at batch 256), CSR row pieces of a
    weight and of its transpose (a dense LeNet-300 trained as CSR), column slices of bias gradients
    (and of SDDMM in the CPU form), col2im rows in pieces, im2col where the direct convolution's
    loops would not fit."""
    from helpers import form_device
    monkeypatch.setenv("PROXCL_TUNING", form)
    # the scan's work-group (Python's from_dense; the C runtime converts on the host) below the budget
    from proxcl.tuning import FORMS
    pack = (TIGHT_PACK_MACS, *FORMS["cpu"].gemm_pack[1:]) if form == "cpu" else FORMS["gpu"].gemm_pack
    d = form_device(dev, form, loop_max=TIGHT_LOOP_MAX, scan_local=32, gemm_pack=pack)
    traced = _compare_launches(crt_tight, d, files, data_dir, tmp_path, monkeypatch,
                               trained=(("lenet5", "csr"), ("lenet300", "dense")))
    kernels = {t["kernel"] for t in traced}
    split = {t["kernel"] for t in traced if "-DPX_SPLIT=1" in t["options"]}
    assert {"gemm_sum_slices", "csr_sum_pieces", "im2col"} <= kernels, kernels
    cpu_split = {"gemm_blk", "gemm_pk", "csr_sddmm_rows"} if form == "cpu" else set()
    assert {"col2im", "bias_grad"} | cpu_split <= split, split
    assert any(t["kernel"] == "gemm" and t["global"][2] > 1 for t in traced) or form == "cpu"


# ---- device choice: proxcl.runtime._select's rules, on made-up platforms ------------------------------

@pytest.fixture(scope="session")
def fake_opencl(tmp_path_factory):
    """runtime/tests/fake_opencl.c built as a library: the platforms $PX_FAKE_PLATFORMS lists."""
    out = tmp_path_factory.mktemp("fake-opencl") / "libfake_opencl.so"
    r = subprocess.run(["cc", "-std=c99", "-D_POSIX_C_SOURCE=200809L", "-DCL_TARGET_OPENCL_VERSION=120", "-Wall",
                        "-Werror", "-shared", "-fPIC", str(RUNTIME / "tests" / "fake_opencl.c"), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


SIM, EMU = "Oclgrind|Oclgrind Simulator|15", "Intel(R) FPGA Emulation Platform|Intel(R) FPGA Emulation Device|8"
CPU, GPU = "PoCL|pthread-cpu|2", "AMD|Radeon|4"          # 15: CPU|GPU|ACCELERATOR|DEFAULT, as Oclgrind says


def test_device_choice_never_takes_a_simulator_unless_named(crt, fake_opencl, monkeypatch):
    """As tests/test_runtime.py's device-choice tests: the first real GPU, else the first CPU; a simulator
    (a device of every type, or one named so) only by name or index; "Clover" has no device."""
    monkeypatch.delenv("PROXCL_DEVICE", raising=False)

    def opened(platforms, spec, check=True):
        return run(crt, "devices", "--open", spec, check=check,
                   env={"PROXCL_OPENCL_LIBRARY": str(fake_opencl), "PX_FAKE_PLATFORMS": ";".join(platforms)})

    assert opened([SIM, "Clover", CPU, GPU], "").stdout == "AMD | Radeon\n"
    both = [SIM, EMU, CPU]
    assert opened(both, "").stdout == opened(both, "cpu").stdout == "PoCL | pthread-cpu\n"
    assert opened(both, "oclgrind").stdout == opened(both, "0:0").stdout == "Oclgrind | Oclgrind Simulator\n"
    assert opened(both, "fpga").stdout.startswith("Intel(R) FPGA Emulation Platform | ")
    for kind in ("gpu", "accelerator"):
        one_line_error(opened(both, kind, check=False), "simulators aside")
    one_line_error(opened([SIM, "Clover"], "", check=False), r"only simulators found \(Oclgrind\)")
    listed = run(crt, "devices", env={"PROXCL_OPENCL_LIBRARY": str(fake_opencl), "PX_FAKE_PLATFORMS": ";".join(both)})
    assert listed.stdout.splitlines()[0].split("\t") == ["0:0", "Oclgrind", "Oclgrind Simulator", "any"]


def test_pocl_affinity_as_the_python_runtime(crt, fake_opencl, monkeypatch):
    """proxcl-run sets POCL_AFFINITY=1 before it lists the platforms exactly where the Python runtime
    does (every CPU allowed, the variable and POCL_MAX_PTHREAD_COUNT unset), and never over the
    user's value (the fake library names a platform after the value it sees)."""
    from proxcl import runtime
    for var in ("POCL_AFFINITY", "POCL_MAX_PTHREAD_COUNT"):
        monkeypatch.delenv(var, raising=False)

    def seen(**env):
        r = run(crt, "devices", env={"PROXCL_OPENCL_LIBRARY": str(fake_opencl),
                                     "PX_FAKE_PLATFORMS": "POCL_AFFINITY=|cpu|2", **env})
        return r.stdout.splitlines()[0].split("\t")[1]

    pinned = runtime.pocl_affinity_default({}, os.sched_getaffinity(0), os.cpu_count())
    assert seen() == ("POCL_AFFINITY=1" if pinned else "POCL_AFFINITY=unset")
    assert seen(POCL_AFFINITY="0") == "POCL_AFFINITY=0"
    assert seen(POCL_MAX_PTHREAD_COUNT="1") == "POCL_AFFINITY=unset"
    if len(os.sched_getaffinity(0)) > 1:           # a mask without CPU 0: nothing set
        cpus = sorted(os.sched_getaffinity(0))[1:]
        r = subprocess.run(["taskset", "-c", ",".join(map(str, cpus)), str(crt / "proxcl-run"), "devices"],
                           capture_output=True, text=True,
                           env={**os.environ, **SAN_ENV, "PROXCL_OPENCL_LIBRARY": str(fake_opencl),
                                "PX_FAKE_PLATFORMS": "POCL_AFFINITY=|cpu|2"})
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[0].split("\t")[1] == "POCL_AFFINITY=unset"


# ---- the library, the generated header, the cross build -------------------------------------------

def test_library_error_contract(crt, files):
    r = subprocess.run([str(crt / "api-check"), str(files[("lenet5", "csr", False)])], capture_output=True,
                       text=True, cwd=files["dir"], env={**os.environ, **SAN_ENV})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok: 0 failures"), r.stdout + r.stderr
    assert not sanitizer_findings(r.stderr), r.stderr


def _cc(crt, src, out):
    flags = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    r = subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", *flags, f"-I{RUNTIME / 'include'}", str(src),
                        str(crt / "libproxcl.a"), "-lcjson", "-ldl", "-lm", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_leak_in_proxcl_code_is_still_reported(crt, files, tmp_path):
    """lsan.supp forgives the drivers' allocations, not the library's: a model never freed is a leak."""
    (tmp_path / "leak.c").write_text(
        '#include <stdio.h>\n#include "proxcl.h"\nint main(int argc, char **argv)\n{\n'
        '    proxcl_error err;\n    proxcl_model *m;\n    (void)argc;\n'
        '    if (proxcl_load(argv[1], NULL, &m, &err) != PROXCL_OK) { puts(err.message); return 2; }\n'
        '    printf("%d\\n", proxcl_num_classes(m));\n    return 0;\n}\n')
    _cc(crt, tmp_path / "leak.c", tmp_path / "leak")
    r = subprocess.run([str(tmp_path / "leak"), str(files[("lenet5", "csr", False)])], capture_output=True,
                       text=True, env={**os.environ, **SAN_ENV})
    assert r.stdout.split() == ["10"], r.stdout + r.stderr
    found = sanitizer_findings(r.stderr)
    assert found and all("leak of" in f for f in found) and any("proxcl_load" in f for f in found), r.stderr


def test_the_deploy_docs_c_example_builds_and_classifies(crt, dev, files, tmp_path):
    """docs/DEPLOY.md's C API example, compiled against the library, gives Python's classes."""
    code = (ROOT / "docs" / "DEPLOY.md").read_text().split("```c\n")[1].split("```")[0]
    x = files["x"][:5]
    main = (code + "\nint main(void)\n{\n    static float px[5 * 784] = {" + ",".join(map(str, x.ravel())) + "};\n"
            + "    int classes[5];\n    if (classify(\"%s\", px, 5, classes)) return 1;\n"
            % files[("lenet5", "csr", False)]
            + "    for (int i = 0; i < 5; ++i) printf(\"%d\\n\", classes[i]);\n    return 0;\n}\n")
    (tmp_path / "example.c").write_text(main)
    _cc(crt, tmp_path / "example.c", tmp_path / "example")
    r = subprocess.run([str(tmp_path / "example")], capture_output=True, text=True, env={**os.environ, **SAN_ENV})
    assert r.returncode == 0 and not sanitizer_findings(r.stderr), r.stderr
    ref = mf.load(files[("lenet5", "csr", False)], device=dev).forward(normalise(x, NORM["mean"], NORM["std"]))
    assert [int(v) for v in r.stdout.split()] == list(ref.argmax(1))


def test_kernels_and_launch_settings_come_from_the_package(crt):
    """The embedded kernel files are the package's bytes, and the launch-settings table is
    proxcl.tuning's (generated at build time, never copied)."""
    from proxcl.tuning import FORMS
    text = (crt / "gen" / "embedded.h").read_text()
    arrays = dict(re.findall(r"static const char (\w+)\[\] = \{\n([\d,\n]*)\n\};", text))
    files = dict(re.findall(r'\{"([\w.]+)", (px_kernel_\d+)\}', text))
    kdir = ROOT / "src" / "proxcl" / "kernels"
    assert sorted(files) == sorted(p.name for p in kdir.glob("*.cl"))
    for name, var in [*files.items(), ("common.h", "px_common_h")]:
        data = bytes(int(v) for v in arrays[var].replace("\n", "").split(","))
        assert data == (kdir / name).read_bytes() + b"\0", name
    fields = re.search(r"typedef struct \{\n    const char \*kind;\n(.*?)\} px_tuning;", text, re.S).group(1)
    names = re.findall(r"int (\w+)", fields)
    for row in re.findall(r'\{"(cpu|gpu)", ([\d, {}]+)\}', text):
        values = [int(v) for v in re.findall(r"\d+", row[1])]
        want = []
        for n in names:
            v = FORMS[row[0]][n]
            want += list(v) if isinstance(v, tuple) else [int(v)]
        assert values == want, row[0]


def test_bad_command_lines(crt, files, tmp_path):
    r = run(crt, check=False)
    assert r.returncode == 2 and "usage:" in r.stderr
    assert run(crt, "--version").stdout.startswith("proxcl-run ")
    r = run(crt, "predict", files[("lenet5", "csr", False)], check=False)
    assert r.returncode == 2 and "needs a model and at least one input file" in r.stderr
    one_line_error(run(crt, "predict", tmp_path / "none.proxcl", files["dir"] / "x1.npy", check=False),
                   "no such file")
    np.save(tmp_path / "small.npy", np.zeros((2, 20, 20), np.uint8))
    one_line_error(run(crt, "predict", files[("lenet5", "csr", False)], tmp_path / "small.npy", check=False),
                   r"images are \[1, 20, 20\], the model takes \[1, 28, 28\]")
    for name, pixels, line in (("nan.npy", np.nan, "the images hold NaN or infinite values"),
                               ("neg.npy", -3.0, "pixel values from -3 to -3; raw pixels 0..255 are expected")):
        np.save(tmp_path / name, np.full((1, 28, 28), pixels, np.float32))     # refused as Python's predict does
        one_line_error(run(crt, "predict", files[("lenet5", "csr", False)], tmp_path / name, check=False),
                       re.escape(f"{tmp_path / name}: {line}"))
    (tmp_path / "x.gz").write_bytes(b"\x1f\x8b\x08\x00")
    one_line_error(run(crt, "predict", files[("lenet5", "csr", False)], tmp_path / "x.gz", check=False), "gzip")
    bare = tmp_path / "bare.proxcl"
    m = mf.read_model_file(files[("lenet300", "csr", False)])
    mf.write_model_file(bare, m[0], m[1], {})
    one_line_error(run(crt, "predict", bare, files["dir"] / "x1.npy", check=False), "stores no input normalisation")
    one_line_error(run(crt, "predict", files[("lenet5", "csr", False)], files["dir"] / "x1.npy", "--device",
                       "no-such-device", check=False), "no platform or device name contains it")
    assert "\t" in run(crt, "devices").stdout


def test_cross_build_for_64_bit_arm(tmp_path):
    """`make CC=aarch64-linux-gnu-gcc` builds the library and the command for 64-bit ARM."""
    if not shutil.which("aarch64-linux-gnu-gcc") and not IN_CI:
        pytest.skip("no aarch64-linux-gnu-gcc (run `make -C runtime deps` as root)")
    out = tmp_path / "arm64"
    _build("CC=aarch64-linux-gnu-gcc", f"OUT={out}")
    for f in ("proxcl-run", "libproxcl.a"):
        assert (out / f).is_file()
    elf = (out / "proxcl-run").read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and struct.unpack("<H", elf[18:20])[0] == 183   # EM_AARCH64
