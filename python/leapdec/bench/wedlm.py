"""WeDLM streaming decoding on the zoo's stdlib-wedlm against our AR engine.

For each entropy threshold (and window), decodes the held-out prompts with ``method="wedlm"``
and reports tokens per forward, model calls, tokens/s and the speedup over greedy AR of the
same checkpoint (our engine, same batch, same run), rows identical to that AR output, token
agreement, and the outputs' NLL under stdlib-ar (nats per token; AR's own output is the
reference point). Threshold 0 fills one mask per forward (AR-like), larger thresholds fill more.
Each decode is timed over --repeats runs after a warm-up: tokens/s as median [min-max], speedup
from the medians. Writes wedlm.md, wedlm.json and wedlm.png to --out.

    leapdec bench wedlm [--thresholds 0.4,0.8,1.6] [--batch 1,8] [--out bench_out]
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm.auto import tqdm

import leapdec
from leapdec.bench.common import Spread, add_output_arguments, pyplot, writable_dir, write_outputs
from leapdec.bench.diffusion import has_body, prompt_texts
from leapdec.evaluate import token_agreement
from leapdec.train import corpus
from leapdec.train import tokenizer as tokenizers_
from leapdec.train.rediff import ar_nll


def timed(model, prompts, batch: int, repeats: int = 1, **options):
    """(tokens per row, wall seconds Spread, model calls, tokens per forward and row) of decoding
    ``prompts`` ``batch`` rows at a time, timed ``repeats`` times (the outputs of the first run)."""
    walls, first = [], None
    for _ in range(max(1, repeats)):
        result = _timed_once(model, prompts, batch, **options)
        walls.append(result[1])
        first = first or result
    tokens, _, calls, per_forward = first
    return tokens, Spread.of(walls), calls, per_forward


def _timed_once(model, prompts, batch: int, **options):
    tokens, wall, calls, row_calls, produced = [], 0.0, 0, 0, 0.0
    for s in range(0, len(prompts), batch):
        chunk = prompts[s:s + batch]
        t0 = time.perf_counter()
        out = leapdec.generate(model, chunk, temperature=0.0, **options)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        wall += time.perf_counter() - t0
        tokens += out.tokens
        calls += int(out.stats["model_calls"])
        rc = out.stats.get("row_calls", sum(len(g) for g in out.stats.get("accepted_lengths", [])))
        rc = rc or out.stats["model_calls"] * len(chunk)
        produced += out.stats["tokens_per_call"] * rc
        row_calls += rc
    return tokens, wall, calls, produced / max(1, row_calls)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="leapdec bench wedlm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="stdlib-wedlm")
    ap.add_argument("--ar-model", default="stdlib-ar", help="scores the outputs (NLL)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompts-from", choices=["functions", "requests", "stream"], default="functions",
                    help="held-out function signatures + docstrings; short requests a user would write "
                         "(`def name(args):` + a one-line docstring, from the held-out split); or "
                         "96-token windows of held-out files (mid-file code: lower entropy)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--thresholds", default="0,0.2,0.4,0.8,1.6")
    ap.add_argument("--windows", default="16")
    ap.add_argument("--position-penalty", type=float, default=0.02)
    ap.add_argument("--batch", default="1,8", help="rows per generate call, comma-separated")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="2 prompts, 16 tokens, 2 thresholds (CPU smoke run)")
    add_output_arguments(ap, default_repeats=3)
    args = ap.parse_args(argv)
    out_dir = writable_dir(args.out)      # before any work: a bad --out fails now, not at the end
    if args.quick:
        args.prompts, args.max_new_tokens, args.thresholds, args.batch = 2, 16, "0,0.8", "2"
        args.repeats = min(args.repeats, 2)

    model = leapdec.load_model(args.model, device=args.device)
    scorer = leapdec.load_model(args.ar_model, device=args.device)
    tok = tokenizers_.load_tokenizer(model.checkpoint_dir)
    eos = tokenizers_.special_token_ids(tok)["eos"]
    texts = None
    if args.prompts_from in ("functions", "requests"):
        texts = prompt_texts(args.prompts_from, args.prompts)
        prompts = [[eos] + tok.encode(t, add_special_tokens=False).ids for t in texts]
    else:
        stream = corpus.encode_corpus(tok, "heldout")
        stride = (stream.numel() - 96) // max(1, args.prompts)
        prompts = [stream[i * stride:i * stride + 96].tolist() for i in range(args.prompts)]
    n, new = len(prompts), args.max_new_tokens

    def answered(rows_tokens):
        """Rows whose answer stopped before ``max_new_tokens`` and completes the function with a
        body (``bench.diffusion.has_body``), for the function prompts; None for stream windows."""
        if texts is None:
            return None
        return sum(len(t) < new and has_body(q, tok.decode(t)) for q, t in zip(texts, rows_tokens))
    for _ in range(max(0, args.warmup)):                                        # warm-up
        leapdec.generate(model, prompts[:1], method="ar", max_new_tokens=4)
        leapdec.generate(model, prompts[:1], method="wedlm", max_new_tokens=4)
    rows = []
    grid = [(b, w, t) for b in map(int, args.batch.split(",")) for w in map(int, args.windows.split(","))
            for t in map(float, args.thresholds.split(","))]
    ar_runs = {}
    for batch, window, threshold in tqdm(grid, desc="wedlm"):
        if batch not in ar_runs:
            ar_tokens, ar_walls, ar_calls, _ = timed(model, prompts, batch, args.repeats, method="ar",
                                                     max_new_tokens=new)
            ar_wall = ar_walls.median
            ar_runs[batch] = (ar_tokens, ar_wall)
            tps = ar_walls.inverse(sum(map(len, ar_tokens)))
            rows.append({"decode": "AR (our engine)", "batch": batch, "window": None, "threshold": None,
                         "tokens_per_forward": 1.0, "model_calls": ar_calls,
                         "tokens_per_s": round(tps.median, 1), "tokens_per_s_spread": tps.as_dict(),
                         "speedup": 1.0,
                         "identical_rows": n, "token_agreement": 1.0, "answered": answered(ar_tokens),
                         "ar_nll": round(ar_nll(scorer, prompts, ar_tokens, eos), 3)})
        ar_tokens, ar_wall = ar_runs[batch]
        tokens, walls, calls, per_forward = timed(model, prompts, batch, args.repeats, method="wedlm",
                                                  max_new_tokens=new, window=window, threshold=threshold,
                                                  position_penalty=args.position_penalty)
        wall = walls.median
        tps = walls.inverse(sum(map(len, tokens)))
        rows.append({"decode": "WeDLM", "batch": batch, "window": window, "threshold": threshold,
                     "tokens_per_forward": round(per_forward, 2), "model_calls": calls,
                     "tokens_per_s": round(tps.median, 1), "tokens_per_s_spread": tps.as_dict(),
                     "speedup": round(ar_wall / wall, 2),
                     "identical_rows": sum(a == b for a, b in zip(tokens, ar_tokens)),
                     "token_agreement": round(token_agreement(tokens, ar_tokens), 4),
                     "answered": answered(tokens),
                     "ar_nll": round(ar_nll(scorer, prompts, tokens, eos), 3)})
        tqdm.write(str(rows[-1]))

    lines = [f"{args.model}, {n} held-out prompts ({args.prompts_from}), {new} new tokens, position penalty {args.position_penalty}, "
             f"{args.device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; tok/s: median [min-max] of "
             f"{args.repeats} runs after {args.warmup} warm-up", "",
             "| decode | batch | window | entropy threshold | tokens per forward | model calls | tok/s "
             "| vs AR | rows identical to AR | token agreement | answered with a body | NLL under stdlib-ar |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        answered_cell = "-" if r["answered"] is None else f"{r['answered']}/{n}"
        lines.append(f"| {r['decode']} | {r['batch']} | {r['window'] or '-'} | "
                     f"{'-' if r['threshold'] is None else r['threshold']} | {r['tokens_per_forward']:.2f} | "
                     f"{r['model_calls']} | {Spread(**r['tokens_per_s_spread']).cell()} | {r['speedup']:.2f}x | "
                     f"{r['identical_rows']}/{n} | {100 * r['token_agreement']:.1f}% | "
                     f"{answered_cell} | "
                     f"{r['ar_nll']:.2f} |")
    table = "\n".join(lines)
    print(table)
    try:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        for batch in sorted({r["batch"] for r in rows}):
            pts = [r for r in rows if r["decode"] == "WeDLM" and r["batch"] == batch]
            ax.plot([r["tokens_per_forward"] for r in pts], [r["token_agreement"] for r in pts], "o-",
                    label=f"batch {batch}")
            for r in pts:
                ax.annotate(f"{r['threshold']:g}", (r["tokens_per_forward"], r["token_agreement"]), fontsize=7)
        ax.set_xlabel("tokens per forward")
        ax.set_ylabel("token agreement with greedy AR")
        ax.set_title(f"{args.model}: WeDLM entropy threshold sweep")
        ax.legend()
        fig.tight_layout()
    except ImportError:
        fig = None
    paths = write_outputs(out_dir, "wedlm", table, {"args": vars(args), "rows": rows}, fig)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
