"""Compare decoding methods on the same prompts: the engine behind `leapdec demo` and
`benchmarks/bench_decode.py`.

For each method: tokens per model call, model calls, tokens/s, speedup over our AR engine,
and agreement with greedy AR (identical outputs for lossless methods; the share of tokens that
match greedy AR position by position otherwise).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import torch

import leapdec.decoding  # noqa: E402,F401  (registers every method and its spec)
from leapdec.engine.spec import specs  # noqa: E402

# Which zoo model each method decodes with (its companions live beside it in the zoo): the specs.
METHOD_BASE_MODEL = {s.name: s.base_model for s in specs()}


@dataclass
class MethodResult:
    method: str
    model: str
    rows: int
    new_tokens: int
    model_calls: int
    tokens_per_call: float   # new tokens per model call per sequence (the method's own stat)
    wall_s: float
    tokens_per_s: float
    speedup_vs_ar: float
    match_ar: float          # share of positions equal to greedy AR's tokens
    identical_to_ar: bool    # every row token-for-token equal to greedy AR
    mean_accepted_length: float | None = None       # speculative methods: tokens gained per verify step
    accept_length_histogram: dict | None = None     # speculative methods: {tokens gained: steps}


def token_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of positions (over the longer of each pair) where two outputs agree."""
    same = total = 0
    for x, y in zip(a, b):
        n = max(len(x), len(y))
        total += n
        same += sum(1 for i in range(min(len(x), len(y))) if x[i] == y[i])
    return same / total if total else 1.0


def run_method(model, prompts, method: str, max_new_tokens: int, repeats: int = 1, **options):
    """Decode ``prompts`` with ``method``; returns (output, best wall seconds)."""
    import leapdec

    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = leapdec.generate(model, prompts, method=method, max_new_tokens=max_new_tokens,
                               temperature=0.0, **options)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return out, best


def compare_methods(prompts, methods, max_new_tokens=64, device="cpu", dtype=None, repeats=1,
                    models=None, progress=True, options=None, skipped=None):
    """Run every method in ``methods`` on ``prompts`` (token lists) and return MethodResults.

    ``models`` maps a zoo name to a loaded model (loaded on demand otherwise); ``options`` maps a
    method to extra keyword options. Greedy AR on ``stdlib-ar`` is the reference for speed and
    agreement, so it is always run first. With a ``skipped`` list, a method whose model or
    companion weights are missing is noted there and skipped instead of raising.
    """
    import leapdec
    from tqdm.auto import tqdm

    models = dict(models or {})
    options = dict(options or {})
    if max_new_tokens % 32 == 0:  # diffusion methods decode in LLaDA/Learn2PD's blocks of 32
        for m in ("llada", "learn2pd", "rediff"):
            options.setdefault(m, {"block_length": 32})

    def model_for(name):
        if name not in models:
            models[name] = leapdec.load_model(name, device=device, dtype=dtype)
        return models[name]

    order = ["ar"] + [m for m in methods if m != "ar"]
    results, ar_out, ar_tps = [], None, None
    for method in tqdm(order, desc="methods", disable=not progress):
        name = METHOD_BASE_MODEL.get(method, "stdlib-ar")
        try:
            model = model_for(name)
            # warm-up on the whole batch: companions load, the cache workspace gets its final size
            run_method(model, prompts, method, max_new_tokens, **options.get(method, {}))
        except (KeyError, FileNotFoundError) as e:
            if skipped is None or method == "ar":
                raise
            skipped.append(f"{method}: {e}")
            continue
        out, wall = run_method(model, prompts, method, max_new_tokens, repeats, **options.get(method, {}))
        new = sum(len(t) for t in out.tokens)
        calls = int(out.stats.get("model_calls", 0))
        tps = new / wall if wall > 0 else 0.0
        if method == "ar":
            ar_out, ar_tps = out.tokens, tps
        results.append(MethodResult(
            method=method, model=name, rows=len(prompts), new_tokens=new, model_calls=calls,
            tokens_per_call=float(out.stats.get("tokens_per_call", new / calls if calls else 0.0)),
            wall_s=wall, tokens_per_s=tps,
            speedup_vs_ar=tps / ar_tps if ar_tps else 1.0,
            match_ar=token_agreement(out.tokens, ar_out),
            identical_to_ar=out.tokens == ar_out,
            mean_accepted_length=out.stats.get("mean_accepted_length"),
            accept_length_histogram=out.stats.get("accept_length_histogram")))
    return results


def markdown_table(results) -> str:
    head = ("| method | model | new tokens | model calls | tokens/call | tokens/s | speedup vs AR "
            "| match AR | identical to greedy AR |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = "".join(
        f"| {r.method} | {r.model} | {r.new_tokens} | {r.model_calls} | {r.tokens_per_call:.2f} | "
        f"{r.tokens_per_s:.1f} | {r.speedup_vs_ar:.2f}x | {100 * r.match_ar:.0f}% | "
        f"{'yes' if r.identical_to_ar else 'no'} |\n" for r in results)
    return head + rows


def save_results(results, json_path=None, png_path=None, title="leapdec decoding methods") -> None:
    if json_path:
        with open(json_path, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=2)
    if png_path:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [r.method for r in results]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        axes[0].bar(names, [r.tokens_per_call for r in results], color="tab:blue")
        axes[0].set_ylabel("tokens per model call")
        axes[1].bar(names, [r.speedup_vs_ar for r in results], color="tab:green")
        axes[1].axhline(1.0, color="gray", lw=1, ls="--")
        axes[1].set_ylabel("speedup over our AR (tokens/s)")
        for ax in axes:
            ax.tick_params(axis="x", rotation=30)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(png_path, dpi=120)
        plt.close(fig)
