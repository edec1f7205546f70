"""CTC prefix scoring microbenchmark (AVSR joint decoding): the ``ctc_prefix_score`` op against
the CTC prefix scorer written the ESPnet way (``leapdec.speech.espnet_scorer``, plain PyTorch,
vectorised over hypotheses x candidates), in the same run, same inputs:

1. one scoring step: B utterances x beam hypotheses x pre-beam candidates (1.5 x beam) over T
   frames, V characters;
2. the whole joint CTC/attention beam search (ctc_weight 0.3, beam 10, ESPnet's pre-beam and end
   detection) over the same utterances with a cheap stand-in attention decoder (a fixed random
   bigram table, so the CTC side dominates as it does with a small decoder); per-step time and
   a check that both scorers give the same hypotheses.

CTC log-probs are synthetic: peaked on a random character sequence per utterance, with noise.
Prints the tables and writes ctc.md, ctc.json and ctc.png to --out.

    leapdec bench ctc --quick              # small shapes, a few seconds
    leapdec bench ctc                      # B 1/4/8, T 100-300, V 30, beam 10, 1 thread
    leapdec bench ctc --model espeak-avsr  # also: transcribe() of synthesised held-out sentences
                                           # with the real model, op vs ESPnet-style scorer
"""

from __future__ import annotations

import argparse

import torch

from leapdec.bench.common import add_output_arguments, pyplot, time_calls, time_runs, writable_dir, write_outputs
from leapdec.speech.search import beam_search, make_scorer


def synthetic_log_probs(B, T, V, seed=0, blank=0, eos=None):
    """CTC log-probs [B, T, V] peaked on a random label sequence per utterance (a label about
    every third frame, blanks between), plus noise."""
    eos = V - 1 if eos is None else eos
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=gen)
    for b in range(B):
        labels = torch.randint(1, eos, (T // 3,), generator=gen).tolist()
        for i, lab in enumerate(labels):
            logits[b, 3 * i, lab] += 4.0
            logits[b, 3 * i + 1, blank] += 4.0
            logits[b, 3 * i + 2, blank] += 4.0
    return torch.log_softmax(logits, -1)


class BigramDecoder:
    """A stand-in attention decoder: next-token log-probs from a fixed random table of the last
    token (no state)."""

    def __init__(self, V, seed=0, device="cpu"):
        gen = torch.Generator().manual_seed(seed + 1)
        self.table = torch.log_softmax(2.0 * torch.randn(V, V, generator=gen), -1).to(device)

    def decoder_step(self, state, tokens):
        return self.table[tokens.long()], state

    def reorder(self, state, idx):
        return state


def bench_step(B, T, V, beam, scorer, repeats, warmup, device="cpu"):
    """Seconds of one scoring call (all hypotheses x pre-beam candidates), after a few tokens."""
    lp = synthetic_log_probs(B, T, V).to(device)
    N, C = B * beam, int(1.5 * beam)
    gen = torch.Generator().manual_seed(1)
    utt = torch.arange(B, dtype=torch.int32).repeat_interleave(beam).to(device)
    cand = torch.randint(1, V, (N, C), generator=gen, dtype=torch.int32).to(device)
    last = torch.randint(1, V, (N,), generator=gen, dtype=torch.int32).to(device)
    sc = make_scorer(scorer, lp, [T] * B, 0, V - 1)
    r = sc.initial_state(utt)
    return time_calls(lambda: sc(r, 5, last, utt, cand), device, warmup=warmup, repeats=repeats)


def bench_search(B, T, V, beam, scorer, repeats, warmup, device="cpu"):
    lp = synthetic_log_probs(B, T, V).to(device)
    dec = BigramDecoder(V, device=device)
    stats = {}

    def run():
        stats.clear()
        res = beam_search(torch.full((B,), T), lp, dec, None, sos=V - 1, eos=V - 1, blank=0, beam=beam,
                          ctc_weight=0.3, scorer=scorer, stats=stats)
        return [r.tokens for r in res], dict(stats)

    (tokens, st), spread = time_runs(run, device, warmup=warmup, repeats=repeats)
    return tokens, st, spread


def bench_model(name, n_utts, beam, repeats, warmup):
    """transcribe() of n_utts synthesised held-out sentences (clean, AV) with the model ``name``:
    wall seconds with each scorer and whether the texts agree."""
    import leapdec.speech as speech

    model = speech.load(name)
    sentences = speech.sentence_splits()["heldout"][:n_utts]
    utts = [speech.synthesize(text, seed=i) for i, text in enumerate(sentences)]
    out = {}
    for scorer in ("op", "espnet"):
        res, spread = time_runs(lambda: speech.transcribe(model, utts, beam=beam, scorer=scorer), "cpu",
                                warmup=warmup if scorer == "op" else 0, repeats=repeats)
        out[scorer] = (res, spread)
    return sentences, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="leapdec bench ctc", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    ap.add_argument("--gpu-check", action="store_true", help="gpu_check.sh's short run on CUDA")
    ap.add_argument("--shapes", default=None, help="utterances x frames to run, e.g. 1x100,8x300")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--vocab", type=int, default=30, help="characters incl. blank and eos (default: %(default)s)")
    ap.add_argument("--model", default=None, help="also time transcribe() with this speech model (zoo name or folder)")
    ap.add_argument("--utterances", type=int, default=8, help="sentences for --model (default: %(default)s)")
    add_output_arguments(ap, default_repeats=3, default_warmup=1)
    args = ap.parse_args(argv)
    out = writable_dir(args.out)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.gpu_check else args.device)
    V, beam = args.vocab, args.beam
    shapes = [(1, 100), (2, 150)] if args.quick else [(1, 100), (1, 300), (4, 200), (8, 300)]
    if args.gpu_check:
        shapes = [(1, 300), (8, 300), (32, 300)]
    if args.shapes:
        shapes = [tuple(int(x) for x in item.split("x")) for item in args.shapes.split(",")]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} thread(s)"
    title = (f"CTC prefix scoring on {where}, V={V}, beam {beam}, pre-beam "
             f"{int(1.5 * beam)}; median [min-max] of {args.repeats} after {args.warmup} warm-up")
    print(title)
    md = [title, "", "One scoring step (B x beam hypotheses x pre-beam candidates):", "",
          "| B | T | op ms | ESPnet-style ms | speedup |", "|---|---|---|---|---|"]
    rows = []
    for B, T in shapes:
        op = bench_step(B, T, V, beam, "op", args.repeats * 5, args.warmup, device).scaled(1e3)
        es = bench_step(B, T, V, beam, "espnet", args.repeats * 5, args.warmup, device).scaled(1e3)
        rows.append(dict(kind="step", batch=B, frames=T, op_ms=op.as_dict(), espnet_ms=es.as_dict(),
                         speedup=es.median / op.median))
        print(f"step   B={B} T={T}: op {op.cell('.2f')} ms, ESPnet-style {es.cell('.2f')} ms, "
              f"{es.median / op.median:.1f}x")
        md.append(f"| {B} | {T} | {op.cell('.2f')} | {es.cell('.2f')} | {es.median / op.median:.1f}x |")
    md += ["", "Whole joint search (ctc_weight 0.3, bigram stand-in decoder), per utterance batch:", "",
           "| B | T | steps | op s | op CTC s | ESPnet-style s | ESPnet-style CTC s | speedup (search) | "
           "speedup (CTC) | same output |", "|---|---|---|---|---|---|---|---|---|---|"]
    all_same = True
    for B, T in shapes:
        tok_op, st_op, sp_op = bench_search(B, T, V, beam, "op", args.repeats, args.warmup, device)
        tok_es, st_es, sp_es = bench_search(B, T, V, beam, "espnet", args.repeats, 0, device)
        same = tok_op == tok_es
        all_same &= same
        rows.append(dict(kind="search", batch=B, frames=T, steps=st_op["steps"], op_s=sp_op.as_dict(),
                         espnet_s=sp_es.as_dict(), op_ctc_s=st_op["ctc_s"], espnet_ctc_s=st_es["ctc_s"],
                         speedup=sp_es.median / sp_op.median, ctc_speedup=st_es["ctc_s"] / st_op["ctc_s"],
                         same_output=same))
        print(f"search B={B} T={T}: {st_op['steps']} steps, op {sp_op.cell('.3f')} s (CTC {st_op['ctc_s']:.3f}), "
              f"ESPnet-style {sp_es.cell('.3f')} s (CTC {st_es['ctc_s']:.3f}), {sp_es.median / sp_op.median:.1f}x, "
              f"same output {same}")
        md.append(f"| {B} | {T} | {st_op['steps']} | {sp_op.cell('.3f')} | {st_op['ctc_s']:.3f} | "
                  f"{sp_es.cell('.3f')} | "
                  f"{st_es['ctc_s']:.3f} | {sp_es.median / sp_op.median:.1f}x | "
                  f"{st_es['ctc_s'] / st_op['ctc_s']:.1f}x | {same} |")
    if args.model:
        sentences, res = bench_model(args.model, args.utterances, beam, args.repeats, args.warmup)
        (r_op, s_op), (r_es, s_es) = res["op"], res["espnet"]
        same = r_op.texts == r_es.texts
        all_same &= same
        row = dict(kind="model", model=args.model, utterances=len(sentences), frames=r_op.stats["frames"],
                   steps=r_op.stats["steps"], op_s=s_op.as_dict(), espnet_s=s_es.as_dict(),
                   op_ctc_s=r_op.stats["ctc_s"], espnet_ctc_s=r_es.stats["ctc_s"],
                   decoder_s=r_op.stats["decoder_s"], encode_s=r_op.stats["encode_s"],
                   speedup=s_es.median / s_op.median, same_output=same)
        rows.append(row)
        line = (f"transcribe() with {args.model}, {len(sentences)} held-out sentences in one batch (AV, clean, "
                f"beam {beam}, ctc_weight 0.3): op {s_op.cell('.2f')} s (CTC {row['op_ctc_s']:.2f}, decoder "
                f"{row['decoder_s']:.2f}, encoder {row['encode_s']:.2f}), ESPnet-style {s_es.cell('.2f')} s "
                f"(CTC {row['espnet_ctc_s']:.2f}): {row['speedup']:.1f}x, same texts {same}")
        print(line)
        md += ["", line]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r for r in rows if r["kind"] == "step"]
    labels = [f"B{r['batch']} T{r['frames']}" for r in steps]
    ax.bar([i - 0.2 for i in range(len(steps))], [r["op_ms"]["median"] for r in steps], 0.4,
           label="ctc_prefix_score op")
    ax.bar([i + 0.2 for i in range(len(steps))], [r["espnet_ms"]["median"] for r in steps], 0.4,
           label="ESPnet-style PyTorch")
    ax.set_xticks(range(len(steps)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms per scoring step")
    ax.set_title(f"CTC prefix scoring, beam {beam}, V {V}, {where}")
    ax.legend()
    fig.tight_layout()
    report = dict(benchmark="ctc", device=str(device), device_name=where, threads=args.threads,
                  torch=torch.__version__, vocab=V, beam=beam,
                  warmup=args.warmup, repeats=args.repeats, rows=rows)
    paths = write_outputs(out, "ctc", "\n".join(md), report, fig)
    print("wrote " + ", ".join(map(str, paths)))
    return 0 if all_same else 1


if __name__ == "__main__":
    raise SystemExit(main())
