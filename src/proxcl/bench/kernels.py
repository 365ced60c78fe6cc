"""Kernel benchmark: proxcl's CSR product and dense GEMM against their peers.

For every weight shape W [m, k], batch width n and density d: ``Y = W X`` with X [k, n]
through proxcl's CSR SpMM and proxcl's dense GEMM, and through the peers of the device kind:
numpy dense (OpenBLAS), scipy.sparse CSR, torch dense and torch CSR on a CPU device; torch CUDA
dense (cuBLAS) and CSR (cuSPARSE) on a GPU device, when CUDA is available.

Clocks (see :mod:`proxcl.bench.timing`): proxcl has device time (OpenCL profiling events),
wall time (one call plus a wait, after warm-up) and pipelined wall time (calls back to back,
one wait).  CPU peers have wall time; torch CUDA has CUDA-event time and wall time.  Ratios
(peer time / proxcl CSR time, > 1: proxcl is faster) use one basis per run: wall time on a
CPU device (all peers are synchronous host calls), device time on a GPU device (OpenCL events
against CUDA events).

The memory floor of a CSR product: it must read the values, the column indices and the row
pointers once, the dense operand X once and write Y once, so
``bytes = 8 nnz + 4 (m + 1) + 4 k n + 4 m n`` and ``floor = bytes / bandwidth`` with the
bandwidth of a large device buffer copy.  On a CPU, X and Y of these shapes fit in the caches,
so the DRAM floor is a loose lower bound; "x floor" says how far above it proxcl's device time
is.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from .. import ops
from ..ops import HostCSR
from ..runtime import Device
from .timing import (copy_bandwidth, machine_info, time_cuda, time_host, time_opencl,
                     time_pipelined)

SHAPES = [(300, 784), (100, 300), (500, 800), (50, 500), (20, 25)]
BATCHES = [64, 256, 1024]
DENSITIES = [1.0, 0.3, 0.1, 0.05, 0.02, 0.01]
BAR_SHAPE = (500, 800, 256)            # W 500x800 times X 800x256: the bar
QUICK_SHAPES = [(500, 800), (300, 784)]
QUICK_BATCHES = [256]
QUICK_DENSITIES = [0.05, 0.01]


@dataclass
class Peers:
    """Which peers can run here."""
    scipy: bool
    torch: bool
    cuda: bool


def _find_peers(dev: Device) -> Peers:
    try:
        import scipy.sparse  # noqa: F401
        has_scipy = True
    except ImportError:
        has_scipy = False
    try:
        import torch
        has_torch = True
        has_cuda = (not dev.is_cpu) and torch.cuda.is_available()
    except ImportError:
        has_torch = has_cuda = False
    return Peers(scipy=has_scipy, torch=has_torch, cuda=has_cuda)


def random_csr_arrays(rng, m: int, k: int, density: float):
    """A random float32 CSR matrix with round(density * m * k) entries (sorted indices)."""
    nnz = int(round(density * m * k))
    flat = np.sort(rng.choice(m * k, size=nnz, replace=False)) if nnz < m * k else np.arange(m * k)
    rows, cols = np.divmod(flat, k)
    indptr = np.zeros(m + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
    data = rng.standard_normal(nnz).astype(np.float32)
    return indptr, cols.astype(np.int32), data


def csr_floor_bytes(m: int, k: int, n: int, nnz: int) -> int:
    """Bytes a CSR product must move at least: values + indices + row pointers, X, Y."""
    return 8 * nnz + 4 * (m + 1) + 4 * k * n + 4 * m * n


@dataclass
class _Bench:
    """What every case of one run shares."""
    dev: Device
    peers: Peers
    torch: object
    basis: str
    bw: float
    repeat: int
    budget_s: float

    def opencl(self, fn):
        return time_opencl(self.dev, fn, repeat=self.repeat, budget_s=self.budget_s)

    def host(self, fn):
        return time_host(fn, repeat=self.repeat, budget_s=self.budget_s)

    def cuda(self, fn):
        return time_cuda(fn, repeat=self.repeat, budget_s=self.budget_s)


def run(device: str | None = None, *, repeat: int = 30, quick: bool = False,
        budget_s: float = 0.3, seed: int = 0, log=print) -> dict:
    """Run the benchmark and return a JSON-ready dict (``rows``: one entry per case)."""
    dev = Device(device, profile=True)
    peers = _find_peers(dev)
    rng = np.random.default_rng(seed)
    shapes = QUICK_SHAPES if quick else SHAPES
    batches = QUICK_BATCHES if quick else BATCHES
    densities = QUICK_DENSITIES if quick else DENSITIES
    if quick:
        repeat = min(repeat, 15)
    torch = None
    if peers.torch:
        import torch
    b = _Bench(dev, peers, torch, "wall" if dev.is_cpu else "device", copy_bandwidth(dev), repeat, budget_s)
    result = _result_head(b)
    log(f"device: {dev.platform_name} | {dev.name}  (copy bandwidth {b.bw:.1f} GB/s)")
    if torch is not None:
        log(f"torch {torch.__version__}: {torch.get_num_threads()} CPU threads"
            + (f", CUDA {torch.cuda.get_device_name()}" if peers.cuda else ""))
    log(header(b.basis))
    t_start = time.perf_counter()
    for (m, k) in shapes:
        for n in batches:
            x = rng.standard_normal((k, n)).astype(np.float32)
            wd = rng.standard_normal((m, k)).astype(np.float32)
            xd, y = dev.to_device(x), dev.empty((m, n))
            dense = _dense_times(b, wd, x, xd, y)
            for d in densities:
                row = _csr_case(b, random_csr_arrays(rng, m, k, d), (m, k), d, x, xd, y, dense)
                result["rows"].append(row)
                log(format_row(row, b.basis))
    log("")
    log(legend(b.basis))
    result["elapsed_s"] = time.perf_counter() - t_start
    result["host_after"] = machine_info()
    return result


def _result_head(b: _Bench) -> dict:
    dev, torch = b.dev, b.torch
    return {
        "benchmark": "kernels",
        "device": {"name": dev.name, "platform": dev.platform_name,
                   "type": "cpu" if dev.is_cpu else "gpu",
                   "compute_units": int(dev.cl_device.max_compute_units),
                   "tuning": {k: list(v) if isinstance(v, tuple) else v for k, v in dev.tuning.items()}},
        "host": machine_info(),
        "torch": None if torch is None else {
            "version": torch.__version__, "threads": torch.get_num_threads(),
            "cuda_device": torch.cuda.get_device_name() if b.peers.cuda else None},
        "ratio_basis": b.basis,
        "copy_bandwidth_gbs": b.bw,
        "repeat": b.repeat,
        "rows": [],
    }


def _dense_times(b: _Bench, wd, x, xd, y) -> dict:
    """proxcl's GEMM and the dense peers on W X."""
    dev, torch = b.dev, b.torch
    wdd = dev.to_device(wd)
    dense = {"proxcl_gemm": b.opencl(lambda: ops.gemm(dev, wdd, xd, out=y))}
    if b.peers.cuda:
        tx, twd = torch.from_numpy(x).cuda(), torch.from_numpy(wd).cuda()
        dense["torch_cuda_dense"] = b.cuda(lambda: torch.mm(twd, tx))
    elif dev.is_cpu:
        dense["numpy_dense"] = b.host(lambda: wd @ x)
        if torch is not None:
            tx, twd = torch.from_numpy(x), torch.from_numpy(wd)
            dense["torch_dense"] = b.host(lambda: torch.mm(twd, tx))
    return dense


def _csr_case(b: _Bench, arrays, shape, d: float, x, xd, y, dense: dict) -> dict:
    """One row: proxcl's CSR SpMM and the sparse peers on W X at density d."""
    dev, torch = b.dev, b.torch
    indptr, indices, data = arrays
    (m, k), n, nnz = shape, x.shape[1], int(indices.size)
    w = ops.CSRMatrix.from_arrays(indptr, indices, data, shape, dev)
    t = {"proxcl_csr": b.opencl(lambda: w.matmul(xd, out=y))}
    pipe = time_pipelined(dev, lambda: w.matmul(xd, out=y))
    ref = HostCSR(indptr, indices, data, shape).to_dense().astype(np.float64) @ x
    got = y.get()
    err = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))
    if b.peers.cuda:
        tx = torch.from_numpy(x).cuda()
        tcsr = _torch_csr(torch, indptr, indices, data, shape).cuda()
        t["torch_cuda_csr"] = b.cuda(lambda: tcsr @ tx)
    elif dev.is_cpu:
        if b.peers.scipy:
            import scipy.sparse as sp
            ws = sp.csr_matrix((data, indices, indptr), shape=shape)
            t["scipy_csr"] = b.host(lambda: ws @ x)
        if torch is not None:
            tx = torch.from_numpy(x)
            tcsr = _torch_csr(torch, indptr, indices, data, shape)
            t["torch_csr"] = b.host(lambda: tcsr @ tx)
    t.update(dense)
    floor_ms = csr_floor_bytes(m, k, n, nnz) / (b.bw * 1e9) * 1e3
    own = t["proxcl_csr"]
    own_ms = own.wall_ms if b.basis == "wall" else own.device_ms
    ratios = {}
    for name, tm in t.items():
        if name != "proxcl_csr":
            peer_ms = tm.wall_ms if b.basis == "wall" or tm.device_ms is None else tm.device_ms
            ratios[name] = peer_ms / own_ms if own_ms else None
    return {"m": m, "k": k, "n": n, "density": d, "nnz": nnz,
            "times": {name: tm.as_dict() for name, tm in t.items()},
            "proxcl_csr_pipelined_ms": pipe,
            "ratios": ratios, "floor_ms": floor_ms,
            "x_floor": (own.device_ms / floor_ms) if own.device_ms else None,
            "rel_err": err, "bar": (m, k, n) == BAR_SHAPE}


def _torch_csr(torch, indptr, indices, data, shape):
    """A torch CSR tensor (CPU) from numpy arrays, without torch's beta-feature warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(indptr.astype(np.int64)),
                                       torch.from_numpy(indices.astype(np.int64)),
                                       torch.from_numpy(data), size=shape, check_invariants=False)


# ---- the table ---------------------------------------------------------------------------

CPU_PEERS = [("numpy_dense", "numpy"), ("scipy_csr", "scipy"), ("torch_dense", "torch"),
             ("torch_csr", "torch csr")]
GPU_PEERS = [("torch_cuda_dense", "cuBLAS"), ("torch_cuda_csr", "cuSPARSE")]


def _peers_of(basis: str):
    return CPU_PEERS if basis == "wall" else GPU_PEERS


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 100 else f"{v:.1f}")


def _ratio(v) -> str:
    return "-" if v is None else (f"{v:.2f}x" if v < 100 else f"{v:.0f}x")


def header(basis: str) -> str:
    peers = _peers_of(basis)
    cols = ["W", "n", "dens", "nnz", "csr dev", "csr wall", "csr pipe", "gemm"]
    cols += [label for _, label in peers]
    cols += [f"vs {label}" for _, label in peers] + ["x floor"]
    return "| " + " | ".join(cols) + " |\n|" + "|".join("---" for _ in cols) + "|"


def legend(basis: str | None = None) -> str:
    """What the table's columns are, in its units: the lines under it and, for no basis (either
    device kind), in --help."""
    if basis is None:
        peers = "numpy, scipy, torch, torch csr (CPU device) or cuBLAS, cuSPARSE (GPU device)"
        vs = "wall times on a CPU, device times on a GPU"
    else:
        peers = ", ".join(label for _, label in _peers_of(basis))
        vs = "wall times" if basis == "wall" else "device times (OpenCL against CUDA events)"
    return "\n".join([
        "Y = W X with W [m x k] at density dens (nnz entries) and X [k x n]; times in ms, medians after warm-up.",
        "  csr dev   proxcl's CSR product, summed OpenCL profiling events",
        "  csr wall  the same, host clock around one call and its wait",
        "  csr pipe  host clock per call with 20 calls queued back to back (as a training step runs it)",
        "  gemm      proxcl's dense product of the same W",
        f"  {peers}: the peers' times",
        f"  vs X      X's time / proxcl CSR's time (> 1: proxcl is faster), {vs}",
        "  x floor   csr dev / the time the bytes a CSR product must move take at the copy bandwidth",
        "  bold      W 500x800, n 256 at 5 % and 1 %: the cases the targets in docs/PERFORMANCE.md are set on"])


def format_row(row: dict, basis: str) -> str:
    t = row["times"]
    pick = (lambda tm: tm["wall_ms"]) if basis == "wall" else \
        (lambda tm: tm["device_ms"] if tm["device_ms"] is not None else tm["wall_ms"])
    gemm = t["proxcl_gemm"]["wall_ms"] if basis == "wall" else t["proxcl_gemm"]["device_ms"]
    bar = row.get("bar") and row["density"] in (0.05, 0.01)
    cells = [f"**{row['m']}x{row['k']}**" if bar else f"{row['m']}x{row['k']}", str(row["n"]), f"{row['density'] * 100:g}%", str(row["nnz"]),
             _ms(t["proxcl_csr"]["device_ms"]), _ms(t["proxcl_csr"]["wall_ms"]),
             _ms(row["proxcl_csr_pipelined_ms"]), _ms(gemm)]
    peers = _peers_of(basis)
    cells += [_ms(pick(t[name])) if name in t else "-" for name, _ in peers]
    cells += [_ratio(row["ratios"].get(name)) for name, _ in peers]
    cells.append("-" if row["x_floor"] is None else f"{row['x_floor']:.1f}")
    return "| " + " | ".join(cells) + " |"
