"""docs/FROM_PYTORCH.md's complete example runs as written (on fewer images and epochs), and its
model file gives in `proxcl predict` and `proxcl eval` what PyTorch printed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from proxcl import data
from proxcl.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "FROM_PYTORCH.md"
CONSTANTS = "EPOCHS, DEBIAS_EPOCHS, TRAIN_SAMPLES = 8, 4, 60000"


def test_the_example_trains_exports_and_predicts(fashion, tmp_path, capsys):
    text = DOC.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert CONSTANTS in code and "proxcl predict lenet5.proxcl" in text
    code = code.replace(CONSTANTS, "EPOCHS, DEBIAS_EPOCHS, TRAIN_SAMPLES = 2, 1, 3000")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    epochs = [l for l in res.stdout.splitlines() if l.startswith("epoch ")]
    assert len(epochs) == 3
    nonzero = int(re.search(r"(\d+) nonzero weights", epochs[1]).group(1))
    assert nonzero == round(0.05 * 430500), "the sparse phase ends at the target density"
    torch_accuracy = float(re.search(r"test accuracy ([\d.]+) %", res.stdout).group(1))
    assert torch_accuracy > 50

    model = str(tmp_path / "lenet5.proxcl")
    images = str(data.find_files("fashion-mnist")["test_images"])
    capsys.readouterr()
    assert main(["predict", model, images, "--json"]) == 0
    predicted = [json.loads(l)["class"] for l in capsys.readouterr().out.splitlines()]
    assert len(predicted) == 10000
    assert abs(np.mean(np.array(predicted) == fashion.labels["test"]) * 100 - torch_accuracy) <= 0.05
    assert main(["eval", model, "--json"]) == 0
    assert abs(json.loads(capsys.readouterr().out)["accuracy"] * 100 - torch_accuracy) <= 0.05
