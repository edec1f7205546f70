"""The benchmarks users run, shipped in the package: ``leapdec bench <name>`` or
``python -m leapdec.bench <name> [options]`` (``benchmarks/bench_<name>.py`` in a checkout are thin
entry points to the same modules). Each takes ``--out`` and writes its table (``.md``), JSON and
plot (``.png``) there, warms up, repeats and reports the spread (median, min-max, quartiles).
"""

from __future__ import annotations

import importlib

BENCHMARKS = {
    "attention": "paged_attention vs PyTorch SDPA / FlexAttention and the memory-traffic floor",
    "unmask": "fused unmask_and_filter vs the PyTorch composition and the logits-read floor",
    "decode": "every decoding method on the zoo: tokens per call, tokens/s, speedup over AR and transformers",
    "diffusion": "LLaDA / Fast-dLLM / Learn2PD / EoTP / ReDiff on stdlib-mdm: model calls and quality",
    "wedlm": "WeDLM entropy-threshold sweep on stdlib-wedlm vs our AR engine",
    "steps": "where a decoding step's time goes per method (forwards, matmuls, leapdec ops, Python), batch 1",
    "pearl": "PEARL (inline, thread, two processes) vs sd with the same drafter and our AR engine",
    "linear": "ops.linear (few rows, 16-bit weights widened in registers) vs F.linear over one decode step's layers",
    "ctc": "ctc_prefix_score op vs the ESPnet-style PyTorch CTC prefix scorer: one step and the joint beam search",
}


def run(name: str, argv=None) -> int:
    """Run benchmark ``name`` with command-line arguments ``argv``; returns its exit code."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}: choose from {', '.join(BENCHMARKS)}")
    module = importlib.import_module(f"leapdec.bench.{name}")
    return int(module.main(argv) or 0)


__all__ = ["BENCHMARKS", "run"]
