"""Quick runs of the decoding benchmarks on the zoo models through their thin entry points
(benchmarks/bench_*.py -> leapdec.bench.*): they run, write their tables, JSON and plots with
the timing spread, and count model calls as the methods define them."""

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name, args, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(BENCH / name)] + args)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(BENCH / name), run_name="__main__")
    assert done.value.code == 0


def test_bench_diffusion_quick(tmp_path, monkeypatch):
    run_script("bench_diffusion.py", ["--quick", "--only", "Learn2PD + EoTP (0.9),Fast-dLLM",
                                      "--out", str(tmp_path), "--warmup", "0"], monkeypatch)
    report = json.loads((tmp_path / "diffusion.json").read_text())
    rows = {r["decode"]: r for r in report["rows"]}
    base = rows["LLaDA baseline (steps = gen_length)"]
    assert all(0 <= r["answered"] <= 2 and 1 <= r["distinct_answers"] <= 2 for r in rows.values())
    assert base["calls_per_row"] == 64 and base["identical_rows"] == 2 and base["nfe_reduction"] == 1
    for label in ("Learn2PD + EoTP (0.9)", "Fast-dLLM threshold 0.9"):
        assert 1 <= rows[label]["calls_per_row"] <= 64
    # "--only" keeps labels by prefix: the baseline, Fast-dLLM and the three EoTP (0.9) rows
    assert len(rows) == 5 and "Learn2PD + EoTP (0.9), dual cache" in rows
    assert (tmp_path / "diffusion.md").read_text().count("\n| ") == len(rows) + 1
    assert (tmp_path / "diffusion.png").stat().st_size > 0
    for r in rows.values():     # --quick: 2 timed runs per decode
        w = r["wall_s_spread"]
        assert w["n"] == 2 and w["min"] <= w["median"] <= w["max"]


def test_answers_with_a_body_and_request_prompts():
    """The "answered with a body" column (issue 10 item 8) and the short-request prompts."""
    from leapdec.bench.diffusion import has_body, prompt_texts

    prompt = 'def half(x):\n    """Return half of x."""\n    '
    assert has_body(prompt, "return x / 2\n") and has_body(prompt, "y = x // 2\n    return y\n")
    for answer in ("", "pass\n", "x\n", "'text'\n", "return (\n", "self.tk."):
        assert not has_body(prompt, answer), answer
    assert has_body("    def m(self):\n        'Doc.'\n        ", "return 1\n")   # a method
    requests = prompt_texts("requests", 3)
    assert len(requests) == 3 and all(r.startswith("def ") and r.endswith('"""\n    ') for r in requests)
    assert len(prompt_texts("functions", 2)) == 2


def test_bench_wedlm_quick(tmp_path, monkeypatch):
    run_script("bench_wedlm.py", ["--quick", "--prompts-from", "requests", "--out", str(tmp_path)], monkeypatch)
    rows = json.loads((tmp_path / "wedlm.json").read_text())["rows"]
    assert all(0 <= r["answered"] <= 2 for r in rows)
    assert [r["decode"] for r in rows] == ["AR (our engine)", "WeDLM", "WeDLM"]
    assert all(r["tokens_per_forward"] >= 0 for r in rows)
    # threshold 0 fills exactly one mask per forward: no more tokens per forward than 1
    assert rows[1]["threshold"] == 0 and rows[1]["tokens_per_forward"] <= 1.0
    assert (tmp_path / "wedlm.png").stat().st_size > 0
    for r in rows:
        tps = r["tokens_per_s_spread"]
        assert tps["n"] == 2 and tps["min"] <= tps["median"] <= tps["max"]
    assert "[" in (tmp_path / "wedlm.md").read_text(), "tok/s cells show median [min-max]"


def test_bench_llamacpp_says_how_to_get_llama_cpp(monkeypatch):
    """llama-cpp-python is no dependency (a 20-40 minute source build): without it the comparison
    script stops with how to build it, before loading any model."""
    if "llama_cpp" in sys.modules or _importable("llama_cpp"):
        pytest.skip("llama_cpp is installed here")
    monkeypatch.setattr(sys, "argv", [str(BENCH / "bench_llamacpp.py")])
    with pytest.raises(SystemExit, match="llama-cpp-python into a venv of its own"):
        runpy.run_path(str(BENCH / "bench_llamacpp.py"), run_name="__main__")


def _importable(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None
