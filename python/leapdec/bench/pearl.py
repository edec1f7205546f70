"""PEARL against vanilla speculative decoding (``sd``) with the same draft model and against our AR
engine, on a zoo target with its ``drafter/`` companion (``python -m leapdec.train drafter``):
tokens/s (median of interleaved repeats), tokens per target call, PEARL's accepted run lengths
(the adaptive draft length), its pre-/post-verify rounds and the seconds each side waited.

    leapdec bench pearl --model stdlib-ar --threads 2
    leapdec bench pearl --model smollm2-135m-instruct --max-new-tokens 128 --prompts 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from leapdec.bench.common import Spread, add_output_arguments, pyplot

VARIANTS = {
    "ar": ("ar", {}),
    "sd": ("sd", {}),
    "pearl-none": ("pearl", {"parallel": "none"}),
    "pearl-thread": ("pearl", {"parallel": "thread"}),
    "pearl-process": ("pearl", {"parallel": "process"}),
}


def held_out_prompts(name: str, n: int, max_new_tokens: int) -> list[list[int]]:
    """``n`` held-out instruction prompts of the distillation set (never trained on)."""
    import leapdec
    from leapdec.train import distill

    tokenizer, chat = leapdec.load_tokenizer(name), distill.is_chat_model(name)
    return [distill.prompt_ids(name, tokenizer, r, chat) for r in distill.requests(n, "heldout", 0)]


def run(model_name: str, variants: list[str], prompts, max_new_tokens: int, gamma: int, repeats: int,
        warmup: int, threads: int, progress: bool = True) -> dict:
    import torch
    from tqdm.auto import tqdm

    import leapdec

    torch.set_num_threads(threads)
    model = leapdec.load_model(model_name)
    options = {"max_new_tokens": max_new_tokens}
    results = {v: [] for v in variants}
    stats = {}
    ar_tokens = None

    def once(v):
        method, extra = VARIANTS[v]
        kw = dict(options, **extra)
        if method != "ar":
            kw["gamma"] = gamma
        t0 = time.perf_counter()
        out = leapdec.generate(model, prompts, method=method, **kw)
        return out, time.perf_counter() - t0

    for v in variants:                                   # warm up (drafter load, draft process start)
        for _ in range(warmup):
            once(v)
    bar = tqdm(total=repeats * len(variants), desc=f"pearl bench {model_name}", disable=not progress)
    for _ in range(repeats):                             # interleaved repeats
        for v in variants:
            out, wall = once(v)
            new = sum(len(t) for t in out.tokens)
            results[v].append(new / wall)
            if v == "ar":
                ar_tokens = out.tokens
            stats[v] = {k: out.stats[k] for k in (
                "model_calls", "tokens_per_call", "mean_accepted_length", "drafter_calls",
                "pre_verify_rounds", "post_verify_rounds", "accepted_run_lengths", "mean_accepted_run",
                "target_busy_s", "draft_busy_s", "target_wait_s", "draft_wait_s") if k in out.stats}
            stats[v]["identical_to_ar"] = ar_tokens is None or out.tokens == ar_tokens
            stats[v]["new_tokens"] = new
            bar.update(1)
    bar.close()
    spreads = {v: Spread.of(s) for v, s in results.items()}
    return {"model": model_name, "prompts": len(prompts), "max_new_tokens": max_new_tokens, "gamma": gamma,
            "threads": threads, "repeats": repeats, "tokens_per_s": {v: s.as_dict() for v, s in spreads.items()},
            "stats": stats}


def markdown(report: dict) -> str:
    tps = report["tokens_per_s"]
    ar = tps.get("ar", {}).get("median")
    sd = tps.get("sd", {}).get("median")
    lines = [f"`{report['model']}`, {report['prompts']} held-out prompts (batch), {report['max_new_tokens']} new "
             f"tokens, greedy, gamma {report['gamma']}, {report['threads']} torch threads, medians of "
             f"{report['repeats']} interleaved runs", "",
             "| variant | tokens/s median [min-max] | vs AR | vs sd | tokens / target call | identical to AR "
             "| mean accepted run | pre / post-verify rounds | target waited s | draft waited s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v, t in tps.items():
        st = report["stats"][v]
        lines.append(
            f"| {v} | {t['median']:.1f} [{t['min']:.1f}-{t['max']:.1f}] | "
            f"{t['median'] / ar:.2f}x | " + (f"{t['median'] / sd:.2f}x" if sd and v != "ar" else "") +
            f" | {st['tokens_per_call']:.2f} | {'yes' if st['identical_to_ar'] else 'NO'} | "
            f"{st.get('mean_accepted_run', '')!s:.5} | "
            + (f"{st['pre_verify_rounds']} / {st['post_verify_rounds']}" if "pre_verify_rounds" in st else "")
            + f" | {st.get('target_wait_s', '')} | {st.get('draft_wait_s', '')} |")
    runs = {v: st["accepted_run_lengths"] for v, st in report["stats"].items() if "accepted_run_lengths" in st}
    if runs:
        lines += ["", "Accepted run lengths (drafts accepted between two rejections: PEARL's adaptive draft "
                  "length), last run:", ""]
        lines += [f"- {v}: {json.dumps(h)}" for v, h in runs.items()]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(report["tokens_per_s"])
    axes[0].bar(names, [report["tokens_per_s"][v]["median"] for v in names], color="#4c72b0")
    axes[0].set_ylabel("tokens/s (median)")
    axes[0].set_title(f"{report['model']}: AR, sd and PEARL")
    axes[0].tick_params(axis="x", rotation=30)
    for v, st in report["stats"].items():
        hist = st.get("accepted_run_lengths")
        if hist:
            xs = sorted(int(k) for k in hist)
            axes[1].plot(xs, [hist[k] if k in hist else hist[str(k)] for k in xs], marker="o", label=v)
    axes[1].set_xlabel("accepted run length (tokens)")
    axes[1].set_ylabel("runs")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="leapdec bench pearl", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="stdlib-ar")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"from {', '.join(VARIANTS)}")
    ap.add_argument("--prompts", type=int, default=1, help="held-out prompts decoded together (batch)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    ap.add_argument("--no-progress", action="store_true")
    add_output_arguments(ap, default_repeats=3)
    a = ap.parse_args(argv)
    variants = a.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if "ar" not in variants:
        variants = ["ar"] + variants
    prompts = held_out_prompts(a.model, a.prompts, a.max_new_tokens)
    report = run(a.model, variants, prompts, a.max_new_tokens, a.gamma, a.repeats, a.warmup, a.threads,
                 progress=not a.no_progress)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pearl.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (out / "pearl.md").write_text(table)
    plot(report, out / "pearl.png")
    print(table)
    return 0
