"""The kernel host modules, one per kernel file (DESIGN.md):

* ``dense``  -- ``kernels/dense.cl``: GEMM, transpose, soft-threshold, DenseMatrix;
* ``sparse`` -- ``kernels/csr.cl``: CSRMatrix and its products, device-side dense -> CSR and
  compaction, gather/scatter, host CSR helpers;
* ``nn``     -- ``kernels/nn.cl``: the layer kernels;
* ``optim``  -- ``kernels/optim.cl``: the fused optimizer updates and apply_mask;
* ``probe``  -- ``kernels/probe.cl``: device measurements for the benchmarks' floors.

Only these modules build and launch kernels."""
from .dense import DenseMatrix, gemm, transpose, soft_threshold
from .sparse import CSRMatrix, CSRPattern, HostCSR, csr_problem, entry_rows, gather, scatter

__all__ = ["gemm", "transpose", "soft_threshold", "DenseMatrix", "CSRMatrix", "CSRPattern", "HostCSR",
           "csr_problem", "entry_rows", "gather", "scatter"]
