"""PyTorch interop, an optional extra (``pip install 'proxcl[torch]'``): proxcl's proximal
optimizers as ``torch.optim`` optimizers, a debiasing helper that freezes the support, export of
an ``nn.Module`` to a proxcl model file and back, and data-parallel training (``proxcl.torch.ddp``).

The device runtime never imports this package; only code that uses PyTorch does.
"""

try:
    import torch  # noqa: F401  (the top-level PyTorch package: imports here are absolute)
except ImportError as e:          # pragma: no cover - the test extra installs torch
    raise ImportError("proxcl.torch needs PyTorch: pip install 'proxcl[torch]'") from e

from proxcl.torch.convert import export, load, module_from_spec
from proxcl.torch.trace import to_spec
from proxcl.torch.debias import FrozenSupport, freeze_support
from proxcl.torch.optim import RDA, ProxAdam, ProxSGD

__all__ = ["ProxSGD", "ProxAdam", "RDA", "FrozenSupport", "freeze_support", "export", "load",
           "module_from_spec", "to_spec"]
