"""Diffusion LM decoding on the zoo's stdlib-mdm: model calls (NFE), speed and quality.

Every decode runs the same held-out prompts (``<|endoftext|>`` + signature + docstring) and is
compared with the LLaDA baseline (one token per step, ``steps == gen_length``, no early exit, as
in the LLaDA and Learn2PD papers):

* LLaDA early exit, Fast-dLLM threshold 0.9, Learn2PD, Learn2PD + EoTP (threshold 0.9 and
  Learn2PD's own rule, 0), each uncached and, for Learn2PD + EoTP, on the prefix / dual cache;
* ReDiff at few steps (``gen_length / 8``): plain LLaDA, the refined model without revision and
  ReDiff (refined + revision), against the baseline.

Columns: model calls per row (NFE) and the reduction over the baseline, rows identical to the
baseline output, token agreement, mean answer length, the answers' NLL under stdlib-ar (nats per
token, answer + EOS) and wall-clock speedup over the baseline in this run.

    python benchmarks/bench_diffusion.py [--gen-length 256] [--prompts 8] [--out bench_out]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import leapdec
from leapdec.evaluate import token_agreement
from leapdec.train import corpus
from leapdec.train import tokenizer as tokenizers_
from leapdec.train.rediff import ar_nll


def variants(gen_length: int, block: int):
    """(label, method, options) of every decode, the baseline first."""
    few = max(gen_length // block, gen_length // 8)
    return [
        ("LLaDA baseline (steps = gen_length)", "llada", dict(early_exit=False)),
        ("LLaDA, early exit", "llada", {}),
        ("Fast-dLLM threshold 0.9", "llada", dict(policy="threshold", threshold=0.9)),
        ("Learn2PD", "learn2pd", {}),
        ("Learn2PD + EoTP (0.9)", "learn2pd", dict(eotp=True)),
        ("Learn2PD + EoTP (0, Learn2PD's rule)", "learn2pd", dict(eotp=True, eot_threshold=0.0)),
        ("Learn2PD + EoTP (0.9), prefix cache", "learn2pd", dict(eotp=True, cache="prefix")),
        ("Learn2PD + EoTP (0.9), dual cache", "learn2pd", dict(eotp=True, cache="dual")),
        (f"LLaDA, {few} steps", "llada", dict(steps=few)),
        (f"ReDiff refined, no revision, {few} steps", "rediff", dict(steps=few, revise=False)),
        (f"ReDiff, {few} steps", "rediff", dict(steps=few)),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="stdlib-mdm")
    ap.add_argument("--ar-model", default="stdlib-ar", help="scores the answers (NLL)")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="rows per generate call")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", default=None, help="comma-separated labels' prefixes to run (baseline always)")
    ap.add_argument("--quick", action="store_true", help="2 prompts, gen_length 64 (CPU smoke run)")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.gen_length = 2, 64

    model = leapdec.load_model(args.model, device=args.device)
    ar_model = leapdec.load_model(args.ar_model, device=args.device)
    tok = tokenizers_.load_tokenizer(model.checkpoint_dir)
    eos = tokenizers_.special_token_ids(tok)["eos"]
    prompts = [[eos] + tok.encode(p.prompt, add_special_tokens=False).ids
               for p in corpus.eval_prompts(args.prompts, seed=0, max_prompt_chars=600)]
    window = model.config.extra.get("seq_len") or model.config.max_position_embeddings
    print(f"{args.model}: {len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} "
          f"tokens, gen_length {args.gen_length}, block {args.block_length}, {args.device}")

    todo = variants(args.gen_length, args.block_length)
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        todo = [v for i, v in enumerate(todo) if i == 0 or any(v[0].startswith(k) for k in keep)]
    rows, base = [], None
    for label, method, options in tqdm(todo, desc="decodes"):
        tokens, row_calls, wall, extra = [], 0, 0.0, {}
        for s in range(0, len(prompts), args.batch):
            batch = prompts[s:s + args.batch]
            t0 = time.perf_counter()
            out = leapdec.generate(model, batch, method=method, max_new_tokens=args.gen_length,
                                   block_length=args.block_length, **options)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            wall += time.perf_counter() - t0
            tokens += out.tokens
            row_calls += int(out.stats.get("row_calls", out.stats["model_calls"] * len(batch)))
            if "revisions" in out.stats:
                extra["revisions"] = extra.get("revisions", 0) + int(out.stats["revisions"])
        if base is None:
            base = {"tokens": tokens, "calls": row_calls / len(prompts), "wall": wall}
        calls = row_calls / len(prompts)
        rows.append({"decode": label, "method": method, "options": options,
                     "calls_per_row": round(calls, 2), "nfe_reduction": round(base["calls"] / calls, 2),
                     "identical_rows": sum(a == b for a, b in zip(tokens, base["tokens"])),
                     "token_agreement": round(token_agreement(tokens, base["tokens"]), 4),
                     "mean_length": round(sum(map(len, tokens)) / len(tokens), 1),
                     "ar_nll": round(ar_nll(ar_model, prompts, tokens, eos), 3),
                     "wall_s": round(wall, 2), "speedup": round(base["wall"] / wall, 2), **extra})
        tqdm.write(f"{label}: {rows[-1]['calls_per_row']} calls/row, {rows[-1]['identical_rows']}/"
                   f"{len(prompts)} identical, {wall:.1f} s")

    n = len(prompts)
    lines = [f"{args.model}, {n} held-out prompts, gen_length {args.gen_length}, block {args.block_length}, "
             f"{args.device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}", "",
             "| decode | calls per row (NFE) | NFE reduction | identical to baseline | token agreement "
             "| mean length | NLL under stdlib-ar | wall-clock vs baseline |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['decode']} | {r['calls_per_row']:g} | {r['nfe_reduction']:g}x | "
                     f"{r['identical_rows']}/{n} | {100 * r['token_agreement']:.1f}% | {r['mean_length']:g} | "
                     f"{r['ar_nll']:.2f} | {r['speedup']:g}x |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diffusion.md").write_text(table + "\n")
    (out / "diffusion.json").write_text(json.dumps({"args": vars(args), "window": window, "rows": rows},
                                                   indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1))
        labels = [r["decode"] for r in rows][::-1]
        ax.barh(labels, [r["calls_per_row"] for r in rows][::-1], color="tab:blue")
        for i, r in enumerate(rows[::-1]):
            ax.text(r["calls_per_row"], i, f" {r['identical_rows']}/{n} identical", va="center", fontsize=8)
        ax.set_xlabel("model calls per row (NFE)")
        ax.set_title(f"{args.model}: diffusion decoding at gen_length {args.gen_length}")
        fig.tight_layout()
        fig.savefig(out / "diffusion.png", dpi=120)
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
