"""The issue's bar: LeNet-5 trained for 2 epochs on Fashion-MNIST with proxcl.torch.ProxSGD in a
plain PyTorch loop, exported, gives in proxcl (on the test device, PoCL in CI) the logits of
PyTorch (relative error <= 1e-5) with the same nonzero count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import proxcl
import proxcl.torch as pt
from helpers import rel_err

pytestmark = pytest.mark.usefixtures("torch_float32")


def test_lenet5_trained_in_pytorch_runs_in_proxcl(dev, fashion, tmp_path):
    torch.manual_seed(0)
    model = pt.module_from_spec("lenet5")
    x = torch.from_numpy(fashion.images["train"])
    y = torch.from_numpy(fashion.labels["train"].astype(np.int64))
    opt = pt.ProxSGD(model.named_parameters(), lr=0.02, l1=1e-3, momentum=0.9, reweight_eps=0.03)
    for epoch in range(2):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for s in range(0, len(y), 256):
            idx = order[s:s + 256]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        opt.end_epoch()
    nnz, weights = opt.nonzero_count()
    assert nnz < 0.6 * weights, "the penalty should have removed weights"

    path = tmp_path / "lenet5.proxcl"
    pt.export(model, path, input_shape=[1, 28, 28], normalisation=fashion.normalisation,
              class_names=fashion.class_names)
    images = fashion.images["test"]
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(images)).numpy()
    loaded = proxcl.load(path, device=dev)
    logits = loaded.forward(images)
    assert rel_err(logits, ref) <= 1e-5
    assert sum(p.nnz for p in loaded.params if p.penalised) == nnz
    assert float((ref.argmax(1) == fashion.labels["test"]).mean()) > 0.8
    assert float((logits.argmax(1) == ref.argmax(1)).mean()) >= 0.999
