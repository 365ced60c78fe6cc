"""proxcl.modelfile: round trips, the documented layout (checked with an independent writer and
the safetensors library as an independent reader), every validation error, byte-mutation fuzzing,
atomic writes, file_report accounting, and save/load of real models."""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings, strategies as st

from proxcl import fileio, modelfile as mf
from proxcl.modelfile import ModelFileError
from proxcl.ops import HostCSR

LE = {"F32": "<f4", "F16": "<f2", "I32": "<i4", "U16": "<u2", "F64": "<f8", "I64": "<i8"}


def _csr(rng, m, n, density):
    a = sp.random(m, n, density=density, format="csr", random_state=rng, dtype=np.float32)
    a.data[:] = rng.standard_normal(a.nnz).astype(np.float32)
    a.sort_indices()
    return HostCSR(a.indptr.copy(), a.indices.copy(), a.data.copy(), a.shape)


def _tensors(rng):
    return {"fc1.weight": _csr(rng, 30, 78, 0.1), "fc1.bias": rng.standard_normal(30).astype(np.float32),
            "conv.weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
            "fc2.weight": _csr(rng, 7, 30, 0.3), "fc2.bias": np.zeros(7, np.float32)}


SPEC = {"name": "tiny", "layers": [{"type": "linear", "name": "fc1", "out": 30}]}
META = {"test_accuracy": 0.875, "note": "åäö ✓"}


@pytest.fixture
def good(tmp_path, rng):
    t = _tensors(rng)
    p = tmp_path / "m.proxcl"
    mf.write_model_file(p, SPEC, t, META)
    return p, t


def _header(blob: bytes) -> tuple[dict, int]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), n


def _equal(a, b) -> bool:
    if isinstance(a, HostCSR) != isinstance(b, HostCSR):
        return False
    if isinstance(a, HostCSR):
        return (tuple(a.shape) == tuple(b.shape) and np.array_equal(a.indptr, b.indptr)
                and np.array_equal(a.indices, b.indices) and np.array_equal(a.data, b.data))
    return a.shape == b.shape and np.array_equal(a, b)


# ---- an independent writer, from docs/FORMAT.md ---------------------------------------------------

def craft(decls, arrays, spec=SPEC, metadata=META, meta_over=None, checksum=None, pad=True):
    """A file from declarations and {entry name: (dtype name, shape, raw bytes)}; arrays are laid
    out in the given order and the checksum follows the documented rule unless given."""
    meta = {"format": "proxcl", "format_version": "1", "spec": json.dumps(spec),
            "metadata": json.dumps(metadata), "tensors": json.dumps(decls)}
    meta.update(meta_over or {})
    if checksum is None:
        h = hashlib.sha256()
        for k in ("format_version", "spec", "metadata", "tensors"):
            h.update(meta[k].encode() + b"\0")
        for d in decls:
            for key in ([d["name"]] if d["kind"] == "dense" else
                        [f"{d['name']}.{p}" for p in ("indptr", "indices", "data")]):
                if key in arrays:
                    h.update(arrays[key][2])
        checksum = "sha256:" + h.hexdigest()
    meta["checksum"] = checksum
    header, pos = {"__metadata__": meta}, 0
    for k, (dt, shape, raw) in arrays.items():
        header[k] = {"dtype": dt, "shape": list(shape), "data_offsets": [pos, pos + len(raw)]}
        pos += len(raw)
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(raw for _, _, raw in arrays.values())


def csr_parts(name, indptr, indices, data, shape, idt="U16", vdt="F32", nnz=None):
    nnz = len(indices) if nnz is None else nnz
    decl = {"name": name, "kind": "csr", "shape": list(shape), "nnz": nnz, "index_dtype": idt, "dtype": vdt}
    arrays = {f"{name}.indptr": ("I32", (len(indptr),), np.asarray(indptr, LE["I32"]).tobytes()),
              f"{name}.indices": (idt, (len(indices),), np.asarray(indices, LE[idt]).tobytes()),
              f"{name}.data": (vdt, (len(data),), np.asarray(data, LE[vdt]).tobytes())}
    return decl, arrays


def dense_parts(name, a, dt="F32"):
    a = np.asarray(a, LE[dt])
    return {"name": name, "kind": "dense", "shape": list(a.shape), "dtype": dt}, {name: (dt, a.shape, a.tobytes())}


def parse(blob):
    return mf.parse_model_bytes(blob, "f")


# ---- round trips ----------------------------------------------------------------------------------

def test_round_trip_exact(good):
    path, t = good
    spec, back, meta = mf.read_model_file(path)
    assert spec == SPEC and meta == META
    assert list(back) == list(t)                       # declaration order kept
    for k in t:
        assert _equal(back[k], t[k]), k
    assert back["fc1.weight"].indices.dtype == np.int32 and back["fc1.bias"].dtype == np.float32
    # the safetensors library, an independent reader, sees the documented arrays
    import safetensors.numpy
    lib = safetensors.numpy.load(path.read_bytes())
    assert sorted(lib) == sorted(["fc1.weight.indptr", "fc1.weight.indices", "fc1.weight.data", "fc1.bias",
                                  "conv.weight", "fc2.weight.indptr", "fc2.weight.indices",
                                  "fc2.weight.data", "fc2.bias"])
    assert lib["fc1.weight.indptr"].dtype == np.int32 and lib["fc1.weight.indices"].dtype == np.uint16
    assert lib["fc1.weight.data"].dtype == np.float32
    np.testing.assert_array_equal(lib["fc1.weight.indices"], t["fc1.weight"].indices)
    np.testing.assert_array_equal(lib["conv.weight"], t["conv.weight"])
    # scipy agrees on the matrix
    w = back["fc2.weight"]
    ref = sp.csr_matrix((t["fc2.weight"].data, t["fc2.weight"].indices, t["fc2.weight"].indptr), shape=(7, 30))
    np.testing.assert_array_equal(sp.csr_matrix((w.data, w.indices, w.indptr), shape=w.shape).toarray(),
                                  ref.toarray())


def test_layout_alignment_and_determinism(good, rng):
    path, t = good
    blob = path.read_bytes()
    header, n = _header(blob)
    assert (8 + n) % 8 == 0 and blob[8 + n - 1:8 + n] in (b" ", b"}")
    for k, e in header.items():
        if k != "__metadata__":
            assert e["data_offsets"][0] % np.dtype(LE[e["dtype"]]).itemsize == 0, k
    assert set(header["__metadata__"]) == set(mf.METADATA_KEYS)
    assert mf.model_file_bytes(SPEC, t, META) == blob          # same input, same bytes


@pytest.mark.parametrize("n_cols, idt", [(65536, "U16"), (65537, "I32"), (1, "U16")])
def test_index_width(tmp_path, rng, n_cols, idt):
    cols = np.array(sorted({0, n_cols - 1, n_cols // 2}), np.int64)
    t = {"w": HostCSR(np.array([0, len(cols), len(cols)]), cols, rng.standard_normal(len(cols)).astype(np.float32),
                      (2, n_cols))}
    p = tmp_path / "w.proxcl"
    mf.write_model_file(p, SPEC, t)
    header, _ = _header(p.read_bytes())
    assert header["w.indices"]["dtype"] == idt
    assert json.loads(header["__metadata__"]["tensors"])[0]["index_dtype"] == idt
    _, back, _ = mf.read_model_file(p)
    assert _equal(back["w"], HostCSR(t["w"].indptr.astype(np.int32), cols.astype(np.int32), t["w"].data, (2, n_cols)))


def test_edges_round_trip(tmp_path):
    t = {"empty": HostCSR(np.zeros(4, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32), (3, 5)),
         "norows": HostCSR(np.zeros(1, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32), (0, 5)),
         "onerow": HostCSR(np.array([0, 2]), np.array([1, 4]), np.array([1.5, -2.0], np.float32), (1, 5)),
         "scalar": np.float32(3.0), "none": np.zeros((0, 3), np.float32)}
    p = tmp_path / "e.proxcl"
    mf.write_model_file(p, {}, t)
    _, back, meta = mf.read_model_file(p)
    assert meta == {}
    for k in t:
        expect = t[k] if isinstance(t[k], HostCSR) else np.asarray(t[k], np.float32)
        assert _equal(back[k], expect), k


def test_half(tmp_path, rng):
    t = _tensors(rng)
    p32, p16 = tmp_path / "a", tmp_path / "b"
    mf.write_model_file(p32, SPEC, t)
    mf.write_model_file(p16, SPEC, t, half=True)
    header, _ = _header(p16.read_bytes())
    assert {e["dtype"] for k, e in header.items() if k != "__metadata__" and not k.endswith(("indptr", "indices"))} \
        == {"F16"}
    _, back, _ = mf.read_model_file(p16)
    for k, v in t.items():
        b = back[k]
        if isinstance(v, HostCSR):
            np.testing.assert_array_equal(b.indices, v.indices)
            v, b = v.data, b.data
        assert b.dtype == np.float32
        np.testing.assert_array_equal(b, v.astype(np.float16).astype(np.float32))
    assert os.path.getsize(p16) < os.path.getsize(p32)
    big = {"w": np.array([1e5], np.float32)}
    with pytest.raises(ValueError, match="too large for float16"):
        mf.write_model_file(tmp_path / "c", SPEC, big, half=True)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("tensors, match", [
    ({"w": np.array([1.0, np.nan], np.float32)}, "not finite"),
    ({"w": HostCSR(np.array([0, 2]), np.array([3, 1]), np.ones(2, np.float32), (1, 5))}, "strictly increasing"),
    ({"w": HostCSR(np.array([0, 2]), np.array([1, 1]), np.ones(2, np.float32), (1, 5))}, "strictly increasing"),
    ({"w": HostCSR(np.array([0, 1]), np.array([5]), np.ones(1, np.float32), (1, 5))}, "out of range"),
    ({"w": HostCSR(np.array([1, 1]), np.array([0]), np.ones(1, np.float32), (1, 5))}, "starts at 1"),
    ({"w": np.array(["a"])}, "cannot be stored"),
    ({"__x": np.zeros(1, np.float32)}, "bad tensor name"),
    ({"w": HostCSR(np.array([0, 1]), np.array([0]), np.ones(1, np.float32), (1, 5)),
      "w.data": np.zeros(1, np.float32)}, "collide"),
])
def test_write_rejects_bad_tensors(tmp_path, tensors, match):
    with pytest.raises(ValueError, match=match):
        mf.write_model_file(tmp_path / "x", SPEC, tensors)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_bad_spec(tmp_path):
    with pytest.raises(ValueError, match="not JSON"):
        mf.write_model_file(tmp_path / "x", {"f": object()}, {})
    with pytest.raises(ValueError, match="not JSON"):
        mf.write_model_file(tmp_path / "x", SPEC, {}, {"acc": float("nan")})
    with pytest.raises(ValueError, match="spec must be a dict"):
        mf.write_model_file(tmp_path / "x", "lenet300", {})
    assert list(tmp_path.iterdir()) == []


# ---- atomic writes --------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["fsync", "replace", "chmod"])
def test_atomic_write_failure_leaves_nothing(tmp_path, rng, monkeypatch, where):
    t = _tensors(rng)
    target = tmp_path / "m.proxcl"

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, where, boom)
    with pytest.raises(OSError, match="No space"):
        mf.write_model_file(target, SPEC, t)
    assert list(tmp_path.iterdir()) == []
    # an existing file survives a failed overwrite untouched
    monkeypatch.undo()
    mf.write_model_file(target, SPEC, t)
    before = target.read_bytes()
    monkeypatch.setattr(fileio.os, where, boom)
    with pytest.raises(OSError):
        mf.write_model_file(target, {"other": 1}, t)
    assert target.read_bytes() == before and list(tmp_path.iterdir()) == [target]


def test_write_creates_folder_and_overwrites(tmp_path, rng):
    p = tmp_path / "a" / "b" / "m.proxcl"
    mf.write_model_file(p, SPEC, _tensors(rng))
    mf.write_model_file(p, {"v": 2}, _tensors(rng))
    assert mf.read_model_file(p)[0] == {"v": 2}
    assert sorted(x.name for x in p.parent.iterdir()) == ["m.proxcl"]


# ---- bad files ------------------------------------------------------------------------------------

def _rejects(blob, match):
    with pytest.raises(ModelFileError, match=match) as e:
        parse(blob)
    assert "\n" not in str(e.value)


def test_truncated_everywhere(good):
    blob = good[0].read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    for cut in sorted({0, 3, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(blob) // 2 + n // 2,
                       len(blob) - 4, len(blob) - 1}):
        with pytest.raises(ModelFileError):
            parse(blob[:cut])
    _rejects(blob[:5], "too short")
    _rejects(blob[:8 + n // 2], "runs past the end of the file.*truncated")
    _rejects(blob[:-1], "truncated")
    _rejects(blob + b"\0", "1 bytes after the last tensor")


def test_flipped_bytes(good):
    blob = bytearray(good[0].read_bytes())
    (n,) = struct.unpack("<Q", blob[:8])
    for pos in (8 + n, 8 + n + 13, len(blob) - 1):      # anywhere in the data: the checksum sees it
        b = bytearray(blob)
        b[pos] ^= 0x01
        _rejects(bytes(b), "checksum mismatch")
    header = blob[8:8 + n].decode()
    i = header.index('\\"test_accuracy\\":0.875') + len('\\"test_accuracy\\":0.8')
    b = bytearray(blob)
    b[8 + i] = ord("6")                                    # valid JSON, different metadata
    _rejects(bytes(b), "checksum mismatch")
    b = bytearray(blob)
    b[8] = ord("[")
    _rejects(bytes(b), "does not start with '{'")
    b = bytearray(blob)
    b[7] = 0x7F                                            # header length ~ 2^63
    _rejects(bytes(b), "over the .*-byte limit")


def _valid_parts():
    d1, a1 = csr_parts("w", [0, 2, 2, 3], [1, 4, 0], [1.0, -2.0, 0.5], (3, 6))
    d2, a2 = dense_parts("b", [0.1, 0.2, 0.3])
    return [d1, d2], {**a1, **a2}


def test_crafted_valid_file_reads():
    """The independent writer (the documented layout, no alignment, in any order) is accepted."""
    decls, arrays = _valid_parts()
    p = parse(craft(decls, dict(reversed(list(arrays.items()))), pad=False))
    assert p.tensors["w"].to_dense().tolist() == [[0, 1, 0, 0, -2, 0], [0] * 6, [0.5, 0, 0, 0, 0, 0]]
    np.testing.assert_array_equal(p.tensors["b"], np.float32([0.1, 0.2, 0.3]))


def _mutated(mutate):
    decls, arrays = _valid_parts()
    out = mutate(decls, arrays)
    return craft(decls, arrays, **(out or {}))


def _retype(arrays, key, dt, values=None):
    old_dt, shape, raw = arrays[key]
    vals = np.frombuffer(raw, LE[old_dt]) if values is None else np.asarray(values)
    arrays[key] = (dt, (len(vals),), vals.astype(LE[dt]).tobytes())


BAD = {
    "indices as int32 with few columns": (
        lambda d, a: (_retype(a, "w.indices", "I32"), d[0].update(index_dtype="I32")) and None,
        "declares index dtype 'I32', expected 'U16'"),
    "indptr int64": (lambda d, a: _retype(a, "w.indptr", "I64"), "unsupported dtype 'I64'"),
    "values float64": (lambda d, a: _retype(a, "w.data", "F64"), "unsupported dtype 'F64'"),
    "values F16 declared F32": (lambda d, a: _retype(a, "w.data", "F16"), "is F16, declared F32"),
    "value dtype I32": (lambda d, a: (_retype(a, "b", "I32"), d[1].update(dtype="I32")) and None,
                        "declares value dtype 'I32'"),
    "indptr not from 0": (lambda d, a: _retype(a, "w.indptr", "I32", [1, 2, 2, 3]), "indptr starts at 1"),
    "indptr decreasing": (lambda d, a: _retype(a, "w.indptr", "I32", [0, 2, 1, 3]), "indptr decreases at row 1"),
    "indptr short of nnz": (lambda d, a: _retype(a, "w.indptr", "I32", [0, 2, 2, 2]), "indptr ends at 2"),
    "index out of range": (lambda d, a: _retype(a, "w.indices", "U16", [1, 6, 0]), "column index 6 out of range"),
    "indices unsorted": (lambda d, a: _retype(a, "w.indices", "U16", [4, 1, 0]), "not strictly increasing in row 0"),
    "indices repeated": (lambda d, a: _retype(a, "w.indices", "U16", [4, 4, 0]), "not strictly increasing in row 0"),
    "NaN in CSR": (lambda d, a: _retype(a, "w.data", "F32", [1.0, np.nan, 0.5]), "'w': values not finite"),
    "inf in dense": (lambda d, a: _retype(a, "b", "F32", [0.1, np.inf, 0.3]), "'b': values not finite"),
    "nnz beyond m*n": (lambda d, a: d[0].update(nnz=10 ** 12), "declares nnz 1000000000000"),
    "absurd shape": (lambda d, a: d[0].update(shape=[2 ** 40, 6]), "declares a bad shape"),
    "absurd entry size": (lambda d, a: a.update({"w.data": ("F32", (2 ** 31 - 1, 2 ** 31 - 1), a["w.data"][2])}),
                          "declares 18446744056529682436 bytes but its offsets span 12"),
    "nine dims": (lambda d, a: a.update({"b": ("F32", (1,) * 9, a["b"][2])}), "bad shape"),
    "shape mismatch": (lambda d, a: d[1].update(shape=[1, 3]), "has shape \\[3\\], declared \\[1, 3\\]"),
    "missing tensor": (lambda d, a: a.pop("w.indices") and None, "'w.indices' is missing"),
    "undeclared tensor": (lambda d, a: a.update(extra=("F32", (1,), b"\0" * 4)), "undeclared tensor 'extra'"),
    "unknown kind": (lambda d, a: d[1].update(kind="coo"), "kind 'coo'"),
    "extra declaration key": (lambda d, a: d[1].update(bits=4), "declaration keys"),
    "duplicate declaration": (lambda d, a: d.append(dict(d[1])), "declared twice"),
    "newer version": (lambda d, a: {"meta_over": {"format_version": "2"}}, "version 2 is newer.*upgrade proxcl"),
    "older version": (lambda d, a: {"meta_over": {"format_version": "0"}}, "version 0 is not the version 1"),
    "bad version": (lambda d, a: {"meta_over": {"format_version": "1.0"}}, "bad format_version"),
    "other format": (lambda d, a: {"meta_over": {"format": "pt"}}, "not a proxcl model file"),
    "extra metadata key": (lambda d, a: {"meta_over": {"author": "x"}}, "unexpected \\['author'\\]"),
    "spec not JSON": (lambda d, a: {"meta_over": {"spec": "{"}}, "invalid JSON"),
    "spec not object": (lambda d, a: {"spec": [1]}, "spec is not a JSON object"),
    "NaN in metadata JSON": (lambda d, a: {"meta_over": {"metadata": '{"a": NaN}'}}, "NaN is not allowed"),
    "wrong checksum": (lambda d, a: {"checksum": "sha256:" + "0" * 64}, "checksum mismatch"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_validation_errors(case):
    mutate, match = BAD[case]
    _rejects(_mutated(mutate), match)


def _raw_file(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize("blob, match", [
    (_raw_file(b"\xff\xfe{}"), "not UTF-8"),
    (_raw_file(b"[]"), "does not start with"),
    (_raw_file(b"{" * 5000 + b"}" * 5000), "JSON|too deeply"),
    (_raw_file(b'{"__metadata__": {"format": "proxcl"}, "__metadata__": {}}'), "duplicate key"),
    (_raw_file(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4), "no __metadata__"),
    (_raw_file(b'{"__metadata__": {"format": 1}}'), "no __metadata__ of strings"),
])
def test_container_errors(blob, match):
    _rejects(blob, match)


def test_gap_and_overlap():
    decls, arrays = _valid_parts()
    blob = craft(decls, arrays)
    header, n = _header(blob)
    e = header["w.indices"]["data_offsets"]
    for new in ([e[0] + 2, e[1] + 2], [e[0] - 2, e[1] - 2]):
        h = dict(header)
        h["w.indices"] = dict(header["w.indices"], data_offsets=new)
        text = json.dumps(h).encode()
        _rejects(_raw_file(text, blob[8 + n:]), "overlap or gap|offsets span|after the last")


def test_plain_safetensors_file_is_not_a_model(tmp_path):
    import safetensors.numpy
    blob = safetensors.numpy.save({"a": np.ones(3, np.float32)})
    _rejects(blob, "not a proxcl model file")


def test_read_errors_on_paths(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        mf.read_model_file(tmp_path / "absent")
    with pytest.raises(ModelFileError, match="is a directory"):
        mf.read_model_file(tmp_path)


# ---- fuzzing ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_base():
    rng = np.random.default_rng(5)
    t = {"a.weight": _csr(rng, 6, 9, 0.3), "a.bias": rng.standard_normal(6).astype(np.float32),
         "b.weight": rng.standard_normal((2, 6)).astype(np.float32)}
    blob = mf.model_file_bytes({"name": "fuzz"}, t, {"acc": 0.5}, half=False)
    return blob, mf.parse_model_bytes(blob)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10 ** 6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10 ** 6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10 ** 6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10 ** 6), st.integers(1, 16)),
    st.tuples(st.just("set"), st.integers(0, 10 ** 6), st.integers(0, 255)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(muts=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_mutations_raise_only_model_file_error(fuzz_base, muts):
    blob, ref = fuzz_base
    b = bytearray(blob)
    for kind, pos, val in muts:
        pos %= max(len(b), 1)
        if kind == "flip" and b:
            b[pos] ^= val
        elif kind == "truncate":
            del b[pos:]
        elif kind == "insert":
            b.insert(pos, val)
        elif kind == "delete":
            del b[pos:pos + val]
        elif kind == "set" and b:
            b[pos] = val
    try:
        got = mf.parse_model_bytes(bytes(b), "fuzz")
    except ModelFileError as e:
        assert "\n" not in str(e)
        return
    # accepted only if nothing that matters changed (e.g. a padding space became a tab)
    assert got.spec == ref.spec and got.metadata == ref.metadata
    assert all(_equal(got.tensors[k], ref.tensors[k]) for k in ref.tensors) and list(got.tensors) == list(ref.tensors)


# ---- file_report --------------------------------------------------------------------------------

def test_file_report_accounting(good):
    path, t = good
    r = mf.file_report(path)
    assert set(r) == {"layers", "total"}
    assert [l["name"] for l in r["layers"]] == list(t)
    for l in r["layers"]:
        assert set(l) == {"name", "kind", "shape", "nnz", "density", "bytes"}
        v = t[l["name"]]
        if isinstance(v, HostCSR):
            m, n = v.shape
            assert l["kind"] == "csr" and l["shape"] == [m, n] and l["nnz"] == len(v.data)
            assert l["bytes"] == (m + 1) * 4 + len(v.data) * (2 + 4)
            assert l["density"] == pytest.approx(len(v.data) / (m * n))
        else:
            assert l["kind"] == "dense" and l["shape"] == list(v.shape)
            assert l["nnz"] == int((v != 0).sum()) and l["bytes"] == v.size * 4
    tot = r["total"]
    assert set(tot) == {"params", "nnz", "density", "params_ratio", "file_bytes", "dense_bytes", "bytes_ratio"}
    params = sum(math.prod(v.shape) for v in t.values())
    nnz = sum(len(v.data) if isinstance(v, HostCSR) else int((v != 0).sum()) for v in t.values())
    size = os.path.getsize(path)
    _, n = _header(path.read_bytes())
    assert size == 8 + n + sum(l["bytes"] for l in r["layers"])     # every byte accounted for
    assert tot == {"params": params, "nnz": nnz, "density": pytest.approx(nnz / params),
                   "params_ratio": pytest.approx(params / nnz), "file_bytes": size,
                   "dense_bytes": 4 * params, "bytes_ratio": pytest.approx(4 * params / size)}
    json.dumps(r, allow_nan=False)


def test_file_report_no_nonzeros(tmp_path):
    p = tmp_path / "z"
    mf.write_model_file(p, {}, {"w": np.zeros((2, 2), np.float32)})
    tot = mf.file_report(p)["total"]
    assert tot["nnz"] == 0 and tot["params_ratio"] is None and tot["density"] == 0.0


def test_lenet300_at_3_percent_is_20x_smaller_in_half(tmp_path, rng):
    """Sizes of a LeNet-300-100 file at 3 % nonzeros (float32 values: ~19x; float16: well past 20x)."""
    t = {"fc1.weight": _csr(rng, 300, 784, 0.03), "fc1.bias": rng.standard_normal(300).astype(np.float32),
         "fc2.weight": _csr(rng, 100, 300, 0.03), "fc2.bias": rng.standard_normal(100).astype(np.float32),
         "fc3.weight": _csr(rng, 10, 100, 0.03), "fc3.bias": rng.standard_normal(10).astype(np.float32)}
    p = tmp_path / "l"
    mf.write_model_file(p, {"name": "lenet300"}, t, half=True)
    assert mf.file_report(p)["total"]["bytes_ratio"] >= 20


# ---- real models --------------------------------------------------------------------------------

def _sparse_model(dev, name, rng, keep=0.1):
    from proxcl import models
    model = models.build(name, device=dev, seed=1)
    state = model.sparse_state()
    for k, v in state.items():
        if k.endswith("weight"):
            v = np.array(v)
            v[rng.random(v.shape) > keep] = 0.0
            state[k] = v
    model.load_sparse_state(state)
    return model


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_model_round_trip(dev, tmp_path, rng, name):
    import proxcl.modelfile as pm
    model = _sparse_model(dev, name, rng)
    x = rng.standard_normal((33, 1, 28, 28)).astype(np.float32)
    dense_out = model.forward(x)
    p_dense = tmp_path / "dense.proxcl"
    pm.save(model, p_dense, metadata={"acc": 0.5})
    loaded, meta = pm.load(p_dense, device=dev, with_metadata=True)
    assert meta == {"acc": 0.5} and loaded.spec == model.spec
    assert not any(p.is_sparse for p in loaded.params)
    np.testing.assert_array_equal(loaded.forward(x), dense_out)

    model.to_sparse()
    csr_out = model.forward(x)
    p_csr = tmp_path / "csr.proxcl"
    pm.save(model, p_csr)
    loaded = pm.load(p_csr, device=dev)
    assert [p.is_sparse for p in loaded.params] == [p.is_sparse for p in model.params]
    np.testing.assert_array_equal(loaded.forward(x), csr_out)
    assert os.path.getsize(p_csr) < os.path.getsize(p_dense) / 3

    p_half = tmp_path / "half.proxcl"
    pm.save(model, p_half, half=True)
    loaded = pm.load(p_half, device=dev)
    half_out = loaded.forward(x)
    # the same model with its values rounded to float16 gives the same outputs
    from proxcl import models
    ref = models.build(model.spec, device=dev)
    st16 = {}
    for k, v in model.sparse_state().items():
        if isinstance(v, HostCSR):
            st16[k] = v._replace(data=v.data.astype(np.float16).astype(np.float32))
        else:
            st16[k] = v.astype(np.float16).astype(np.float32)
    ref.load_sparse_state(st16)
    np.testing.assert_array_equal(half_out, ref.forward(x))
    rel = np.linalg.norm(half_out - csr_out) / np.linalg.norm(csr_out)
    assert 0 < rel < 2e-3


def test_load_rejects_unbuildable_spec(dev, tmp_path, rng):
    p = tmp_path / "x"
    mf.write_model_file(p, {"input_shape": [1, 28, 28], "layers": []}, {"fc1.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ModelFileError, match="cannot be built"):
        mf.load(p, device=dev)
    model = _sparse_model(dev, "lenet300", rng)
    st = model.sparse_state()
    st["fc2.weight"] = np.zeros((3, 3), np.float32)
    mf.write_model_file(p, model.spec, st)
    with pytest.raises(ModelFileError, match="cannot be built"):
        mf.load(p, device=dev)


# ---- docs/FORMAT.md's worked example is what the writer produces ---------------------------------

def test_format_doc_example_matches_writer():
    from pathlib import Path
    doc = (Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md").read_text(encoding="utf-8")
    spec = {"name": "tiny", "input_shape": [6], "num_classes": 3,
            "layers": [{"type": "linear", "name": "fc", "out": 3, "bias": True}]}
    t = {"fc.weight": HostCSR(np.array([0, 2, 2, 3]), np.array([1, 4, 0]),
                              np.array([0.5, -1.25, 2.0], np.float32), (3, 6)),
         "fc.bias": np.array([0.1, 0, -0.1], np.float32)}
    blob = mf.model_file_bytes(spec, t, {"test_accuracy": 0.9})
    (n,) = struct.unpack("<Q", blob[:8])
    assert f"is {len(blob)} bytes" in doc and blob[:8].hex(" ") in doc and f"N = {n})" in doc
    blocks = doc.split("```text\n")
    header_doc = blocks[1].split("```")[0].replace("⏎\n", "").strip()
    assert blob[8:8 + n].decode().rstrip(" ") == header_doc
    assert len(blob[8:8 + n]) - len(header_doc) == 4 and f"file offset {8 + n}" in doc
    data_doc = bytes.fromhex(" ".join(line[:48] for line in blocks[2].split("```")[0].splitlines()))
    assert blob[8 + n:] == data_doc


def test_read_refuses_special_files(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match="not a regular file"):
        mf.read_model_file(fifo)
