"""ReCAP vs the base MaskGIT sampler on the digits generator (``leapdec.images``).

For each step count in ``--steps`` (8, 16, 32), the base sampler and ReCAP with three schedules
(the default: steps/4 full steps first, then 3 local steps per full step; the paper's: half the
steps full first, then one local per full; a faster one: steps/8 first, then 4 local per
full; and the leanest: steps/16 first, then 3 local per full) sample the same labels with the same seed; the base sampler also runs at
``--base-extra-steps`` (fewer steps) so ReCAP can be compared at matched wall-clock. Quality: class consistency (an sklearn
``MLPClassifier`` trained on the real digits' training split, applied to the 8x8 samples) and a
Fréchet distance on that classifier's hidden features against the held-out real digits. Cost:
model calls, full / local steps, positions evaluated per image, wall-clock.

    python benchmarks/bench_recap.py [--out DIR] [--per-class 20] [--steps 8,16,32] [--threads 1]

``--out DIR`` writes ``recap.md`` (the tables), ``recap.json`` and ``recap.png`` (quality vs time).
Importable: ``run(...)`` returns the rows, ``markdown(rows, info)`` the tables.

``--text``: the text masked diffusion LM instead (``generate(..., method="recap")`` on
``stdlib-mdm``, held-out prompts of ``leapdec.train.corpus.eval_prompts``): for each step count,
plain LLaDA, LLaDA with Fast-dLLM's dual cache and ReCAP with the same three schedules (counted
within each block), one ragged batch; model calls, positions evaluated, wall-clock (the fastest
of ``--repeats`` runs, taken in turns), rows identical to and token agreement with LLaDA at the
same steps and at the most steps, and the answers' NLL under ``stdlib-ar``. Writes ``recap_text.md`` and ``recap_text.json``.

    python benchmarks/bench_recap.py --text [--prompts 16] [--gen-length 128] [--text-steps 128,64,32]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def configs(steps_list, base_extra, recap_options=None):
    """(label, method, steps, options) of every run."""
    runs = []
    for s in sorted(set(steps_list) | set(base_extra)):
        runs.append(("maskgit", "maskgit", s, {}))
    for s in steps_list:
        runs.append(("recap", "recap", s, dict(recap_options or {})))
        runs.append(("recap-paper", "recap", s, {"pre_full": s // 2, "local_steps": 1}))
        runs.append(("recap-fast", "recap", s, {"pre_full": s // 8, "local_steps": 4}))
        runs.append(("recap-lean", "recap", s, {"pre_full": s // 16, "local_steps": 3}))
    return runs


SAMPLERS = {"maskgit": {},        # leapdec's defaults: cosine schedule, temperature 0.7, choice temperature 4.5
            "recap-script": {"schedule": "power", "temperature_start": 1.0, "temperature": 0.7,
                             "choice_temperature": 5.5}}     # ReCAP's MaskGIT script


def run(model="digits-maskgit", per_class=20, steps_list=(8, 16, 32), base_extra=(2, 3, 4, 6, 10, 12),
        seed=0, progress=True, recap_options=None, repeats=1, sampler="maskgit"):
    """Run every configuration (sampling settings ``SAMPLERS[sampler]`` for all); returns ``(rows, info)``."""
    from tqdm.auto import tqdm

    import leapdec.images as images
    from leapdec.images import data
    from leapdec.images.metrics import train_judge

    m = images.load(model) if isinstance(model, (str, Path)) else model
    judge = train_judge()
    labels = torch.arange(per_class * data.NUM_CLASSES) % data.NUM_CLASSES
    train, held = data.split_digits()
    roundtrip = data.pool_8x8(data.decode(data.encode(held.images)))
    info = {"images": int(labels.numel()), "seed": seed, "torch_threads": torch.get_num_threads(),
            "judge": "sklearn MLPClassifier(64), training split, 8x8 / 16",
            "sampler": sampler, "sampler_options": SAMPLERS[sampler],
            "judge_heldout_accuracy": judge.heldout_accuracy,
            "real_heldout_roundtrip_consistency": judge.consistency(roundtrip, held.labels),
            "real_heldout_roundtrip_frechet": judge.frechet(roundtrip),
            "real_train_frechet": judge.frechet(train.images)}
    images.sample(m, labels[:10], method="maskgit", steps=2, seed=seed)      # warm-up
    rows = []
    runs = configs(steps_list, base_extra, recap_options)
    for label, method, steps, opts in tqdm(runs, desc="bench_recap", disable=not progress):
        walls = []
        for _ in range(repeats):
            out = images.sample(m, labels, method=method, steps=steps, seed=seed, **SAMPLERS[sampler], **opts)
            walls.append(out.stats["wall_s"])
        st = out.stats
        rows.append({"sampler": label, "method": method, "steps": steps, "options": opts,
                     "model_calls": st["model_calls"], "full_steps": st["full_steps"],
                     "local_steps": st["local_steps"],
                     "positions_per_image": st["positions_evaluated_per_image"],
                     "wall_s": min(walls), "ms_per_image": 1000 * min(walls) / labels.numel(),
                     "consistency": judge.consistency(out.images_8x8, labels),
                     "frechet": judge.frechet(out.images_8x8),
                     "pre_full": st.get("pre_full"), "local_per_full": st.get("local_steps_per_full")})
    return rows, info


def _base(rows, steps):
    return next(r for r in rows if r["sampler"] == "maskgit" and r["steps"] == steps)


def matched_time(rows, r):
    """The base-sampler row whose wall-clock is closest to ``r``'s, among those not slower."""
    base = [b for b in rows if b["sampler"] == "maskgit"]
    not_slower = [b for b in base if b["wall_s"] <= r["wall_s"] * 1.05]
    pool = not_slower or base
    return min(pool, key=lambda b: abs(b["wall_s"] - r["wall_s"]))


def markdown(rows, info) -> str:
    lines = [f"{info['images']} images ({info['images'] // 10} per class), seed {info['seed']}, sampler settings "
             f"{info.get('sampler', 'maskgit')} {info.get('sampler_options') or '(defaults)'}, "
             f"{info['torch_threads']} torch thread(s). Judge: {info['judge']} (held-out accuracy "
             f"{100 * info['judge_heldout_accuracy']:.1f} %). Real held-out digits through the 16x16 "
             f"tokens and back: consistency {100 * info['real_heldout_roundtrip_consistency']:.1f} %, "
             f"Fréchet {info['real_heldout_roundtrip_frechet']:.2f} (training split: "
             f"{info['real_train_frechet']:.2f}).", "",
             "| sampler | steps | full + local | positions / image | wall s | ms / image | class consistency | Fréchet | speedup vs base, same steps | Δ consistency (pts) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = _base(rows, r["steps"])
        speed = b["wall_s"] / r["wall_s"]
        sched = f"{r['full_steps']} + {r['local_steps']}"
        if r["method"] == "recap":
            sched += f" (pre {r['pre_full']}, {r['local_per_full']} local/full)"
        lines.append(f"| {r['sampler']} | {r['steps']} | {sched} | {r['positions_per_image']:.0f} | "
                     f"{r['wall_s']:.2f} | {r['ms_per_image']:.1f} | {100 * r['consistency']:.1f} % | "
                     f"{r['frechet']:.2f} | {speed:.2f}x | {100 * (r['consistency'] - b['consistency']):+.1f} |")
    lines += ["", "Matched wall-clock: each ReCAP run against the base sampler at the step count whose "
              "time is closest without being slower.", "",
              "| ReCAP run | wall s | consistency | Fréchet | base at matched time | wall s | consistency | Fréchet |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] != "recap":
            continue
        b = matched_time(rows, r)
        lines.append(f"| {r['sampler']} {r['steps']} steps | {r['wall_s']:.2f} | {100 * r['consistency']:.1f} % | "
                     f"{r['frechet']:.2f} | maskgit {b['steps']} steps | {b['wall_s']:.2f} | "
                     f"{100 * b['consistency']:.1f} % | {b['frechet']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"maskgit": ("o-", "MaskGIT (base)"), "recap": ("s-", "ReCAP (pre steps/4, 3 local/full)"),
              "recap-paper": ("^--", "ReCAP, paper schedule (pre steps/2, 1 local/full)"),
              "recap-fast": ("v:", "ReCAP, fewer full steps (pre steps/8, 4 local/full)"),
              "recap-lean": ("D-.", "ReCAP, fewest full steps (pre steps/16, 3 local/full)")}
    for sampler, (style, name) in styles.items():
        rs = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["wall_s"])
        if not rs:
            continue
        xs = [r["ms_per_image"] for r in rs]
        axes[0].plot(xs, [100 * r["consistency"] for r in rs], style, label=name)
        axes[1].plot(xs, [r["frechet"] for r in rs], style, label=name)
        for r in rs:
            axes[0].annotate(str(r["steps"]), (r["ms_per_image"], 100 * r["consistency"]), fontsize=7,
                             xytext=(3, 3), textcoords="offset points")
            axes[1].annotate(str(r["steps"]), (r["ms_per_image"], r["frechet"]), fontsize=7,
                             xytext=(3, 3), textcoords="offset points")
    axes[0].set_ylabel("class consistency (%)")
    axes[1].set_ylabel("Fréchet distance (classifier features, lower is better)")
    for ax in axes:
        ax.set_xlabel("wall-clock per image (ms, CPU)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("digits-maskgit: quality vs time (labels = steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- the text model

def text_configs(steps_list, block_steps):
    """(label, method, steps, options) of every text decode; ``block_steps(steps)`` is the steps
    per block, which ReCAP's schedule counts in."""
    runs = []
    for s in steps_list:
        b = block_steps(s)
        runs += [("llada", "llada", s, {}), ("llada dual cache", "llada", s, {"cache": "dual"}),
                 ("recap", "recap", s, {}),
                 ("recap-paper", "recap", s, {"pre_full": b // 2, "local_steps": 1}),
                 ("recap-fast", "recap", s, {"pre_full": b // 8, "local_steps": 4})]
    return runs


class PositionCounter:
    """Counts the positions (query rows) of every ``forward_paged`` call of ``model`` inside a
    ``with`` block: the cost measure of any method, cache or not."""

    def __init__(self, model):
        self.model, self.positions = model, 0

    def __enter__(self):
        inner = self.model.forward_paged

        def counted(step, cache, *args, **kwargs):
            self.positions += step.positions.numel()
            return inner(step, cache, *args, **kwargs)

        self.model.forward_paged = counted          # an instance attribute shadows the method
        return self

    def __exit__(self, *exc):
        del self.model.forward_paged


def run_text(model="stdlib-mdm", ar_model="stdlib-ar", prompts=16, gen_length=128, block_length=32,
             steps_list=(128, 64, 32), repeats=3, progress=True):
    """Every text decode on ``prompts`` held-out prompts (one ragged batch); returns ``(rows, info)``.
    The decodes of one step count are timed in turns (repeat 1 of each, then repeat 2, ...) so a
    busy machine slows them alike; positions are counted at the model (and checked against
    ReCAP's own count)."""
    from tqdm.auto import tqdm

    import leapdec
    from leapdec.bench.common import Spread
    from leapdec.evaluate import token_agreement
    from leapdec.train import corpus
    from leapdec.train import tokenizer as tokenizers_
    from leapdec.train.rediff import ar_nll

    m = leapdec.load_model(model)
    ar = leapdec.load_model(ar_model)
    tok = tokenizers_.load_tokenizer(m.checkpoint_dir)
    eos = tokenizers_.special_token_ids(tok)["eos"]
    ids = [[eos] + tok.encode(p.prompt, add_special_tokens=False).ids
           for p in corpus.eval_prompts(prompts, seed=0, max_prompt_chars=600)]
    n = len(ids)
    steps_list = sorted(steps_list, reverse=True)
    runs = text_configs(steps_list, lambda s: s * block_length // gen_length)

    def decode(method, steps, opts):
        return leapdec.generate(m, ids, method=method, steps=steps, max_new_tokens=gen_length,
                                block_length=block_length, **opts)

    decode("llada", steps_list[-1], {})                           # warm-up
    outs, walls, counted = {}, {i: [] for i in range(len(runs))}, {}
    bar = tqdm(total=len(runs) * repeats, desc="bench_recap text", disable=not progress)
    for steps in steps_list:
        group = [i for i, r in enumerate(runs) if r[2] == steps]
        for rep in range(repeats):
            for i in group:
                _, method, _, opts = runs[i]
                with PositionCounter(m) as count:
                    t0 = time.perf_counter()
                    out = decode(method, steps, opts)
                    walls[i].append(time.perf_counter() - t0)
                if rep == 0:
                    outs[i], counted[i] = out, count.positions
                bar.update()
    bar.close()
    rows, plain = [], {}
    for i, (label, method, steps, opts) in enumerate(runs):
        out, st, wall = outs[i], outs[i].stats, Spread.of(walls[i])
        if method == "recap" and st["positions_evaluated"] != counted[i]:
            raise AssertionError(f"{label} {steps} steps: stats count {st['positions_evaluated']} positions, "
                                 f"the model ran {counted[i]}")
        if label == "llada":
            plain[steps] = {"tokens": out.tokens, "wall_s": wall.min, "positions": counted[i]}
        base, ref = plain[steps], plain[steps_list[0]]
        rows.append({"decode": label, "method": method, "steps": steps, "options": opts,
                     "model_calls": st["model_calls"],
                     "full_steps": st.get("full_steps", st["model_calls"] if label == "llada" else None),
                     "local_steps": st.get("local_steps", 0 if label == "llada" else None),
                     "positions_per_row": counted[i] / n, "positions_vs_llada": counted[i] / base["positions"],
                     "wall_s": wall.min, "wall_s_spread": wall.as_dict(), "speedup": base["wall_s"] / wall.min,
                     "identical_rows": sum(a == b for a, b in zip(out.tokens, base["tokens"])),
                     "agreement": token_agreement(out.tokens, base["tokens"]),
                     "agreement_most_steps": token_agreement(out.tokens, ref["tokens"]),
                     "mean_length": sum(map(len, out.tokens)) / n,
                     "ar_nll": ar_nll(ar, ids, out.tokens, eos)})
    info = {"model": model, "prompts": n, "prompt_tokens": [min(map(len, ids)), max(map(len, ids))],
            "gen_length": gen_length, "block_length": block_length, "repeats": repeats,
            "most_steps": steps_list[0], "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    return rows, info


def text_markdown(rows, info) -> str:
    lines = [f"{info['model']}, {info['prompts']} held-out prompts ({info['prompt_tokens'][0]}-"
             f"{info['prompt_tokens'][1]} tokens) in one ragged batch, gen_length {info['gen_length']}, "
             f"block {info['block_length']}, greedy, early exit; {info['torch_threads']} torch thread(s), "
             f"torch {info['torch']}, {info['date']}; wall s: the fastest of {info['repeats']} runs taken in turns "
             "with the other decodes of the same steps [median]; positions: query rows the model ran. ReCAP's "
             "schedule counts steps within each block (steps per block = steps x block / gen_length).", "",
             "| decode | steps | full + local | model calls | positions / row | positions vs LLaDA | wall s "
             "| speedup vs LLaDA, same steps | identical rows | token agreement, same steps "
             f"| agreement with LLaDA {info['most_steps']} steps | mean length | NLL under stdlib-ar |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sched = "-" if r["full_steps"] is None else f"{r['full_steps']} + {r['local_steps']}"
        if r["method"] == "recap":
            opts = r["options"]
            sched += (f" (pre {opts['pre_full']}, {opts['local_steps']} local/full)" if opts
                      else " (default: pre steps/block/4, 3 local/full)")
        pos, share = f"{r['positions_per_row']:.0f}", f"{100 * r['positions_vs_llada']:.0f} %"
        lines.append(f"| {r['decode']} | {r['steps']} | {sched} | {r['model_calls']} | {pos} | {share} | "
                     f"{r['wall_s']:.2f} [{r['wall_s_spread']['median']:.2f}] | {r['speedup']:.2f}x | {r['identical_rows']}/{info['prompts']} | "
                     f"{100 * r['agreement']:.1f} % | {100 * r['agreement_most_steps']:.1f} % | "
                     f"{r['mean_length']:.1f} | {r['ar_nll']:.2f} |")
    return "\n".join(lines) + "\n"


def text_main(args) -> int:
    steps = [int(s) for s in args.text_steps.split(",") if s]
    prompts, gen_length = args.prompts, args.gen_length
    if args.quick:
        prompts, gen_length, steps = 2, 64, [64, 32]
    t0 = time.perf_counter()
    rows, info = run_text(args.text_model, args.ar_model, prompts, gen_length, args.block_length, steps,
                          max(1, args.repeats), not args.no_progress)
    info["total_s"] = time.perf_counter() - t0
    table = text_markdown(rows, info)
    print(table)
    if args.out:
        out_dir = Path(args.out)
        (out_dir / "recap_text.md").write_text(table)
        (out_dir / "recap_text.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
        print(f"wrote {out_dir}/recap_text.md, recap_text.json")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digits-maskgit", help="zoo name or checkpoint folder")
    ap.add_argument("--per-class", type=int, default=20, help="images per digit class")
    ap.add_argument("--steps", default="8,16,32")
    ap.add_argument("--sampler", choices=sorted(SAMPLERS), default="maskgit",
                    help="sampling settings of every run: leapdec's defaults (cosine schedule, temperature 0.7) "
                         "or ReCAP's MaskGIT script (power schedule, temperature 1.0 -> 0.7, choice temperature 5.5)")
    ap.add_argument("--base-extra-steps", default="2,3,4,6,10,12",
                    help="extra base-sampler step counts for the matched-time comparison")
    ap.add_argument("--pre-full", type=int, help="ReCAP full steps first (default steps // 4)")
    ap.add_argument("--local-steps", type=int, default=3, help="ReCAP local steps per full step")
    ap.add_argument("--repeats", type=int, default=1, help="time each run this many times (the min is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 images per class, steps 8,16 (--text: 2 prompts, gen_length 64, steps 64,32)")
    ap.add_argument("--out", help="folder for recap.md, recap.json, recap.png")
    ap.add_argument("--no-progress", action="store_true")
    text = ap.add_argument_group("the text model (--text)")
    text.add_argument("--text", action="store_true", help="benchmark method='recap' on the text diffusion LM "
                      "instead of the digits (writes recap_text.md / .json)")
    text.add_argument("--text-model", default="stdlib-mdm")
    text.add_argument("--ar-model", default="stdlib-ar", help="scores the answers (NLL)")
    text.add_argument("--prompts", type=int, default=16, help="held-out prompts")
    text.add_argument("--gen-length", type=int, default=128)
    text.add_argument("--block-length", type=int, default=32)
    text.add_argument("--text-steps", default="128,64,32", help="step counts (each a multiple of the blocks)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    if args.text:
        return text_main(args)
    per_class, steps = args.per_class, [int(s) for s in args.steps.split(",") if s]
    extra = [int(s) for s in args.base_extra_steps.split(",") if s]
    if args.quick:
        per_class, steps, extra = 2, [8, 16], [4]
    recap_options = {"local_steps": args.local_steps}
    if args.pre_full is not None:
        recap_options["pre_full"] = args.pre_full
    t0 = time.perf_counter()
    rows, info = run(args.model, per_class, steps, extra, args.seed, not args.no_progress, recap_options,
                     args.repeats, args.sampler)
    info["total_s"] = time.perf_counter() - t0
    table = markdown(rows, info)
    print(table)
    if out_dir is not None:
        (out_dir / "recap.md").write_text(table)
        (out_dir / "recap.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
        plot(rows, out_dir / "recap.png")
        print(f"wrote {out_dir}/recap.md, recap.json, recap.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
