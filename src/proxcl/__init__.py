"""proxcl: sparse deep neural networks trained from scratch with proximal l1 methods,
stored and run (training included) as CSR matrices on any OpenCL device."""

from .runtime import Device, DeviceError, default_device, list_devices
from .ops import CSRMatrix, gemm, soft_threshold, transpose
from .data import DataError, load_dataset
from .modelfile import ModelFileError, load, save
from .training import TrainConfig, TrainingError, evaluate, train
from . import models

__version__ = "0.1.0"

__all__ = ["Device", "DeviceError", "default_device", "list_devices",
           "CSRMatrix", "gemm", "soft_threshold", "transpose",
           "DataError", "load_dataset", "ModelFileError", "load", "save",
           "TrainConfig", "TrainingError", "evaluate", "train", "models", "__version__"]
