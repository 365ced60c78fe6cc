"""`proxcl info` through a subprocess: the table, --json (the issue's shape, equal to
file_report), and exit code 2 with one line on stderr and no traceback for bad files."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from proxcl import modelfile as mf
from proxcl.ops import HostCSR
from proxcl.spec import normalize_spec


def _run(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "proxcl.cli", "info", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    rng = np.random.default_rng(11)
    a = sp.random(300, 784, density=0.02, format="csr", random_state=rng, dtype=np.float32)
    b = sp.random(100, 300, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    t = {"fc1.weight": HostCSR(a.indptr, a.indices, a.data, a.shape),
         "fc1.bias": rng.standard_normal(300).astype(np.float32),
         "fc2.weight": HostCSR(b.indptr, b.indices, b.data, b.shape),
         "fc2.bias": rng.standard_normal(100).astype(np.float32),
         "fc3.weight": rng.standard_normal((10, 100)).astype(np.float32),
         "fc3.bias": rng.standard_normal(10).astype(np.float32)}
    p = tmp_path_factory.mktemp("info") / "m.proxcl"
    mf.write_model_file(p, normalize_spec("lenet300"), t, {"test_accuracy": 0.9})
    return p, t


def test_info_json_is_file_report(model_file):
    path, t = model_file
    r = _run(path, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    memory = out.pop("inference_memory")
    assert set(memory) == {"device", "1", "256"} and memory["256"]["input"] == 256 * 784 * 4
    assert out == json.loads(json.dumps(mf.file_report(path)))
    assert [l["name"] for l in out["layers"]] == list(t)
    assert out["layers"][0]["kind"] == "csr" and out["layers"][0]["shape"] == [300, 784]
    assert out["layers"][0]["nnz"] == t["fc1.weight"].nnz
    assert out["total"]["file_bytes"] == os.path.getsize(path)
    assert out["total"]["dense_bytes"] == 4 * (300 * 784 + 300 + 100 * 300 + 100 + 1000 + 10)


def test_info_table(model_file):
    path, t = model_file
    r = _run(path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["layer", "kind", "shape", "nnz", "density", "bytes"]
    row = next(l for l in lines if l.startswith("fc1.weight"))
    rep = mf.file_report(path)
    l0 = rep["layers"][0]
    assert row.split() == ["fc1.weight", "csr", "300x784", f"{l0['nnz']:,}", f"{l0['density'] * 100:.2f}", "%",
                           f"{l0['bytes']:,}"]
    tot = rep["total"]
    text = r.stdout
    assert f"{tot['params']:,}" in text and f"{tot['file_bytes']:,} bytes" in text
    assert f"nonzeros     {tot['nnz']:,} ({tot['density'] * 100:.2f} %, biases included)" in text
    assert f"{tot['bytes_ratio']:.1f}x smaller" in text and f"{tot['params_ratio']:.1f}x fewer" in text


def test_info_help():
    r = _run("--help")
    assert r.returncode == 0 and "--json" in r.stdout and "MODEL" in r.stdout


def _bad_files(path):
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    flipped = bytearray(blob)
    flipped[-3] ^= 0x10
    header = blob[8:8 + n].decode()
    newer = header.replace('"format_version":"1"', '"format_version":"2"').encode()
    nan = bytearray(blob)
    off = json.loads(header)["fc3.bias"]["data_offsets"][0]
    nan[8 + n + off:8 + n + off + 4] = np.float32(np.nan).tobytes()
    return {"truncated": (blob[: len(blob) // 2], "truncated"),
            "flipped": (bytes(flipped), "checksum mismatch"),
            "newer": (blob[:8] + newer + blob[8 + n:], "format version 2 is newer"),
            "nan": (bytes(nan), "checksum mismatch|not finite"),
            "empty": (b"", "too short"),
            "text": (b"hello, this is not a model file\n", "not a proxcl model file: it looks like text$"),
            "binary": (bytes(range(200, 256)) * 4, "header length .* is over the 104857600-byte limit")}


@pytest.mark.parametrize("case", ["truncated", "flipped", "newer", "nan", "empty", "text", "binary", "missing",
                                  "dir"])
def test_info_bad_file_exits_2(model_file, tmp_path, case):
    path, _ = model_file
    if case == "missing":
        target, match = tmp_path / "absent.proxcl", "no such file"
    elif case == "dir":
        target, match = tmp_path, "is a directory"
    else:
        blob, match = _bad_files(path)[case]
        target = tmp_path / f"{case}.proxcl"
        target.write_bytes(blob)
    r = _run(target)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("proxcl: error: ")
    assert re.search(match, err), err
