"""Where a decoding step's time goes, per method, at batch 1 on the zoo models (CPU or GPU).

For each method it decodes held-out prompts one at a time and splits the wall time into the
model forwards (the target's ``forward_paged`` and any drafter's), the leapdec ops and PyTorch
kernels inside them (torch.profiler, self time) and the rest (Python: planning, verification
bookkeeping, sampling, the method's own loop). Reported per model call and relative to one AR
step, so methods compare on one scale. Runs against any checkout of leapdec (it only uses
``leapdec.generate`` and wraps ``forward_paged`` at class level), which is how the before/after
figures in RESULTS.md were taken.

    python -m leapdec.bench.steps --methods ar,medusa,falcon,lookup,wedlm --out bench_out
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

BASE_MODEL = {"wedlm": "stdlib-wedlm", "llada": "stdlib-mdm", "learn2pd": "stdlib-mdm", "rediff": "stdlib-mdm"}


class _ForwardTimer:
    """Wraps ``forward_paged`` of the given classes and accumulates its wall time."""

    def __init__(self, classes):
        self.classes, self.seconds, self.calls, self._orig = classes, 0.0, 0, {}

    def __enter__(self):
        timer = self
        for cls in self.classes:
            orig = cls.forward_paged
            self._orig[cls] = orig

            def wrapped(self_, *a, _orig=orig, **k):
                t0 = time.perf_counter()
                try:
                    return _orig(self_, *a, **k)
                finally:
                    timer.seconds += time.perf_counter() - t0
                    timer.calls += 1
            cls.forward_paged = wrapped
        return self

    def __exit__(self, *exc):
        for cls, orig in self._orig.items():
            cls.forward_paged = orig


def profile_method(method: str, prompts, max_new_tokens: int, repeats: int, models: dict) -> dict:
    import leapdec
    from leapdec.models import Transformer

    classes = [Transformer]
    try:
        from leapdec.models.drafter import FalconDrafter
        classes.append(FalconDrafter)
    except ImportError:
        pass
    name = BASE_MODEL.get(method, "stdlib-ar")
    if name not in models:
        models[name] = leapdec.load_model(name)
    model = models[name]
    leapdec.generate(model, prompts[:1], method=method, max_new_tokens=16)          # warm-up
    rows = []
    for _ in range(repeats):
        calls = tokens = 0
        wall = fwd = 0.0
        with _ForwardTimer(classes) as timer:
            for p in prompts:
                t0 = time.perf_counter()
                out = leapdec.generate(model, [p], method=method, max_new_tokens=max_new_tokens)
                wall += time.perf_counter() - t0
                calls += out.stats["model_calls"]
                tokens += len(out.tokens[0])
        fwd = timer.seconds
        rows.append(dict(wall=wall, forward=fwd, calls=calls, tokens=tokens, forward_calls=timer.calls))
    wall = statistics.median(r["wall"] for r in rows)
    fwd = statistics.median(r["forward"] for r in rows)
    calls, tokens, fcalls = rows[0]["calls"], rows[0]["tokens"], rows[0]["forward_calls"]
    # kernel self time inside one more pass (profiler overhead is not in the wall figures above)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for p in prompts[:2]:
            leapdec.generate(model, [p], method=method, max_new_tokens=max_new_tokens)
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    leap = sum(e.self_cpu_time_total for e in ev if e.key.startswith("leapdec::"))
    mm = sum(e.self_cpu_time_total for e in ev if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"))
    return {
        "method": method, "model": name, "tokens": tokens, "model_calls": calls,
        "forward_passes": fcalls, "tokens_per_call": tokens / calls,
        "ms_per_call": 1e3 * wall / calls, "forward_ms_per_call": 1e3 * fwd / calls,
        "python_ms_per_call": 1e3 * (wall - fwd) / calls, "tokens_per_s": tokens / wall,
        "share_matmul": mm / total if total else 0.0, "share_leapdec_ops": leap / total if total else 0.0,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m leapdec.bench.steps", description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="ar,medusa,falcon,lookup,wedlm")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="passes over the prompts; medians are reported")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label", default="", help="a name for this checkout in the table (e.g. before/after)")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--quick", action="store_true", help="2 prompts, 32 new tokens, one pass")
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.max_new_tokens, args.repeats = 2, 32, 1
    out_dir = Path(args.out)
    try:
        from leapdec.paths import writable_dir
        writable_dir(out_dir)                # an unwritable --out fails before any work
    except ImportError:                      # an older checkout (before/after profiles)
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    import leapdec
    from leapdec.train.corpus import eval_prompts

    tok = leapdec.load_tokenizer("stdlib-ar")
    prompts = [tok.encode(p.prompt).ids for p in eval_prompts(args.prompts, seed=0)]
    models: dict = {}
    results = [profile_method(m, prompts, args.max_new_tokens, args.repeats, models)
               for m in args.methods.split(",")]
    ar = next((r for r in results if r["method"] == "ar"), None)
    lines = [f"| {args.label} method | tokens/call | ms/call | forward ms/call | other ms/call | "
             "AR steps per call | tok/s | vs AR | matmul share | leapdec ops share |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        steps = r["ms_per_call"] / ar["ms_per_call"] if ar else float("nan")
        speed = r["tokens_per_s"] / ar["tokens_per_s"] if ar else float("nan")
        lines.append(f"| {r['method']} | {r['tokens_per_call']:.2f} | {r['ms_per_call']:.2f} | "
                     f"{r['forward_ms_per_call']:.2f} | {r['python_ms_per_call']:.2f} | {steps:.2f} | "
                     f"{r['tokens_per_s']:.0f} | {speed:.2f}x | {100 * r['share_matmul']:.0f}% | "
                     f"{100 * r['share_leapdec_ops']:.0f}% |")
    table = "\n".join(lines)
    print(table)
    stem = f"steps{('-' + args.label) if args.label else ''}"
    (out_dir / f"{stem}.md").write_text(table + "\n")
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
    _plot(results, out_dir / f"{stem}.png", args.label)
    return 0


def _plot(results, path: Path, label: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in results]
    fwd = [r["forward_ms_per_call"] for r in results]
    other = [r["python_ms_per_call"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(names, fwd, label="model forwards", color="tab:blue")
    ax.bar(names, other, bottom=fwd, label="everything else (Python, heads, verify)", color="tab:orange")
    for i, r in enumerate(results):
        ax.text(i, fwd[i] + other[i], f"{r['tokens_per_call']:.2f} tok/call", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("ms per model call (batch 1)")
    ax.set_title(f"where a decoding step's time goes{(' (' + label + ')') if label else ''}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
