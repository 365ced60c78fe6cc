"""`proxcl bench kernels --large`: the four products against float64 references, the floors and
the bound they name, the cache probe, and the table with its legend."""

from __future__ import annotations

import numpy as np
import pytest

import proxcl
from proxcl.bench import large

pytestmark = pytest.mark.usefixtures("dev")


@pytest.mark.parametrize("form", ["cpu", "gpu"])
def test_reread_probe_reads_what_it_says(dev, form):
    """Every work-item sums ROUNDS vectors of the buffer: with src[i] = i % 7 the sums are known."""
    d = proxcl.Device(dev.spec)
    vec, rounds, nv, work = 4, 256, 4096, 1024
    src = (np.arange(nv * vec) % 7).astype(np.float32)
    out = d.empty((work,))
    kern = d.kernel("probe.cl", "reread", VEC=vec, ROUNDS=rounds, CONTIG=int(form == "cpu"))
    d.launch(kern, (work,), (64,), nv, d.to_device(src), out)
    vecsum = src.reshape(nv, vec).sum(1, dtype=np.float64)
    g = np.arange(work)
    if form == "cpu":
        starts = (g % (nv // rounds)) * rounds
        want = np.array([vecsum[s:s + rounds].sum() for s in starts])
    else:
        want = np.array([vecsum[(i + work * np.arange(rounds)) % nv].sum() for i in g])
    np.testing.assert_allclose(out.get(), want, rtol=1e-6)


def test_floor_bytes_name_what_each_product_moves():
    m, k, n, nnz = 30, 20, 8, 50
    assert large.floor_bytes("W @ X", m, k, n, nnz, 2) == (6 * nnz + 4 * (m + 1) + 4 * k * n + 4 * m * n, 4 * n * nnz)
    assert large.floor_bytes("W.T @ D", m, k, n, nnz, 4) == (8 * nnz + 4 * (k + 1) + 4 * m * n + 4 * k * n, 4 * n * nnz)
    assert large.floor_bytes("sddmm", m, k, n, nnz, 2) == (4 * m * n + 4 * k * n + 8 * nnz, 4 * n * nnz)
    assert large.floor_bytes("gemm", m, k, n, m * k, 0) == (4 * (m * k + k * n + m * n), 0)


def test_large_benchmark_rows_are_right_and_explained(dev):
    lines = []
    shapes = [((120, 90), 40), ((33, 70), 17)]
    r = large.run(dev.spec, shapes=shapes, densities=[0.05, 1.0], log=lines.append)
    rows = r["rows"]
    # per shape: three sparse products per density, the dense product once (after the first)
    sparse = ["W @ X", "W.T @ D", "sddmm"]
    assert [row["op"] for row in rows] == (sparse + ["gemm"] + sparse) * 2
    for row in rows:
        assert row["rel_err"] < 1e-5, row
        assert row["device_ms"] > 0 and row["api_ms"] > 0 and row["out_ms"] > 0
        dram, cache = large.floor_bytes(row["op"], row["m"], row["k"], row["n"], row["nnz"],
                                        2 if row["op"] != "gemm" else 0)
        dram_ms = dram / (r["copy_bandwidth_gbs"] * 1e9) * 1e3
        cache_ms = cache / (r["cache_bandwidth_gbs"] * 1e9) * 1e3
        assert row["floor_ms"] == pytest.approx(max(dram_ms, cache_ms))
        assert row["bound"] == ("cache" if cache_ms > dram_ms else "dram")
        if row["peer_ms"] is not None:
            assert row["vs_peer"] == pytest.approx(row["peer_ms"] / row["api_ms"])
    assert rows[0]["nnz"] == round(0.05 * 120 * 90) and rows[4]["nnz"] == 120 * 90 and rows[3]["nnz"] == 120 * 90
    assert r["cache_bandwidth_gbs"] > 0 and r["cache_probe_bytes"] >= 1 << 16
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == large.HEADER and len(table) == 1 + len(rows)
    assert "\n".join(lines).endswith("\n\n" + large.LEGEND)
    for column in [c.strip() for c in table[0].splitlines()[0].strip("| ").split("|")]:
        assert column in large.LEGEND or column in ("op", "W", "n", "dens", "nnz"), column


def test_bar_cases_are_the_quick_set():
    assert len(large.BAR_CASES) == 5
    for (m, k), n, d in large.BAR_CASES:
        assert ((m, k), n) in large.SHAPES and d in large.DENSITIES


def test_help_names_the_large_benchmark():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "proxcl", "bench", "kernels", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--large" in r.stdout and "SDDMM" in r.stdout


def test_cli_large_writes_its_json(dev, tmp_path, monkeypatch):
    """The command as a user runs it: the table, the legend and a JSON file with every row."""
    import json

    from proxcl.cli import main
    monkeypatch.setattr(large, "BAR_CASES", [((64, 48), 40, 0.1), ((40, 64), 200, 0.05)])
    monkeypatch.setenv("PROXCL_DEVICE", dev.spec or "")
    path = tmp_path / "large.json"
    assert main(["bench", "kernels", "--large", "--quick", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["benchmark"] == "kernels-large" and "host_after" in result
    assert [r["op"] for r in result["rows"]] == ["W @ X", "W.T @ D", "sddmm", "gemm"] * 2
    assert all(r["rel_err"] < 1e-5 for r in result["rows"])
    assert all(r["bar"] for r in result["rows"] if r["op"] != "gemm")     # the dense bar: 4096² x 1024 only


def test_check_columns_reach_every_segment():
    cols = large._check_columns(1024)
    assert cols[0] == 0 and cols[-1] == 1023 and len(cols) >= large.CHECK
    assert len({c // 128 for c in cols}) >= 6          # several 128-column segments, not only the first
