"""Benchmark and device output a person can read: each result once, a legend under each table
(and in --help), no internal lines; `proxcl devices` prints whole OpenCL C versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def proxcl(*args):
    return subprocess.run([sys.executable, "-m", "proxcl", *map(str, args)], capture_output=True, text=True, env=ENV)


def _table(lines: list[str]) -> list[str]:
    """The markdown table's head and rows (not its |---| line)."""
    return [line for line in lines if line.startswith("| ")]


def test_bench_kernels_explains_its_table(tmp_path):
    from proxcl.bench.kernels import QUICK_DENSITIES, QUICK_SHAPES, legend
    r = proxcl("bench", "kernels", "--quick", "--json", tmp_path / "k.json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    rows = _table(lines)[1:]                      # the head, then one row per case
    assert len(rows) == len(QUICK_SHAPES) * len(QUICK_DENSITIES)
    assert len(set(rows)) == len(rows)
    head = _table(lines)[0]
    basis = json.loads((tmp_path / "k.json").read_text())["ratio_basis"]
    text = legend(basis)
    after = "\n".join(lines[lines.index(rows[-1]) + 1:])
    assert after.startswith("\n" + text + "\n")           # right under the table
    for column in [c.strip() for c in head.strip("| ").split("|")]:
        assert ("vs X" if column.startswith("vs ") else column) in text, column
    bold = [row for row in rows if row.startswith("| **")]
    assert bold and all(row.startswith("| **500x800** | 256 | ") for row in bold)
    assert "bold      W 500x800, n 256 at 5 % and 1 %" in text
    assert " met" not in r.stdout and "bar" not in r.stdout.lower()
    helped = proxcl("bench", "kernels", "--help")
    assert helped.returncode == 0 and legend() in helped.stdout


def test_bench_model_prints_each_result_once(tmp_path):
    from proxcl.bench.model import DENSITIES, LEGEND
    r = proxcl("bench", "model", "--quick", "--models", "lenet300", "--json", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "m.json").read_text())
    rows = _table(r.stdout.splitlines())
    assert len(rows) == 1 + len(DENSITIES) == 1 + len(result["rows"])         # the head, one row per result
    for row, res in zip(rows[1:], result["rows"]):
        assert row.startswith(f"| lenet300 | {'dense' if res['weights'] == 'dense' else 'CSR'}")
        assert f" {res['weight_nnz']:,} | {res['proxcl']['latency_b1_ms']:.3f} | " in row
    assert [line for line in r.stdout.splitlines() if "lenet300" in line] == rows[1:]     # each result once
    assert LEGEND in r.stdout
    assert " met" not in r.stdout and "bar (" not in r.stdout
    helped = proxcl("bench", "model", "--help")
    assert helped.returncode == 0 and LEGEND in helped.stdout and "Model-level benchmark." not in helped.stdout


def test_devices_prints_whole_versions():
    listed = json.loads(proxcl("devices", "--json").stdout)
    r = proxcl("devices")
    assert r.returncode == 0
    head, *rows = r.stdout.splitlines()
    assert len(rows) == len(listed)
    at = head.index("OpenCL C")
    for row, d in zip(rows, listed):
        assert row[at:].startswith(d["opencl_c"] + " "), (row, d["opencl_c"])
        assert row.split()[-3:] == [str(d["compute_units"]), str(d["global_mem_bytes"] >> 20),
                                   str(d["local_mem_bytes"] >> 10)]
