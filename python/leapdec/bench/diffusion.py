"""Diffusion LM decoding on the zoo's stdlib-mdm: model calls (NFE), speed and quality.

Every decode runs the same held-out prompts (``<|endoftext|>`` + signature + docstring) and is
compared with the LLaDA baseline (one token per step, ``steps == gen_length``, no early exit, as
in the LLaDA and Learn2PD papers):

* LLaDA early exit, Fast-dLLM threshold 0.9, Learn2PD, Learn2PD + EoTP (threshold 0.9 and
  Learn2PD's own rule, 0), each uncached and, for Learn2PD + EoTP, on the prefix / dual cache;
* ReDiff at few steps (``gen_length / 8``): plain LLaDA, the refined model without revision and
  ReDiff (refined + revision), against the baseline.

Columns: model calls per row (NFE) and the reduction over the baseline, rows identical to the
baseline output, token agreement, mean answer length, answers with a body (the answer stopped
before gen_length, prompt + answer parse and the body holds a statement other than ``pass``, ``...``, a bare name or constant),
distinct answers (a model that answers every prompt alike shows here), the answers' NLL under stdlib-ar (nats per
token, answer + EOS) and wall-clock speedup over the baseline in this run (medians), with each
decode's wall time as median [min-max] over --repeats timed runs after --warmup warm-up decodes of
one prompt. Writes diffusion.md, diffusion.json and diffusion.png to --out.

    leapdec bench diffusion [--gen-length 256] [--prompts 8] [--out bench_out]
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm.auto import tqdm

import leapdec
from leapdec.bench.common import add_output_arguments, pyplot, time_runs, writable_dir, write_outputs
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


def prompt_texts(kind: str, n: int) -> list[str]:
    """``n`` held-out prompts of one kind (see ``--prompt-kind``)."""
    if kind == "functions":
        return [p.prompt for p in corpus.eval_prompts(n, seed=0, max_prompt_chars=600)]
    from leapdec.train import distill

    return [distill.request_prompt(sig, summary) for sig, summary, _ in distill.requests(n, "heldout")]


def has_body(prompt: str, answer: str) -> bool:
    """Whether ``prompt + answer`` parses as Python and the function's body (after its docstring)
    holds a statement that does something: not ``pass``, ``...``, a bare name or a constant."""
    import ast
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(prompt + answer))
    except (SyntaxError, ValueError):
        return False
    fn = tree.body[0] if tree.body else None
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    inert = (ast.Name, ast.Constant)
    return any(not isinstance(st, ast.Pass) and not (isinstance(st, ast.Expr) and isinstance(st.value, inert))
               for st in fn.body)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="leapdec bench diffusion", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="stdlib-mdm")
    ap.add_argument("--ar-model", default="stdlib-ar", help="scores the answers (NLL)")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-kind", choices=("functions", "requests"), default="functions",
                    help="functions: held-out functions cut after their docstrings (signature + full "
                         "docstring, methods included); requests: short requests a user would write, "
                         "`def name(args):` + a one-line docstring, from the held-out split's "
                         "functions (distill.requests)")
    ap.add_argument("--batch", type=int, default=8, help="rows per generate call")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", default=None, help="comma-separated labels' prefixes to run (baseline always)")
    ap.add_argument("--quick", action="store_true", help="2 prompts, gen_length 64 (CPU smoke run)")
    add_output_arguments(ap, default_repeats=3)
    args = ap.parse_args(argv)
    out = writable_dir(args.out)          # before any work: a bad --out fails now, not at the end
    if args.quick:
        args.prompts, args.gen_length = 2, 64
        args.repeats = min(args.repeats, 2)

    model = leapdec.load_model(args.model, device=args.device)
    ar_model = leapdec.load_model(args.ar_model, device=args.device)
    tok = tokenizers_.load_tokenizer(model.checkpoint_dir)
    eos = tokenizers_.special_token_ids(tok)["eos"]
    texts = prompt_texts(args.prompt_kind, args.prompts)
    prompts = [[eos] + tok.encode(text, add_special_tokens=False).ids for text in texts]
    window = model.config.extra.get("seq_len") or model.config.max_position_embeddings
    print(f"{args.model}: {len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} "
          f"tokens, gen_length {args.gen_length}, block {args.block_length}, {args.device}")

    runs = variants(args.gen_length, args.block_length)
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        runs = [v for i, v in enumerate(runs) if i == 0 or any(v[0].startswith(k) for k in keep)]
    rows, base = [], None
    for label, method, options in tqdm(runs, desc="decodes"):
        def decode(rows, method=method, options=options):
            tokens, row_calls, extra = [], 0, {}
            for s in range(0, len(rows), args.batch):
                batch = rows[s:s + args.batch]
                res = leapdec.generate(model, batch, method=method, max_new_tokens=args.gen_length,
                                       block_length=args.block_length, **options)
                tokens += res.tokens
                row_calls += int(res.stats.get("row_calls", res.stats["model_calls"] * len(batch)))
                if "revisions" in res.stats:
                    extra["revisions"] = extra.get("revisions", 0) + int(res.stats["revisions"])
            return tokens, row_calls, extra

        for _ in range(max(0, args.warmup)):
            decode(prompts[:1])
        (tokens, row_calls, extra), walls = time_runs(lambda: decode(prompts), args.device, warmup=0,
                                                      repeats=args.repeats)
        wall = walls.median
        extra["wall_s_spread"] = walls.as_dict()
        if base is None:
            base = {"tokens": tokens, "calls": row_calls / len(prompts), "wall": wall}
        calls = row_calls / len(prompts)
        rows.append({"decode": label, "method": method, "options": options,
                     "calls_per_row": round(calls, 2), "nfe_reduction": round(base["calls"] / calls, 2),
                     "identical_rows": sum(a == b for a, b in zip(tokens, base["tokens"])),
                     "token_agreement": round(token_agreement(tokens, base["tokens"]), 4),
                     "mean_length": round(sum(map(len, tokens)) / len(tokens), 1),
                     "answered": sum(len(t) < args.gen_length and has_body(q, tok.decode(t))
                                     for q, t in zip(texts, tokens)),
                     "distinct_answers": len({tuple(t) for t in tokens}),
                     "ar_nll": round(ar_nll(ar_model, prompts, tokens, eos), 3),
                     "wall_s": round(wall, 2), "speedup": round(base["wall"] / wall, 2), **extra})
        tqdm.write(f"{label}: {rows[-1]['calls_per_row']} calls/row, {rows[-1]['identical_rows']}/"
                   f"{len(prompts)} identical, {walls.cell('.2f')} s")

    n = len(prompts)
    lines = [f"{args.model}, {n} held-out prompts ({args.prompt_kind}), gen_length {args.gen_length}, block {args.block_length}, "
             f"{args.device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; wall s: median [min-max] "
             f"of {args.repeats} runs after {args.warmup} warm-up", "",
             "| decode | calls per row (NFE) | NFE reduction | identical to baseline | token agreement "
             "| mean length | answered with a body | distinct answers | NLL under stdlib-ar | wall s "
             "| wall-clock vs baseline |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        w = r["wall_s_spread"]
        wall_cell = f"{w['median']:.2f} [{w['min']:.2f}-{w['max']:.2f}]" if w["n"] > 1 else f"{w['median']:.2f}"
        lines.append(f"| {r['decode']} | {r['calls_per_row']:g} | {r['nfe_reduction']:g}x | "
                     f"{r['identical_rows']}/{n} | {100 * r['token_agreement']:.1f}% | {r['mean_length']:g} | "
                     f"{r['answered']}/{n} | {r['distinct_answers']}/{n} | {r['ar_nll']:.2f} | {wall_cell} | {r['speedup']:g}x |")
    table = "\n".join(lines)
    print(table)
    try:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1))
        labels = [r["decode"] for r in rows][::-1]
        ax.barh(labels, [r["calls_per_row"] for r in rows][::-1], color="tab:blue")
        for i, r in enumerate(rows[::-1]):
            ax.text(r["calls_per_row"], i, f" {r['identical_rows']}/{n} identical", va="center", fontsize=8)
        ax.set_xlabel("model calls per row (NFE)")
        ax.set_title(f"{args.model}: diffusion decoding at gen_length {args.gen_length}")
        fig.tight_layout()
    except ImportError:
        fig = None
    paths = write_outputs(out, "diffusion", table, {"args": vars(args), "window": window, "rows": rows}, fig)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
