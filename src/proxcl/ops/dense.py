"""Dense operations on device arrays: GEMM (NN, NT, TN, TT) with a fused bias + ReLU
epilogue, transpose, soft-thresholding."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla

from ..runtime import Device


def _as2d(dev: Device, a, name: str) -> cla.Array:
    a = dev.to_device(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    return a


def _out(dev: Device, out, shape) -> cla.Array:
    if out is None:
        return dev.empty(shape)
    if tuple(out.shape) != tuple(shape) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {tuple(shape)}, got {out.dtype} {tuple(out.shape)}")
    return out


def transpose(dev: Device, a, out=None) -> cla.Array:
    """out[n, m] = a[m, n]^T."""
    a = _as2d(dev, a, "a")
    m, n = a.shape
    out = _out(dev, out, (n, m))
    if a.size:
        dev.launch(dev.kernel("dense.cl", "transpose"), (n, m), (16, 16), m, n, a, out)
    return out


def gemm(dev: Device, a, b, *, trans_a: bool = False, trans_b: bool = False,
         bias=None, relu: bool = False, out=None) -> cla.Array:
    """C = op(a) @ op(b) (+ bias[:, None]) (ReLU), float32 on the device.

    a: [M, K] ([K, M] with trans_a); b: [K, N] ([N, K] with trans_b); bias: [M] or None.
    On CPUs an NT product runs as row dot products (no copy of b); elsewhere, and for TT, b is
    transposed once into a temporary and the NN kernel runs.
    """
    a = _as2d(dev, a, "a")
    b = _as2d(dev, b, "b")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    Kb, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != Kb:
        raise ValueError(f"gemm: inner dimensions differ ({K} vs {Kb})")
    if bias is not None:
        bias = dev.to_device(bias)
        if bias.shape != (M,):
            raise ValueError(f"bias must have shape ({M},), got {bias.shape}")
    out = _out(dev, out, (M, N))
    if M == 0 or N == 0:
        return out
    if K == 0:
        out.fill(np.float32(0))
        if bias is not None or relu:
            raise ValueError("gemm: K == 0 with an epilogue is not supported")
        return out
    t = dev.tuning
    if trans_b and not trans_a and t["gemm_nt_rn"]:
        # CPU form of A B^T: dot products of rows, no transposed copy of B
        rm, rn, lx = t["gemm_nt_rm"], t["gemm_nt_rn"], t["gemm_rows"]
        k = dev.kernel("dense.cl", "gemm_nt_blk", VEC=t["gemm_vec"], RM=rm, RN=rn, LX=lx)
        dev.launch(k, (-(-M // rm), -(-N // rn)), (lx, 1), M, N, K, a, b, out, bias, int(relu))
        return out
    if trans_b:
        b = transpose(dev, b)
    vec, rm, nv = t["gemm_vec"], t["gemm_rm"], t["gemm_nv"]
    if nv:   # CPU form: an rm x nv*vec block of C in registers, row blocks varying fastest
        lx = t["gemm_rows"]
        k = dev.kernel("dense.cl", "gemm_blk", VEC=vec, RM=rm, NV=nv, LX=lx, TRANS_A=int(trans_a))
        dev.launch(k, (-(-M // rm), -(-N // (nv * vec))), (lx, 1), M, N, K, a, b, out, bias, int(relu))
    else:    # GPU form: work-items coalesced over the columns
        lx, ly = t["gemm_local"]
        k = dev.kernel("dense.cl", "gemm", VEC=vec, RM=rm, LX=lx, LY=ly, TRANS_A=int(trans_a),
                       PX_ALIGNED=int(t["aligned"] and N % vec == 0))
        gx, gy = -(-N // vec), -(-M // rm)
        slices, ks = split_k(gx * gy, K)
        if slices == 1:
            dev.launch(k, (gx, gy, 1), (lx, ly, 1), M, N, K, a, b, out, bias, int(relu), K)
        else:
            part = dev.empty((slices, M, N))
            dev.launch(k, (gx, gy, slices), (lx, ly, 1), M, N, K, a, b, part, None, 0, ks)
            dev.launch(dev.kernel("dense.cl", "gemm_sum_slices"), (M * N,), (t["ew_local"],),
                       M * N, N, slices, part, out, bias, int(relu))
    return out


def split_k(items: int, K: int, *, target: int = 16384, min_slice: int = 256) -> tuple[int, int]:
    """(slices, k per slice) for the GPU GEMM: a product with few output blocks and a long inner
    dimension (weight gradients over a whole batch: K = N*Ho*Wo) gets split along K so that the
    device has about ``target`` work-items; the partial products are added in a fixed order."""
    if items >= target or K < 2 * min_slice:
        return 1, K
    slices = min(-(-target // items), K // min_slice, 256)
    ks = -(-K // slices)
    return -(-K // ks), ks


def soft_threshold(dev: Device, z, tau, *, scale: float = 1.0, out=None) -> cla.Array:
    """S_tau(z) = sign(z) max(|z| - tau, 0) element-wise; tau a scalar or an array like z
    (then the threshold is scale * tau[q]).  out may be z itself (in place)."""
    z = dev.to_device(z)
    out = _out(dev, out, z.shape) if out is not None else dev.empty(z.shape)
    if np.isscalar(tau):
        tau_scale, tau_arr = float(tau) * scale, None
    else:
        tau_arr = dev.to_device(tau)
        if tau_arr.shape != z.shape:
            raise ValueError(f"tau must be a scalar or have shape {z.shape}, got {tau_arr.shape}")
        tau_scale = scale
    if z.size:
        dev.launch(dev.kernel("elementwise.cl", "soft_threshold"), (z.size,), (dev.tuning["ew_local"],),
                   z.size, z, out, tau_scale, tau_arr)
    return out
