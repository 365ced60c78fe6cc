"""Export of nn.Modules to proxcl model files and back: proxcl's forward on the OpenCL device (and
the C runtime's) against the torch module's logits, zeros from every pruning method, CSR where
smaller, the unsupported layers, and proxcl export / import on the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import proxcl
import proxcl.torch as pt
from helpers import rel_err
from proxcl.cli import main
from proxcl.errors import InputError
from proxcl.modelfile import file_report, read_model_file

pytestmark = pytest.mark.usefixtures("torch_float32")


def _logits(module: nn.Module, x: np.ndarray) -> np.ndarray:
    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _sparsify(module: nn.Module, rng, density: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                p[torch.from_numpy(rng.random(tuple(p.shape)) >= density)] = 0


@pytest.mark.parametrize("density", [1.0, 0.05], ids=["dense", "sparse"])
@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_proxcl_runs_the_exported_module(dev, rng, tmp_path, name, density):
    torch.manual_seed(int(rng.integers(1 << 30)))
    module = pt.module_from_spec(name)
    _sparsify(module, rng, density)
    path = tmp_path / "m.proxcl"
    pt.export(module, path, input_shape=[1, 28, 28])
    x = rng.standard_normal((45, 1, 28, 28)).astype(np.float32)
    ref = _logits(module, x)
    model = proxcl.load(path, device=dev)
    assert rel_err(model.forward(x), ref) <= 1e-5
    kinds = {d["name"]: d["kind"] for d in file_report(path)["layers"]}
    weights = [n for n, p in module.named_parameters() if p.dim() >= 2]
    assert {kinds[n] for n in weights} == {"dense" if density == 1.0 else "csr"}
    assert all(kinds[n] == "dense" for n in kinds if n.endswith(".bias"))
    nnz = sum(int((p != 0).sum()) for p in module.parameters() if p.dim() >= 2)
    assert sum(p.nnz for p in model.params if p.penalised) == nnz
    back = pt.load(path)                 # and back into PyTorch
    assert np.array_equal(_logits(back, x), ref)


def test_csr_only_where_smaller(tmp_path, rng):
    """CSR with uint16 indices takes 4 (rows + 1) + 6 nnz bytes against 4 x size dense."""
    module = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))
    with torch.no_grad():
        module[0].weight[:, 60:] = 0            # 60 % dense: 4 x 51 + 6 x 3000 < 20000
        module[2].weight[:, 35:] = 0            # 70 % dense: 4 x 11 + 6 x 350 > 2000
    pt.export(module, tmp_path / "m.proxcl")
    kinds = {d["name"]: (d["kind"], d["nnz"]) for d in file_report(tmp_path / "m.proxcl")["layers"]}
    assert kinds["0.weight"] == ("csr", 3000) and kinds["2.weight"] == ("dense", 350)
    spec, tensors, meta = read_model_file(tmp_path / "m.proxcl")
    assert spec["input_shape"] == [100] and meta["torch_layers"] == {"0": "0", "2": "2"}


def test_prune_masks_are_taken_as_they_are(dev, tmp_path, rng):
    """torch.nn.utils.prune: weight_orig * weight_mask, even when weight_orig moved after the
    last forward (the weight attribute is stale then); torch.ao.pruning's parametrizations."""
    import torch.nn.utils.prune as prune
    from torch.ao.pruning import WeightNormSparsifier
    torch.manual_seed(3)
    module = pt.module_from_spec("lenet5")
    prune.l1_unstructured(module.conv2, "weight", 0.7)
    prune.random_unstructured(module.fc1, "weight", 0.9)
    with torch.no_grad():
        module.fc1.weight_orig.mul_(1.5)          # a training step on the original, no forward since
    sparsifier = WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4), zeros_per_block=4)
    sparsifier.prepare(module, config=[{"tensor_fqn": "fc2.weight"}])
    sparsifier.step()
    path = tmp_path / "p.proxcl"
    pt.export(module, path, input_shape=[1, 28, 28])
    _, tensors, _ = read_model_file(path)
    assert tensors["conv2.weight"].nnz == int(module.conv2.weight_mask.sum())
    fc1 = (module.fc1.weight_orig * module.fc1.weight_mask).detach()
    assert np.array_equal(tensors["fc1.weight"].to_dense(), fc1.numpy())
    assert tensors["fc2.weight"].nnz == 2500
    x = rng.standard_normal((9, 1, 28, 28)).astype(np.float32)
    assert rel_err(proxcl.load(path, device=dev).forward(x), _logits(module, x)) <= 1e-5


class _MyLinear(nn.Linear):
    """A user's own layer class: traced through, its F.linear exported."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding="same")
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, bias=False)
        self.head = nn.ModuleDict({"fc": _MyLinear(8 * 6 * 6, 32), "out": nn.Linear(32, 10)})

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.conv(x)), 2)
        x = self.conv2(x).relu()
        x = F.dropout(x.view(x.size(0), -1), 0.3, training=self.training)
        return self.head["out"](F.relu(self.head["fc"](x)))


def test_functional_forms_and_nested_names(dev, tmp_path, rng):
    module = _Functional()
    spec = pt.export(module, tmp_path / "f.proxcl", input_shape=(1, 28, 28))
    assert [l["type"] for l in spec["layers"]] == ["conv2d", "relu", "maxpool2d", "conv2d", "relu", "flatten",
                                                  "dropout", "linear", "relu", "linear"]
    assert [l["name"] for l in spec["layers"] if "name" in l] == ["conv", "conv2", "head_fc", "head_out"]
    assert spec["layers"][0]["padding"] == 1 and spec["layers"][3]["bias"] is False
    x = rng.standard_normal((7, 1, 28, 28)).astype(np.float32)
    assert rel_err(proxcl.load(tmp_path / "f.proxcl", device=dev).forward(x), _logits(module, x)) <= 1e-5


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(10, 10)

    def forward(self, x):
        return x + self.a(x)


@pytest.mark.parametrize("module, message", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)),
     "BatchNorm2d at '1' is not supported"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Sigmoid(), nn.Tanh()), "Sigmoid at '2'"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, groups=1, dilation=2), nn.Flatten(), nn.Linear(4 * 24 * 24, 10)),
     "Conv2d at '0' with groups, dilation"),
    (nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(196, 10)), "ceil_mode"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Flatten(0)), r"Flatten at '2' from \[10\] to \[\]"),
    (nn.Sequential(nn.Flatten(), nn.Linear(700, 10)), r"does not run on inputs of shape \[1, 28, 28\] \(mat1"),
    (_Residual(), "a branch or skip connection"),
])
def test_unsupported_layer_is_one_clear_error(tmp_path, module, message):
    path = tmp_path / "bad.proxcl"
    with pytest.raises(InputError, match=message) as err:
        pt.export(module, path, input_shape=[1, 28, 28] if not isinstance(module, _Residual) else [10])
    assert "\n" not in str(err.value) and not path.exists() and not list(tmp_path.iterdir())


def test_conv_first_needs_input_shape(tmp_path):
    with pytest.raises(InputError, match="give input_shape"):
        pt.export(pt.module_from_spec("lenet5"), tmp_path / "m.proxcl")


def test_a_proxcl_model_file_loads_into_pytorch(dev, tmp_path, rng):
    """A model trained and saved by proxcl (CSR and dense weights) runs the same in PyTorch."""
    model = proxcl.models.build("lenet5", device=dev, seed=4)
    state = model.state_dict()
    state["fc1.weight"][rng.random(state["fc1.weight"].shape) < 0.97] = 0
    model.load_state_dict(state)
    model.to_sparse("fc1.weight")
    proxcl.save(model, tmp_path / "m.proxcl")
    module, meta = pt.load(tmp_path / "m.proxcl", with_metadata=True)
    assert list(module.state_dict()) == [p.name for p in model.params]
    x = rng.standard_normal((11, 1, 28, 28)).astype(np.float32)
    assert rel_err(_logits(module, x), model.forward(x)) <= 1e-5


# ---- the command line -------------------------------------------------------------------------------

def test_cli_export_import_round_trip(dev, tmp_path, rng, capsys):
    import torch.nn.utils.prune as prune
    torch.manual_seed(5)
    module = pt.module_from_spec("lenet300")
    prune.l1_unstructured(module.fc1, "weight", 0.95)
    torch.save(module.state_dict(), tmp_path / "s.pt")
    out = tmp_path / "m.proxcl"
    assert main(["export", str(tmp_path / "s.pt"), "--spec", "lenet300", "--out", str(out),
                 "--normalisation", "72.9,90.0"]) == 0
    spec, tensors, meta = read_model_file(out)
    assert spec["name"] == "lenet300" and meta["normalisation"] == {"mean": 72.9, "std": 90.0}
    assert tensors["fc1.weight"].nnz == int(module.fc1.weight_mask.sum())
    x = rng.standard_normal((6, 1, 28, 28)).astype(np.float32)
    assert rel_err(proxcl.load(out, device=dev).forward(x), _logits(module, x)) <= 1e-5
    assert main(["import", str(out), "--out", str(tmp_path / "back.pt"), "--spec-out", str(tmp_path / "s.json")]) == 0
    back = pt.module_from_spec(json.loads((tmp_path / "s.json").read_text()))
    back.load_state_dict(torch.load(tmp_path / "back.pt", weights_only=True))
    assert np.array_equal(_logits(back, x), _logits(module, x))
    capsys.readouterr()


@pytest.mark.parametrize("case, message", [
    ("spec", "does not match the spec: missing"),
    ("notorch", "not a PyTorch state_dict file: it looks like text"),
    ("norm", "--normalisation takes MEAN,STD"),
    ("missing", "nosuch.pt: no such file"),
    ("module", "module.pt: holds more than tensors (torch.nn.modules.linear.Linear): a whole pickled module, "
               "or a damaged file; save module.state_dict() instead"),
])
def test_cli_export_errors_are_one_line(tmp_path, capsys, case, message):
    torch.save(pt.module_from_spec("lenet300").state_dict(), tmp_path / "s.pt")
    torch.save(torch.nn.Linear(3, 2), tmp_path / "module.pt")
    (tmp_path / "notes.txt").write_text("not a state_dict")
    args = {"spec": ["s.pt", "--spec", "lenet5"], "notorch": ["notes.txt", "--spec", "lenet300"],
            "norm": ["s.pt", "--spec", "lenet300", "--normalisation", "1"],
            "missing": ["nosuch.pt", "--spec", "lenet300"], "module": ["module.pt", "--spec", "lenet300"]}[case]
    args[0] = str(tmp_path / args[0])
    assert main(["export", *args, "--out", str(tmp_path / "m.proxcl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("proxcl: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "m.proxcl").exists()


def test_the_c_runtime_runs_the_exported_module(tmp_path, rng):
    """proxcl-run (runtime/, docs/DEPLOY.md) gives PyTorch's logits for an exported sparse LeNet-5."""
    from proxcl.data import normalise
    from test_runtime_c import _build, RUNTIME, run
    _build("asan")
    torch.manual_seed(6)
    module = pt.module_from_spec("lenet5")
    _sparsify(module, rng, 0.05)
    norm = {"mean": 72.94, "std": 90.02}
    pt.export(module, tmp_path / "m.proxcl", input_shape=[1, 28, 28], normalisation=norm)
    x = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    r = run(RUNTIME / "build" / "asan", "predict", tmp_path / "m.proxcl", tmp_path / "x.npy", "--json")
    got = np.array([json.loads(line)["logits"] for line in r.stdout.splitlines()], np.float64)
    ref = _logits(module, normalise(x, norm["mean"], norm["std"]).reshape(-1, 1, 28, 28))
    assert rel_err(got, ref) <= 1e-5
