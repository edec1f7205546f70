"""benchmarks/bench_recap.py runs end to end on a small checkpoint and its tables agree with its rows."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_recap.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_recap", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_recap_writes_table_json_and_plot(tmp_path):
    from leapdec.images import image_config
    from leapdec.images import model as model_

    torch.manual_seed(0)
    ckpt = model_.save(model_.MaskGIT(image_config(32, 1, 2, 64)), tmp_path / "ckpt")
    bench = _bench()
    out = tmp_path / "out"
    assert bench.main(["--model", str(ckpt), "--per-class", "1", "--steps", "8", "--base-extra-steps", "4",
                       "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "recap.json").read_text())
    rows = report["rows"]
    assert {(r["sampler"], r["steps"]) for r in rows} == {
        ("maskgit", 4), ("maskgit", 8), ("recap", 8), ("recap-paper", 8), ("recap-fast", 8),
        ("recap-lean", 8)}
    base8 = next(r for r in rows if r["sampler"] == "maskgit" and r["steps"] == 8)
    fast = next(r for r in rows if r["sampler"] == "recap-fast")
    assert base8["full_steps"] == 8 and base8["positions_per_image"] == 8 * 257
    assert fast["full_steps"] + fast["local_steps"] == 8 and fast["positions_per_image"] < 8 * 257
    lean = next(r for r in rows if r["sampler"] == "recap-lean")
    assert lean["full_steps"] == 2 and lean["positions_per_image"] < fast["positions_per_image"]
    assert all(0.0 <= r["consistency"] <= 1.0 and r["frechet"] >= 0 for r in rows)
    table = (out / "recap.md").read_text()
    assert table.count("\n| recap") == 4 + 4          # four ReCAP rows in each of the two tables
    assert (out / "recap.png").stat().st_size > 1000
