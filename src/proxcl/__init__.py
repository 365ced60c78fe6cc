"""proxcl: sparse deep neural networks trained from scratch with proximal l1 methods,
stored and run (training included) as CSR matrices on any OpenCL device."""

from .runtime import Device, DeviceError, default_device, list_devices
from .ops import CSRMatrix, gemm, soft_threshold, transpose

__version__ = "0.1.0"

__all__ = ["Device", "DeviceError", "default_device", "list_devices",
           "CSRMatrix", "gemm", "soft_threshold", "transpose", "__version__"]
