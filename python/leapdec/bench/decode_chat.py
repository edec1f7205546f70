"""Speculative methods on a pretrained chat model (``leapdec bench decode --model
smollm2-135m-instruct``): Medusa and Falcon (and any AR-side method given) against our AR engine on
held-out chat requests (``leapdec.train.distill``'s held-out split, never trained on), greedy, up
to ``--max-new-tokens`` per answer (an answer ends at the end-of-turn token, as a chat user sees
it), batch 1 (each prompt alone) and batch B (all prompts in one call).

Methods are timed in interleaved rounds (ar, medusa, falcon, ar, medusa, ...) after a warm-up, and
tokens/s are medians [min-max] over the rounds. Each row carries the weight-streaming floor of one
decode step (weight bytes / measured read bandwidth), and a split of the wall time: the base
model's forwards, the drafter (heads' top-k or the Falcon drafter's forwards and logits) and the
rest (Python: planning, tree bookkeeping, verification, sampling).
"""

from __future__ import annotations

import statistics
import time

import torch

import leapdec
from leapdec.bench.common import Spread


class _Timers:
    """Accumulated wall time of wrapped methods, by label (class-level wrapping, undone on exit)."""

    def __init__(self, targets):
        self.targets, self.seconds, self._orig = targets, {}, []

    def __enter__(self):
        for label, cls, name in self.targets:
            orig = getattr(cls, name)
            self._orig.append((cls, name, orig))
            self.seconds.setdefault(label, 0.0)

            def wrapped(*a, _orig=orig, _label=label, **k):
                t0 = time.perf_counter()
                try:
                    return _orig(*a, **k)
                finally:
                    self.seconds[_label] += time.perf_counter() - t0
            setattr(cls, name, wrapped)
        return self

    def __exit__(self, *exc):
        for cls, name, orig in reversed(self._orig):
            setattr(cls, name, orig)

    def reset(self):
        for k in self.seconds:
            self.seconds[k] = 0.0


def chat_prompts(name: str, n: int, seed: int = 0) -> list[list[int]]:
    """``n`` held-out chat requests of the distillation set, as token ids."""
    from leapdec.train import distill

    tok = leapdec.load_tokenizer(name)
    return [distill.prompt_ids(name, tok, r, chat=True) for r in distill.requests(n, "heldout", seed=seed)]


def weight_floor(model) -> dict:
    """Bytes of weights read per decode step and the tokens/s ceiling at the measured bandwidth."""
    from leapdec.bench.decode import copy_bandwidth

    embed = model.embed_tokens.weight
    read = [p for p in model.parameters() if p is not embed or p is model.lm_head.weight]   # one embedding row only
    weight_bytes = sum(p.numel() * p.element_size() for p in read)
    bw = copy_bandwidth(model.device) / 2
    return {"weight_bytes": weight_bytes, "read_GBps": bw / 1e9, "floor_tok_s": bw / weight_bytes}


def run_rows(name: str, methods, batches, prompts_n: int, max_new_tokens: int, repeats: int,
             threads: int, progress: bool = True, weight_dtype: str | None = None) -> dict:
    """Interleaved timing of ``methods`` at each batch size; returns the rows and the floor.
    ``weight_dtype``: ``load_model``'s (linear weights kept in it, packed and fused on CPU)."""
    from tqdm.auto import tqdm

    from leapdec.models.drafter import FalconDrafter
    from leapdec.models.heads import MedusaHeads
    from leapdec.models.transformer import Transformer

    torch.set_num_threads(threads)
    model = leapdec.load_model(name, weight_dtype=weight_dtype)
    prompts = chat_prompts(name, max(prompts_n, max(batches)))
    floor = weight_floor(model)
    targets = [("base", Transformer, "forward_paged"), ("drafter", MedusaHeads, "topk"),
               ("drafter", FalconDrafter, "forward_paged"), ("drafter", FalconDrafter, "draft_logits")]
    rows = []
    with _Timers(targets) as timers:
        for batch in batches:
            groups = [[p] for p in prompts[:prompts_n]] if batch == 1 else [prompts[:batch]]
            for m in methods:                                       # warm-up: companions load, caches size
                leapdec.generate(model, groups[0], method=m, max_new_tokens=8)
            samples = {m: [] for m in methods}
            last = {}
            bar = tqdm(total=repeats * len(methods), disable=not progress, desc=f"{name} batch {batch}")
            for _ in range(repeats):
                for m in methods:
                    timers.reset()
                    outs, wall, calls, accepted, steps = [], 0.0, 0, 0.0, 0
                    for g in groups:
                        t0 = time.perf_counter()
                        out = leapdec.generate(model, g, method=m, max_new_tokens=max_new_tokens)
                        wall += time.perf_counter() - t0
                        outs += out.tokens
                        calls += int(out.stats.get("model_calls", 0))
                        if out.stats.get("tree_steps"):
                            accepted += out.stats["mean_accepted_length"] * out.stats["tree_steps"]
                            steps += out.stats["tree_steps"]
                    samples[m].append(wall)
                    last[m] = dict(tokens=outs, calls=calls, split=dict(timers.seconds), wall=wall,
                                   accepted=accepted / steps if steps else None)
                    bar.update(1)
            bar.close()
            ar_tokens = last["ar"]["tokens"]
            new = sum(len(t) for t in ar_tokens)
            ar_med = statistics.median(samples["ar"])
            for m in methods:
                wall = Spread.of(samples[m])
                info = last[m]
                split = info["split"]
                base_s, draft_s = split.get("base", 0.0), split.get("drafter", 0.0)
                rows.append({
                    "method": m, "batch": batch, "rows": sum(len(g) for g in groups), "new_tokens": new,
                    "model_calls": info["calls"], "tokens_per_call": new / info["calls"] if info["calls"] else 0.0,
                    "tokens_per_s": wall.inverse(new).as_dict(), "speedup_vs_ar": ar_med / wall.median,
                    "ms_per_model_call": 1e3 * info["wall"] / max(info["calls"], 1),
                    "identical_to_ar": info["tokens"] == ar_tokens,
                    "mean_accepted_length": info["accepted"] if m != "ar" else None,
                    "split_s": {"base_forward": base_s, "drafter": draft_s,
                                "python_rest": max(info["wall"] - base_s - draft_s, 0.0)},
                })
    head_ms = head_costs(model) if "medusa" in methods else None
    return {"model": name, "weight_dtype": weight_dtype or "as loaded", "threads": threads, "repeats": repeats,
            "max_new_tokens": max_new_tokens,
            "prompts": prompts_n, "floor": floor, "rows": rows, "head_ms": head_ms}


def head_costs(model, repeats: int = 20) -> dict:
    """Milliseconds of one Medusa draft (the zoo heads' top-10 at one hidden state) with the heads'
    reduced vocabulary, and with the same ResBlocks projecting onto the whole vocabulary (shared LM
    head) and through a full-vocabulary projection of their own per head (Medusa's layout)."""
    from leapdec.decoding.medusa import load_heads
    from leapdec.models.heads import MedusaHeads

    heads = load_heads(model)
    x = torch.randn(1, heads.hidden_size)
    variants = {f"reduced {heads.draft_vocab_size}": heads}
    if heads.reduced_vocab:
        full = MedusaHeads(heads.num_heads, heads.hidden_size, heads.vocab_size, heads.num_layers,
                           shared_lm_head=True).attach(model)
        full.heads.load_state_dict(heads.heads.state_dict())
        variants[f"shared full {heads.vocab_size}"] = full
    own = MedusaHeads.from_base(model, heads.num_heads, heads.num_layers, shared_lm_head=False)
    variants[f"own full {heads.vocab_size} (Medusa)"] = own
    out = {}
    for label, h in variants.items():
        for _ in range(3):
            h.topk(x, 10)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            h.topk(x, 10)
            times.append(time.perf_counter() - t0)
        out[label] = 1e3 * statistics.median(times)
    del own
    return out


def markdown(report: dict) -> str:
    fl = report["floor"]
    head = (f"{report['model']} (linear weights: {report.get('weight_dtype', 'as loaded')}), {report['threads']} thread(s), held-out chat requests, greedy, up to "
            f"{report['max_new_tokens']} new tokens (end of turn stops a row), tokens/s median [min-max] of "
            f"{report['repeats']} interleaved rounds. Weight-streaming floor of one decode step: "
            f"{fl['weight_bytes'] / 1e6:.0f} MB at {fl['read_GBps']:.1f} GB/s read = {fl['floor_tok_s']:.1f} "
            f"tok/s per row.\n\n"
            "| method | batch | new tokens | model calls | tokens/call | mean accepted | tokens/s | speedup vs AR "
            "| ms per call | base fwd / drafter / rest (s) | identical to AR |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in report["rows"]:
        tps = Spread(**r["tokens_per_s"])
        sp = r["split_s"]
        acc = f"{r['mean_accepted_length']:.2f}" if r["mean_accepted_length"] else "-"
        lines.append(f"| {r['method']} | {r['batch']} | {r['new_tokens']} | {r['model_calls']} | "
                     f"{r['tokens_per_call']:.2f} | {acc} | {tps.cell()} | {r['speedup_vs_ar']:.2f}x | "
                     f"{r['ms_per_model_call']:.1f} | {sp['base_forward']:.1f} / {sp['drafter']:.1f} / "
                     f"{sp['python_rest']:.1f} | {'yes' if r['identical_to_ar'] else 'no'} |\n")
    text = head + "".join(lines)
    if report.get("head_ms"):
        ar = next((r["ms_per_model_call"] for r in report["rows"] if r["method"] == "ar" and r["batch"] == 1), None)
        text += ("\nOne Medusa draft (top-10 of every head at one hidden state), median ms"
                 + (f" and in AR steps ({ar:.1f} ms)" if ar else "") + ": "
                 + "; ".join(f"{k}: {v:.2f} ms" + (f" ({v / ar:.2f})" if ar else "")
                             for k, v in report["head_ms"].items()) + "\n")
    return text
