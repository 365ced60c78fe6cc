"""Kernel-level operations: dense GEMM and element-wise ops, CSR products."""
from .dense import gemm, transpose, soft_threshold
from .sparse import CSRMatrix, CSRPattern, HostCSR, gather, scatter

__all__ = ["gemm", "transpose", "soft_threshold", "CSRMatrix", "CSRPattern", "HostCSR", "gather", "scatter"]
