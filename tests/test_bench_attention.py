"""benchmarks/bench_attention.py --quick runs on CPU, agrees with SDPA and writes its JSON."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_attention.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_attention", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_medusa_like_tree_is_a_tree():
    bench = load_bench()
    for n in (1, 16, 64, 80):
        parents = bench.medusa_like_parents(n)
        assert len(parents) == n and parents[0] == -1
        assert all(0 <= p < i for i, p in enumerate(parents) if i > 0)
        mask = bench.ancestor_mask(parents)
        assert torch.equal(mask.diagonal(), torch.ones(n, dtype=torch.bool))
        assert bool(mask[:, 0].all())  # every node descends from the root
        assert not bool(mask.triu(1).any())  # ancestors come first


def test_quick_run_writes_json(tmp_path):
    bench = load_bench()
    out = tmp_path / "attention.json"
    rc = bench.main(["--quick", "--device", "cpu", "--cases", "decode_gqa,tree_b1", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["results"]] == ["decode_gqa", "tree_b1"]
    assert report["copy_bandwidth_bytes_per_s"] > 0 and not report["mismatches"]
    for r in report["results"]:
        assert r["leapdec_us"] > 0 and r["sdpa_us"] > 0 and r["floor_us"] > 0
        assert r["max_abs_err_vs_sdpa"] < 1e-4
        assert r["flex_us"] is None and r["flex_note"] == "skipped on CPU"
