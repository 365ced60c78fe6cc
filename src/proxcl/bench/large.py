"""Large-layer benchmark (``proxcl bench kernels --large``): the three sparse products of a
training step and the dense GEMM on layers of thousands of rows, against torch.

Per weight shape W [m, k], batch width n and density d, four operations, each through
proxcl's public API and through torch on the same device kind (CUDA on a GPU device, the CPU
on a CPU device; no peer when torch is missing or has no CUDA for a GPU device):

* ``W @ X``     SpMM, X [k, n]               peer: torch CSR @ dense (cuSPARSE on CUDA)
* ``W.T @ D``   transposed SpMM, D [m, n]    peer: the CSR tensor's transpose @ dense
* ``sddmm``     ``W.sddmm(D, X)``: (D X^T) on W's support      peer: torch.sparse.sampled_addmm
* ``gemm``      proxcl's dense product of the same W            peer: torch.mm (cuBLAS on CUDA)

Clocks: **dev** is the summed OpenCL profiling events of one call; **api** and **out=** are
the host clock per call with ``CALLS`` calls (fewer when they are slow) queued back to back
and one wait, through the public call that allocates its result and through the ``out=``
form, on a second Device of the same OpenCL device made without profiling, as a user's is
(a queue with profiling on may cost more per command); **peer** is the same
back-to-back host clock for torch's call (which allocates its result too).  **vs peer** is
peer / api: > 1 when proxcl is faster.

Floors: the DRAM floor is the bytes the operation must move (values, indices, row pointers,
the dense operands once, the result once) over the bandwidth of a large buffer copy.  A sparse
product with a dense operand also re-reads an n-wide row of that operand for every stored
entry: ``4 n nnz`` bytes through the caches, timed against the bandwidth of re-reading a
buffer that stays in them (``probe.cl``'s reread).  The floor is the larger of the two, and
**bound** names it; **x floor** is dev / floor.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from .. import ops
from ..ops import HostCSR
from ..ops.probe import cache_bandwidth
from ..ops.sparse import index_dtype
from ..runtime import Device
from ..sparse_init import random_support
from .timing import SETTLE_S, copy_bandwidth, machine_info, time_opencl, time_pipelined

# Layer shapes (m, k) and batch widths n: those of docs/PERFORMANCE.md's large-layer bars
SHAPES = [((4096, 4096), 1024), ((16384, 4096), 256), ((4096, 16384), 2048), ((8192, 8192), 64)]
DENSITIES = [0.005, 0.01, 0.02, 0.05, 0.1]
# The cases those bars are set on, bold in the table (--quick runs only these): ((m, k), n, density)
BAR_CASES = [((4096, 4096), 1024, 0.01), ((4096, 4096), 1024, 0.05), ((16384, 4096), 256, 0.01),
             ((4096, 16384), 2048, 0.02), ((8192, 8192), 64, 0.01)]
CALLS = 50          # as issue 11 times the public calls: 50 back to back, one wait
CHECK = 8
OPS = ("W @ X", "W.T @ D", "sddmm", "gemm")
PEER = {"W @ X": "torch CSR @ X", "W.T @ D": "torch CSR.t() @ D", "sddmm": "torch sampled_addmm",
        "gemm": "torch.mm"}


def _pipelined_ms(fn, sync) -> float:
    """time_pipelined with CALLS calls per batch within a 2 s budget, after the pause that lets
    the library timed before it (torch's threads, PoCL's) go quiet."""
    time.sleep(SETTLE_S)
    return time_pipelined(None, fn, calls=CALLS, sync=sync, budget_s=2.0)


def floor_bytes(op: str, m: int, k: int, n: int, nnz: int, idx_bytes: int) -> tuple[int, int]:
    """(DRAM bytes, cache bytes) the operation must move at least."""
    entries = (4 + idx_bytes) * nnz
    if op == "W @ X":
        return entries + 4 * (m + 1) + 4 * k * n + 4 * m * n, 4 * n * nnz
    if op == "W.T @ D":
        return entries + 4 * (k + 1) + 4 * m * n + 4 * k * n, 4 * n * nnz
    if op == "sddmm":                 # both dense operands once, the row and column of every entry
        return 4 * m * n + 4 * k * n + (4 + 2 * idx_bytes) * nnz, 4 * n * nnz
    return 4 * (m * k + k * n + m * n), 0


class _Peer:
    """torch on the device kind: CUDA for a GPU device, the CPU for a CPU device; none (``torch``
    None) without torch, or for a GPU device when torch has no CUDA."""

    def __init__(self, dev: Device):
        try:
            import torch
        except ImportError:
            self.torch = None
            return
        self.torch = torch
        self.cuda = (not dev.is_cpu) and torch.cuda.is_available()
        if not dev.is_cpu and not self.cuda:
            self.torch = None
            return
        self.where = f"CUDA {torch.cuda.get_device_name()}" if self.cuda else \
            f"CPU, {torch.get_num_threads()} threads"

    def tensor(self, a):
        t = self.torch.from_numpy(np.ascontiguousarray(a))
        return t.cuda() if self.cuda else t

    def csr(self, indptr, indices, data, shape):
        torch = self.torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            t = torch.sparse_csr_tensor(torch.from_numpy(indptr.astype(np.int64)),
                                        torch.from_numpy(indices.astype(np.int64)),
                                        torch.from_numpy(data), size=shape, check_invariants=False)
        return t.cuda() if self.cuda else t

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, fn) -> float | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return _pipelined_ms(fn, self.sync)
        except (RuntimeError, NotImplementedError):
            return None              # an operation this torch build lacks on this device


def _rel_err(got, ref) -> float:
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def run(device: str | None = None, *, quick: bool = False, shapes=None, densities=None,
        seed: int = 0, log=print) -> dict:
    """Run the benchmark; ``shapes`` [((m, k), n)] and ``densities`` replace the defaults, and
    ``quick`` runs only the bar cases.  Returns a JSON-ready dict (``rows``: one per operation
    and case)."""
    dev = Device(device, profile=True)
    plain = Device(device)           # the api and out= clocks: a queue without profiling
    peer = _Peer(dev)
    cases = (BAR_CASES if quick and shapes is None else
             [(s, n, d) for s, n in (shapes or SHAPES) for d in (densities or DENSITIES)])
    bw = copy_bandwidth(dev)
    cbw, csize = cache_bandwidth(dev)
    result = {"benchmark": "kernels-large",
              "device": {"name": dev.name, "platform": dev.platform_name,
                         "type": "cpu" if dev.is_cpu else "gpu"},
              "host": machine_info(), "peer": None if peer.torch is None else peer.where,
              "torch": None if peer.torch is None else peer.torch.__version__,
              "copy_bandwidth_gbs": bw, "cache_bandwidth_gbs": cbw, "cache_probe_bytes": csize,
              "calls": CALLS, "rows": []}
    log(f"device: {dev.platform_name} | {dev.name}  (copy {bw:.0f} GB/s, cache re-read {cbw:.0f} GB/s "
        f"on {csize >> 10} KiB)")
    log(f"peer: torch {result['torch']} on {result['peer']}" if peer.torch else
        "peer: none (torch is not installed, or has no CUDA for this GPU device)")
    log(HEADER)
    rng = np.random.default_rng(seed)
    t_start = time.perf_counter()
    gemm_done: dict = {}
    for (m, k), n, d in cases:
        for row in _case(dev, plain, peer, rng, (m, k), n, d, bw, cbw, gemm_done):
            result["rows"].append(row)
            log(format_row(row))
    log("")
    log(LEGEND)
    result["elapsed_s"] = time.perf_counter() - t_start
    result["host_after"] = machine_info()
    return result


def _csr_product(v64, out_idx, in_idx, size: int, a64) -> np.ndarray:
    """float64 sum over entries e of v64[e] * a64[in_idx[e], :] into row out_idx[e] of a
    [size, a64.shape[1]] result: W @ A with (out, in) = (rows, columns), W^T @ A swapped."""
    return np.stack([np.bincount(out_idx, v64 * a64[in_idx, j], minlength=size)
                     for j in range(a64.shape[1])], 1)


def _check_columns(n: int) -> np.ndarray:
    """CHECK columns spread over 0 .. n-1 (every vector lane and segment may differ)."""
    return np.unique(np.r_[np.linspace(0, n - 1, CHECK).astype(int), n - 1])


def _operands(d, indptr, indices, data, shape, x, dy):
    """W (CSR), X, D and the three outputs on Device d."""
    (m, k), n = shape, x.shape[1]
    w = ops.CSRMatrix.from_arrays(indptr, indices, data, shape, d)
    return (w, d.to_device(x), d.to_device(dy), d.empty((m, n)), d.empty((k, n)),
            d.empty((int(indices.size),)))


def _case(dev, plain, peer, rng, shape, n, d, bw, cbw, gemm_done) -> list[dict]:
    (m, k) = shape
    indptr, indices = random_support(rng, shape, round(d * m * k))
    data = rng.standard_normal(indices.size).astype(np.float32)
    nnz = int(indices.size)
    x = rng.standard_normal((k, n)).astype(np.float32)
    dy = rng.standard_normal((m, n)).astype(np.float32)
    w, xd, dyd, y, z, g = _operands(dev, indptr, indices, data, shape, x, dy)
    pw, pxd, pdyd, py, pz, pg = _operands(plain, indptr, indices, data, shape, x, dy)
    idx_bytes = np.dtype(index_dtype(shape)).itemsize
    # float64 references from the CSR arrays, on a sample: CHECK columns spread over the batch,
    # CHECK * 512 entries of the SDDMM (whole float64 products of the largest cases take minutes
    # and a dense float64 W 512 MiB)
    cols = _check_columns(n)
    ent = np.sort(rng.choice(nnz, size=min(nnz, CHECK * 512), replace=False)) if nnz else np.zeros(0, int)
    rows = np.repeat(np.arange(m), np.diff(indptr))
    v64, x64, dy64 = data.astype(np.float64), x[:, cols].astype(np.float64), dy[:, cols].astype(np.float64)
    w_x = lambda: _csr_product(v64, rows, indices, m, x64)          # noqa: E731
    # per operation: the public call and its out= form on the plain device, the out= form on the
    # profiling one (device time, and the result checked), that result, its reference
    pwt = pw.T
    calls = {"W @ X": (lambda: pw @ pxd, lambda: pw.matmul(pxd, out=py),
                       lambda: w.matmul(xd, out=y), lambda: y.get()[:, cols], w_x),
             "W.T @ D": (lambda: pwt @ pdyd, lambda: pw.matmul_t(pdyd, out=pz), lambda: w.matmul_t(dyd, out=z),
                         lambda: z.get()[:, cols], lambda: _csr_product(v64, indices, rows, k, dy64)),
             "sddmm": (lambda: pw.sddmm(pdyd, pxd), lambda: pw.sddmm(pdyd, pxd, out=pg),
                       lambda: w.sddmm(dyd, xd, out=g), lambda: g.get()[ent],
                       lambda: np.einsum("en,en->e", dy[rows[ent]].astype(np.float64),
                                         x[indices[ent]].astype(np.float64)))}
    tp = None
    if peer.torch is not None:
        tw, tx, tdy = peer.csr(indptr, indices, data, shape), peer.tensor(x), peer.tensor(dy)
        txt = peer.tensor(x.T)
        tp = {"W @ X": lambda: tw @ tx, "W.T @ D": lambda: tw.t() @ tdy,
              "sddmm": lambda: peer.torch.sparse.sampled_addmm(tw, tdy, txt, beta=0.0)}
    out = []
    for op, (api, plain_into, into, got, ref) in calls.items():
        tm = time_opencl(dev, into, repeat=10, budget_s=0.3)
        into()
        out.append(_row(op, m, k, n, d, nnz, idx_bytes, tm.device_ms,
                         _pipelined_ms(api, plain.finish), _pipelined_ms(plain_into, plain.finish),
                         peer.time(tp[op]) if tp else None, _rel_err(got(), ref()), bw, cbw))
    if (m, k, n) not in gemm_done:     # the dense product does not depend on the density
        wf = HostCSR(indptr, indices, data, shape).to_dense().astype(np.float32, copy=False)
        wdd, pwdd = dev.to_device(wf), plain.to_device(wf)
        tm = time_opencl(dev, lambda: ops.gemm(dev, wdd, xd, out=y), repeat=10, budget_s=0.3)
        ops.gemm(dev, wdd, xd, out=y)
        err = _rel_err(y.get()[:, cols], w_x())
        pt = None
        if peer.torch is not None:
            twd = peer.tensor(wf)
            pt = peer.time(lambda: peer.torch.mm(twd, tx))
        gemm_done[(m, k, n)] = _row("gemm", m, k, n, 1.0, m * k, 0, tm.device_ms,
                                    _pipelined_ms(lambda: ops.gemm(plain, pwdd, pxd), plain.finish),
                                    _pipelined_ms(lambda: ops.gemm(plain, pwdd, pxd, out=py), plain.finish),
                                    pt, err, bw, cbw)
        out.append(gemm_done[(m, k, n)])
    return out


def _row(op, m, k, n, d, nnz, idx_bytes, dev_ms, api_ms, out_ms, peer_ms, err, bw, cbw) -> dict:
    dram, cache = floor_bytes(op, m, k, n, nnz, idx_bytes)
    dram_ms, cache_ms = dram / (bw * 1e9) * 1e3, cache / (cbw * 1e9) * 1e3
    floor_ms, bound = (cache_ms, "cache") if cache_ms > dram_ms else (dram_ms, "dram")
    return {"op": op, "m": m, "k": k, "n": n, "density": d, "nnz": nnz,
            "device_ms": dev_ms, "api_ms": api_ms, "out_ms": out_ms, "peer": PEER[op],
            "peer_ms": peer_ms, "vs_peer": (peer_ms / api_ms) if peer_ms and api_ms else None,
            "floor_ms": floor_ms, "bound": bound,
            "x_floor": (dev_ms / floor_ms) if dev_ms and floor_ms else None, "rel_err": err,
            "bar": ((m, k), n, d) in BAR_CASES or (op == "gemm" and ((m, k), n) == ((4096, 4096), 1024))}


HEADER = ("| op | W | n | dens | nnz | dev | api | out= | peer | vs peer | floor | bound | x floor |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")

LEGEND = "\n".join([
    "Times in ms.  W @ X: SpMM; W.T @ D: transposed SpMM; sddmm: (D X^T) on W's support; gemm: dense W X.",
    "  dev      summed OpenCL profiling events of one call",
    f"  api      host clock per call, {CALLS} public calls (fewer when slow; each allocating its result) queued back to back,",
    "           on a Device without profiling (as a user's)",
    "  out=     the same with the result array given",
    "  peer     torch's call, timed like api (torch CSR @ X, CSR.t() @ D, sparse.sampled_addmm, torch.mm)",
    "  vs peer  peer / api (> 1: proxcl is faster)",
    "  floor    the larger of DRAM bytes / copy bandwidth and the dense operand's re-reads (4 n nnz",
    "           bytes) / cache re-read bandwidth; bound names it; x floor = dev / floor",
    "  bold     the cases the large-layer bars of docs/PERFORMANCE.md are set on"])


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 100 else f"{v:.1f}")


def format_row(row: dict) -> str:
    shape = f"{row['m']}x{row['k']}"
    dens = "dense" if row["op"] == "gemm" else f"{row['density'] * 100:g}%"
    cells = [row["op"], f"**{shape}**" if row["bar"] else shape, str(row["n"]), dens, str(row["nnz"]),
             _ms(row["device_ms"]), _ms(row["api_ms"]), _ms(row["out_ms"]), _ms(row["peer_ms"]),
             "-" if row["vs_peer"] is None else f"{row['vs_peer']:.2f}x", _ms(row["floor_ms"]),
             row["bound"], "-" if row["x_floor"] is None else f"{row['x_floor']:.1f}"]
    return "| " + " | ".join(cells) + " |"
