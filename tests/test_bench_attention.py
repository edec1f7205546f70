"""leapdec.bench.attention (`leapdec bench attention`, benchmarks/bench_attention.py) --quick runs
on CPU, agrees with SDPA and writes its table, JSON and plot with the timing spread."""

import json

import torch


def load_bench():
    import leapdec.bench.attention as bench

    return bench


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
    rc = bench.main(["--quick", "--device", "cpu", "--cases", "decode_gqa,tree_b1", "--json", str(out),
                     "--out", str(tmp_path / "out"), "--repeats", "3"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert json.loads((tmp_path / "out" / "attention.json").read_text()) == report
    assert (tmp_path / "out" / "attention.md").read_text().count("\n| ") == 3
    assert (tmp_path / "out" / "attention.png").stat().st_size > 0
    for r in report["results"]:
        for key in ("leapdec", "sdpa"):
            spread = r["spread_us"][key]
            assert spread["n"] >= 3 and spread["min"] <= spread["median"] == r[f"{key}_us"] <= spread["max"]
    assert [r["name"] for r in report["results"]] == ["decode_gqa", "tree_b1"]
    assert report["copy_bandwidth_bytes_per_s"] > 0 and not report["mismatches"]
    for r in report["results"]:
        assert r["leapdec_us"] > 0 and r["sdpa_us"] > 0 and r["floor_us"] > 0
        assert r["max_abs_err_vs_sdpa"] < 1e-4
        assert r["flex_us"] is None and r["flex_note"] == "skipped on CPU"
