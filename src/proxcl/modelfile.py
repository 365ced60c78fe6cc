"""The compressed model file: a safetensors container (no pickle) holding the architecture spec,
training metadata and, per parameter, a dense array or the three CSR arrays.  docs/FORMAT.md gives
the layout byte by byte.

``write_model_file`` / ``read_model_file`` are the core and know nothing of layers; ``save`` and
``load`` bridge them to ``proxcl.models``; ``file_report`` is what ``proxcl info`` prints.
Reading validates everything and raises only ``ModelFileError`` for a bad file.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np

from .errors import InputError
from .fileio import atomic_write_bytes, unreadable
from .ops import HostCSR, csr_problem
from .sniff import looks_like

FORMAT_NAME = "proxcl"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 * 1024 * 1024       # as safetensors: larger headers are refused unread
MAX_DIM = 2 ** 31 - 1                      # int32 row pointers and indices
U16_MAX_COLS = 65536                       # column indices 0..65535 fit uint16

# safetensors dtype name -> little-endian numpy dtype
DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I32": np.dtype("<i4"), "U16": np.dtype("<u2")}
VALUE_DTYPES = ("F32", "F16")
METADATA_KEYS = ("format", "format_version", "spec", "metadata", "tensors", "checksum")
CSR_PARTS = ("indptr", "indices", "data")


class ModelFileError(Exception):
    """A model file that cannot be read: a one-line message."""


def _fail(name: str, msg: str) -> ModelFileError:
    return ModelFileError(f"{name}: {msg}")


def index_dtype(n_cols: int) -> str:
    """The column index dtype of a CSR matrix with n_cols columns: U16 when they fit, else I32."""
    return "U16" if n_cols <= U16_MAX_COLS else "I32"


def csr_nbytes(shape, nnz: int, half: bool = False) -> int:
    """The bytes of a CSR matrix's three arrays in a model file: int32 row pointers, column
    indices of index_dtype, values of float16 (half) or float32."""
    rows, cols = (int(s) for s in shape)
    values = DTYPES["F16" if half else "F32"].itemsize
    return 4 * (rows + 1) + (DTYPES[index_dtype(cols)].itemsize + values) * int(nnz)


def dense_nbytes(shape, half: bool = False) -> int:
    """The bytes of a dense array in a model file."""
    return math.prod(int(s) for s in shape) * DTYPES["F16" if half else "F32"].itemsize


def smaller_form(t, shape, half: bool = False):
    """``t`` as the model file stores it best: a HostCSR stays CSR only when its arrays take fewer
    bytes than the dense array would, else it becomes the dense array of ``shape`` (the
    parameter's PyTorch shape).  Dense arrays are returned as they are."""
    if isinstance(t, HostCSR) and csr_nbytes(t.shape, t.nnz, half) >= dense_nbytes(t.shape, half):
        return np.asarray(t.to_dense(), np.float32).reshape(shape)
    return t


# ---- writing ------------------------------------------------------------------------------------

def _value_array(a, half: bool, what: str) -> np.ndarray:
    a = np.asarray(a)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{what}: values of dtype {a.dtype} cannot be stored")
    if not np.isfinite(a).all():
        raise InputError(f"{what}: values not finite (NaN or inf)")
    with np.errstate(over="ignore"):    # overflow is reported below; np.array keeps 0-d arrays 0-d
        out = np.array(a, dtype=DTYPES["F16" if half else "F32"], order="C")
    if not np.isfinite(out).all():
        raise InputError(f"{what}: values too large for float16 (|x| > 65504); save without half")
    return out


def _json(obj, what: str) -> str:
    try:
        return json.dumps(obj, separators=(",", ":"), sort_keys=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} is not JSON-serialisable: {e}") from None


def _checksum(meta: dict, arrays: list[bytes | memoryview]) -> str:
    """sha256 over format_version, spec, metadata and tensors (each followed by a zero byte), then
    the bytes of every array in declaration order (CSR: indptr, indices, data)."""
    h = hashlib.sha256()
    for key in ("format_version", "spec", "metadata", "tensors"):
        h.update(meta[key].encode("utf-8"))
        h.update(b"\0")
    for a in arrays:
        h.update(a)
    return "sha256:" + h.hexdigest()


def model_file_bytes(spec: dict, tensors: dict, metadata: dict | None = None, half: bool = False) -> bytes:
    """The bytes of a model file (see write_model_file)."""
    if not isinstance(spec, dict):
        raise InputError(f"spec must be a dict, got {type(spec).__name__}")
    if metadata is not None and not isinstance(metadata, dict):
        raise InputError(f"metadata must be a dict, got {type(metadata).__name__}")
    vdt = "F16" if half else "F32"
    decls, entries, ordered = [], {}, []
    for name, t in tensors.items():
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise InputError(f"bad tensor name {name!r}")
        if isinstance(t, HostCSR) or all(hasattr(t, k) for k in (*CSR_PARTS, "shape")) \
                and not isinstance(t, np.ndarray):
            m, n = (int(s) for s in t.shape)
            if not (0 <= m <= MAX_DIM - 1 and 0 <= n <= MAX_DIM):
                raise InputError(f"{name}: CSR shape {t.shape} out of range")
            indptr = np.asarray(t.indptr)
            indices = np.asarray(t.indices)
            if not (np.issubdtype(indptr.dtype, np.integer) and np.issubdtype(indices.dtype, np.integer)):
                raise InputError(f"{name}: CSR indptr and indices must be integers")
            nnz = int(indices.size)
            if nnz > MAX_DIM:
                raise InputError(f"{name}: {nnz} entries exceed int32 row pointers")
            data = _value_array(t.data, half, name)
            why = csr_problem(indptr, indices, data, (m, n), nnz)
            if why:
                raise InputError(f"{name}: {why}")
            idt = index_dtype(n)
            parts = {"indptr": np.ascontiguousarray(indptr, DTYPES["I32"]),
                     "indices": np.ascontiguousarray(indices, DTYPES[idt]),
                     "data": data}
            decls.append({"name": name, "kind": "csr", "shape": [m, n], "nnz": nnz,
                          "index_dtype": idt, "dtype": vdt})
            for part in CSR_PARTS:
                entries[f"{name}.{part}"] = parts[part]
                ordered.append(parts[part])
        else:
            a = _value_array(t, half, name)
            decls.append({"name": name, "kind": "dense", "shape": list(a.shape), "dtype": vdt})
            entries[name] = a
            ordered.append(a)
    if len(entries) != sum(3 if d["kind"] == "csr" else 1 for d in decls):
        raise InputError("tensor names collide (a dense name equals a CSR part name)")
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
            "spec": _json(spec, "spec"), "metadata": _json(metadata or {}, "metadata"),
            "tensors": _json(decls, "tensor declarations")}
    meta["checksum"] = _checksum(meta, [a.tobytes() for a in ordered])
    return _container(entries, meta)


def _dtype_name(a: np.ndarray) -> str:
    return next(k for k, v in DTYPES.items() if v == a.dtype)


def _container(entries: dict, meta: dict) -> bytes:
    """The safetensors bytes, deterministic: u64 header length, the JSON header (metadata keys in
    a fixed order, spaces up to a multiple of 8 bytes), then the arrays with no gaps: 4-byte
    types first, then 2-byte ones, each group in declaration order, so every array is aligned to
    its element size."""
    order = sorted(entries, key=lambda k: -entries[k].dtype.itemsize)     # stable: keeps declaration order
    header = {"__metadata__": {k: meta[k] for k in METADATA_KEYS}}
    pos = 0
    for k in order:
        a = entries[k]
        header[k] = {"dtype": _dtype_name(a), "shape": list(a.shape), "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return b"".join([struct.pack("<Q", len(text)), text] + [entries[k].tobytes() for k in order])


def write_model_file(path, spec: dict, tensors: dict, metadata: dict | None = None,
                     half: bool = False) -> None:
    """Write a model file atomically.  tensors: {name: numpy array (dense) | HostCSR}; CSR index
    arrays become int32 indptr and uint16 (<= 65536 columns) or int32 indices; values float32, or
    float16 with half (dense ones too).  The bytes are read back and validated before the rename."""
    blob = model_file_bytes(spec, tensors, metadata, half)
    parse_model_bytes(blob, str(path))          # never leave a file that cannot be read
    atomic_write_bytes(path, blob)


# ---- reading ------------------------------------------------------------------------------------

class ParsedFile:
    """A validated file: spec, metadata, tensors (float32 values, int32 indices) and the byte
    accounting that file_report needs."""

    def __init__(self, spec, metadata, tensors, decls, tensor_bytes, header_bytes, file_bytes):
        self.spec = spec
        self.metadata = metadata
        self.tensors = tensors
        self.decls = decls
        self.tensor_bytes = tensor_bytes
        self.header_bytes = header_bytes
        self.file_bytes = file_bytes


def _is_int(x) -> bool:
    return type(x) is int


def _no_dupes(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise InputError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _bad_constant(c):
    raise InputError(f"{c} is not allowed")


def _loads(text: str):
    return json.loads(text, object_pairs_hook=_no_dupes, parse_constant=_bad_constant)


# What decoding data of an unexpected form raises; anything else is a bug and shows as one.
_DATA_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, struct.error)


def parse_model_bytes(blob: bytes, name: str = "model file") -> ParsedFile:
    """Validate and decode a model file held in memory.  Raises ModelFileError only."""
    try:
        return _parse(memoryview(blob).cast("B") if not isinstance(blob, bytes) else blob, name)
    except ModelFileError:
        raise
    except RecursionError:
        raise _fail(name, "header nests too deeply") from None
    except _DATA_ERRORS as e:   # a check missed on malformed data: still one clear line
        raise _fail(name, f"unreadable ({type(e).__name__}: {e})") from None


def _parse(blob: bytes, name: str) -> ParsedFile:
    _check_kind(blob, name)
    header, meta, hlen = _read_header(blob, name)
    _check_format(meta, name)
    entries = _check_entries(header, len(blob) - 8 - hlen, name)
    spec, metadata, decls = _read_declarations(meta, name)
    _match_declarations(_expected_entries(decls, name), entries, decls, name)
    tensors, tensor_bytes = _decode_tensors(blob, 8 + hlen, entries, decls, meta, name)
    return ParsedFile(spec, metadata, tensors, decls, tensor_bytes, 8 + hlen, len(blob))


def _check_kind(blob: bytes, name: str) -> None:
    """A file whose ninth byte does not open a JSON header is not safetensors at all: say what it
    looks like (text, an image, a PyTorch archive) rather than what its first eight bytes would
    mean as a header length."""
    if len(blob) >= 9 and blob[8:9] == b"{":
        return
    what = looks_like(blob) if blob else None
    if what:
        raise _fail(name, f"not a proxcl model file: it looks like {what}")


def _read_header(blob: bytes, name: str) -> tuple[dict, dict, int]:
    """The safetensors header: (entries by key, __metadata__ of strings, header length)."""
    size = len(blob)
    if size < 8:
        raise _fail(name, f"too short for a model file ({size} bytes)")
    (hlen,) = struct.unpack("<Q", blob[:8])
    if hlen > MAX_HEADER_BYTES:
        raise _fail(name, f"header length {hlen} is over the {MAX_HEADER_BYTES}-byte limit")
    if hlen > size - 8:
        raise _fail(name, f"header length {hlen} runs past the end of the file ({size} bytes): truncated?")
    try:
        text = bytes(blob[8:8 + hlen]).decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(name, "header is not UTF-8") from None
    if not text.startswith("{"):
        raise _fail(name, "not a safetensors file (header does not start with '{')")
    try:
        header = _loads(text)
    except ValueError as e:
        raise _fail(name, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _fail(name, "header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _fail(name, "no __metadata__ of strings: not a proxcl model file")
    return header, meta, hlen


def _check_format(meta: dict, name: str) -> None:
    """Format and version first: a newer file may differ in everything else."""
    if meta.get("format") != FORMAT_NAME:
        raise _fail(name, f"format is {meta.get('format')!r}, not {FORMAT_NAME!r}: not a proxcl model file")
    ver = meta.get("format_version")
    if not (isinstance(ver, str) and ver.isdigit() and len(ver) < 10):
        raise _fail(name, f"bad format_version {ver!r}")
    if int(ver) != FORMAT_VERSION:
        newer = int(ver) > FORMAT_VERSION
        raise _fail(name, f"format version {int(ver)} {'is newer than' if newer else 'is not'} the version "
                          f"{FORMAT_VERSION} this proxcl reads" + ("; upgrade proxcl" if newer else ""))
    if set(meta) != set(METADATA_KEYS):
        extra = sorted(set(meta) - set(METADATA_KEYS))
        missing = sorted(set(METADATA_KEYS) - set(meta))
        raise _fail(name, f"__metadata__ keys: missing {missing}, unexpected {extra}")


def _check_entries(header: dict, data_len: int, name: str) -> dict:
    """The safetensors entries: dtype, shape, offsets, sizes; the data section has no holes.
    Returns {key: (dtype name, shape, begin, end)}."""
    entries = {}
    for key, e in header.items():
        entries[key] = _check_entry(key, e, data_len, name)
    pos = 0
    for key, (_, _, b, e) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if b != pos:
            raise _fail(name, f"tensor {key!r} starts at byte {b} of the data section, expected {pos} "
                              f"(overlap or gap)")
        pos = e
    if pos != data_len:
        raise _fail(name, f"{data_len - pos} bytes after the last tensor")
    return entries


def _check_entry(key: str, e, data_len: int, name: str) -> tuple:
    if not (isinstance(e, dict) and set(e) == {"dtype", "shape", "data_offsets"}):
        raise _fail(name, f"tensor entry {key!r} is malformed")
    dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
    if dt not in DTYPES:
        raise _fail(name, f"tensor {key!r} has unsupported dtype {dt!r}")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(_is_int(s) and 0 <= s <= MAX_DIM
                                                                for s in shape)):
        raise _fail(name, f"tensor {key!r} has a bad shape {shape!r}")
    if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)
            and 0 <= offs[0] <= offs[1]):
        raise _fail(name, f"tensor {key!r} has bad data_offsets {offs!r}")
    nbytes = math.prod(shape) * DTYPES[dt].itemsize
    if offs[1] - offs[0] != nbytes:
        raise _fail(name, f"tensor {key!r} declares {nbytes} bytes but its offsets span "
                          f"{offs[1] - offs[0]}")
    if offs[1] > data_len:
        raise _fail(name, f"tensor {key!r} ends at byte {offs[1]} of a {data_len}-byte data "
                          f"section: truncated?")
    return dt, tuple(shape), offs[0], offs[1]


def _read_declarations(meta: dict, name: str) -> tuple[dict, dict, list]:
    """Our declarations in __metadata__: (spec, metadata, tensor declarations)."""
    try:
        spec = _loads(meta["spec"])
        metadata = _loads(meta["metadata"])
        decls = _loads(meta["tensors"])
    except ValueError as e:
        raise _fail(name, f"__metadata__ holds invalid JSON ({e})") from None
    if not isinstance(spec, dict):
        raise _fail(name, "spec is not a JSON object")
    if not isinstance(metadata, dict):
        raise _fail(name, "metadata is not a JSON object")
    if not isinstance(decls, list):
        raise _fail(name, "tensors is not a JSON list")
    return spec, metadata, decls


def _expected_entries(decls: list, name: str) -> dict[str, tuple[str, tuple]]:
    """{safetensors key: (dtype name, shape)} that the declarations call for."""
    expected: dict[str, tuple[str, tuple]] = {}
    seen = set()
    for d in decls:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not d["name"]:
            raise _fail(name, "a tensor declaration lacks a name")
        tname, kind = d["name"], d.get("kind")
        if tname in seen:
            raise _fail(name, f"tensor {tname!r} declared twice")
        seen.add(tname)
        shape = d.get("shape")
        if not (isinstance(shape, list) and all(_is_int(s) and 0 <= s <= MAX_DIM for s in shape)):
            raise _fail(name, f"tensor {tname!r} declares a bad shape {shape!r}")
        if d.get("dtype") not in VALUE_DTYPES:
            raise _fail(name, f"tensor {tname!r} declares value dtype {d.get('dtype')!r}, "
                              f"expected one of {list(VALUE_DTYPES)}")
        if kind == "dense":
            if set(d) != {"name", "kind", "shape", "dtype"}:
                raise _fail(name, f"dense tensor {tname!r}: declaration keys {sorted(d)}")
            expected[tname] = (d["dtype"], tuple(shape))
        elif kind == "csr":
            if set(d) != {"name", "kind", "shape", "nnz", "index_dtype", "dtype"}:
                raise _fail(name, f"CSR tensor {tname!r}: declaration keys {sorted(d)}")
            if len(shape) != 2 or shape[0] >= MAX_DIM:
                raise _fail(name, f"CSR tensor {tname!r} declares shape {shape}, expected [rows, cols]")
            m, n = shape
            nnz = d["nnz"]
            if not (_is_int(nnz) and 0 <= nnz <= min(m * n, MAX_DIM)):
                raise _fail(name, f"CSR tensor {tname!r} declares nnz {nnz!r} for shape {m}x{n}")
            idt = index_dtype(n)
            if d["index_dtype"] != idt:
                raise _fail(name, f"CSR tensor {tname!r} with {n} columns declares index dtype "
                                  f"{d['index_dtype']!r}, expected {idt!r}")
            expected[f"{tname}.indptr"] = ("I32", (m + 1,))
            expected[f"{tname}.indices"] = (idt, (nnz,))
            expected[f"{tname}.data"] = (d["dtype"], (nnz,))
        else:
            raise _fail(name, f"tensor {tname!r} has kind {kind!r}, expected 'dense' or 'csr'")
    return expected


def _match_declarations(expected: dict, entries: dict, decls: list, name: str) -> None:
    if len(expected) != sum(3 if d["kind"] == "csr" else 1 for d in decls):
        raise _fail(name, "tensor declarations collide")
    missing = sorted(set(expected) - set(entries))
    if missing:
        raise _fail(name, f"declared tensor {missing[0]!r} is missing from the file")
    unexpected = sorted(set(entries) - set(expected))
    if unexpected:
        raise _fail(name, f"undeclared tensor {unexpected[0]!r} in the file")
    for key, (dt, shape) in expected.items():
        if entries[key][0] != dt:
            raise _fail(name, f"tensor {key!r} is {entries[key][0]}, declared {dt}")
        if entries[key][1] != shape:
            raise _fail(name, f"tensor {key!r} has shape {list(entries[key][1])}, declared {list(shape)}")


def _decode_tensors(blob: bytes, base: int, entries: dict, decls: list, meta: dict,
                    name: str) -> tuple[dict, dict]:
    """Integrity (the checksum), then contents: {name: array | HostCSR}, {name: bytes}."""
    view = memoryview(blob)

    def raw(key):
        _, _, b, e = entries[key]
        return view[base + b:base + e]

    order = [k for d in decls for k in ((d["name"],) if d["kind"] == "dense"
                                        else tuple(f"{d['name']}.{p}" for p in CSR_PARTS))]
    if _checksum(meta, [raw(k) for k in order]) != meta["checksum"]:
        raise _fail(name, "checksum mismatch: the file is corrupt")

    def arr(key):
        dt, shape, b, e = entries[key]
        return np.frombuffer(blob, dtype=DTYPES[dt], count=math.prod(shape), offset=base + b).reshape(shape)

    tensors, tensor_bytes = {}, {}
    for d in decls:
        tname = d["name"]
        if d["kind"] == "dense":
            a = arr(tname)
            if not np.isfinite(a).all():
                raise _fail(name, f"tensor {tname!r}: values not finite (NaN or inf)")
            tensors[tname] = a.astype(np.float32)
            tensor_bytes[tname] = a.nbytes
        else:
            indptr, indices, data = (arr(f"{tname}.{p}") for p in CSR_PARTS)
            why = csr_problem(indptr, indices, data, tuple(d["shape"]), d["nnz"])
            if why:
                raise _fail(name, f"tensor {tname!r}: {why}")
            tensors[tname] = HostCSR(indptr.astype(np.int32), indices.astype(np.int32),
                                     data.astype(np.float32), tuple(d["shape"]))
            tensor_bytes[tname] = indptr.nbytes + indices.nbytes + data.nbytes
    return tensors, tensor_bytes


def _read_bytes(path) -> bytes:
    p = Path(path)
    try:
        if p.exists() and not p.is_dir() and not p.is_file():
            raise ModelFileError(f"{path}: not a regular file")
        return p.read_bytes()
    except OSError as e:
        raise ModelFileError(unreadable(path, e, "model file")) from None


def read_model_file(path) -> tuple[dict, dict, dict]:
    """(spec, tensors, metadata) of a model file.  tensors: {name: float32 array | HostCSR with
    int32 indptr and indices and float32 data}, in the order they were written.  Any problem with
    the file raises ModelFileError with one line."""
    parsed = parse_model_bytes(_read_bytes(path), str(path))
    return parsed.spec, parsed.tensors, parsed.metadata


# ---- the report behind `proxcl info` --------------------------------------------------------------

def file_report(path) -> dict:
    """Per tensor: name, kind, shape, nnz (stored entries for CSR, nonzero values for dense),
    density, bytes (what its arrays take in the file).  Totals: params, nnz, density,
    params_ratio (params / nnz), file_bytes (the whole file, header included), dense_bytes
    (params x 4, float32 dense), bytes_ratio (dense_bytes / file_bytes)."""
    parsed = parse_model_bytes(_read_bytes(path), str(path))
    layers = []
    for d in parsed.decls:
        t = parsed.tensors[d["name"]]
        size = math.prod(d["shape"])
        nnz = d["nnz"] if d["kind"] == "csr" else int(np.count_nonzero(t))
        layers.append({"name": d["name"], "kind": d["kind"], "shape": list(d["shape"]), "nnz": nnz,
                       "density": nnz / size if size else 0.0, "bytes": parsed.tensor_bytes[d["name"]]})
    params = sum(math.prod(layer["shape"]) for layer in layers)
    nnz = sum(layer["nnz"] for layer in layers)
    dense_bytes = 4 * params
    total = {"params": params, "nnz": nnz, "density": nnz / params if params else 0.0,
             "params_ratio": params / nnz if nnz else None, "file_bytes": parsed.file_bytes,
             "dense_bytes": dense_bytes, "bytes_ratio": dense_bytes / parsed.file_bytes}
    return {"layers": layers, "total": total}


# ---- models -------------------------------------------------------------------------------------

def save(model, path, half: bool = False, metadata: dict | None = None) -> None:
    """Write ``model`` (its spec and sparse_state()) to ``path`` atomically; each CSR weight is
    stored as CSR only when that takes fewer bytes than dense (smaller_form)."""
    shapes = {p.name: p.shape for p in model.params}
    tensors = {name: smaller_form(t, shapes[name], half) for name, t in model.sparse_state().items()}
    write_model_file(path, model.spec, tensors, metadata=metadata, half=half)


def load(path, device=None, *, with_metadata: bool = False):
    """Read a model file and build the model on ``device``; with_metadata, return (model, metadata)."""
    from . import models

    spec, tensors, metadata = read_model_file(path)
    try:
        # CSR weights are made CSR from the start: the dense form never exists on the device
        model = models.build(spec, device=device, csr=[n for n, v in tensors.items() if isinstance(v, HostCSR)])
        model.load_sparse_state(tensors)
    except (ValueError, KeyError, TypeError, IndexError, MemoryError, OverflowError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{path}: its model cannot be built: {msg}") from None
    return (model, metadata) if with_metadata else model


__all__ = ["ModelFileError", "write_model_file", "read_model_file", "model_file_bytes",
           "parse_model_bytes", "file_report", "save", "load", "index_dtype", "csr_nbytes", "dense_nbytes",
           "smaller_form", "FORMAT_VERSION"]
