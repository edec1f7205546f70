"""ReCAP vs the base MaskGIT sampler on the digits generator (``leapdec.images``).

For each step count in ``--steps`` (8, 16, 32), the base sampler and ReCAP with three schedules
(the default: steps/4 full steps first, then 3 local steps per full step; the paper's: half the
steps full first, then one local per full; and a faster one: steps/8 first, then 4 local per
full) sample the same labels with the same seed; the base sampler also runs at
``--base-extra-steps`` (fewer steps) so ReCAP can be compared at matched wall-clock. Quality: class consistency (an sklearn
``MLPClassifier`` trained on the real digits' training split, applied to the 8x8 samples) and a
Fréchet distance on that classifier's hidden features against the held-out real digits. Cost:
model calls, full / local steps, positions evaluated per image, wall-clock.

    python benchmarks/bench_recap.py [--out DIR] [--per-class 20] [--steps 8,16,32] [--threads 1]

``--out DIR`` writes ``recap.md`` (the tables), ``recap.json`` and ``recap.png`` (quality vs time).
Importable: ``run(...)`` returns the rows, ``markdown(rows, info)`` the tables.
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
    return runs


def run(model="digits-maskgit", per_class=20, steps_list=(8, 16, 32), base_extra=(4, 6, 10, 12),
        seed=0, progress=True, recap_options=None, repeats=1):
    """Run every configuration; returns ``(rows, info)``."""
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
            out = images.sample(m, labels, method=method, steps=steps, seed=seed, **opts)
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
    lines = [f"{info['images']} images ({info['images'] // 10} per class), seed {info['seed']}, "
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
              "recap-fast": ("v:", "ReCAP, fewer full steps (pre steps/8, 4 local/full)")}
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digits-maskgit", help="zoo name or checkpoint folder")
    ap.add_argument("--per-class", type=int, default=20, help="images per digit class")
    ap.add_argument("--steps", default="8,16,32")
    ap.add_argument("--base-extra-steps", default="4,6,10,12",
                    help="extra base-sampler step counts for the matched-time comparison")
    ap.add_argument("--pre-full", type=int, help="ReCAP full steps first (default steps // 4)")
    ap.add_argument("--local-steps", type=int, default=3, help="ReCAP local steps per full step")
    ap.add_argument("--repeats", type=int, default=1, help="time each run this many times (min)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 images per class, steps 8,16")
    ap.add_argument("--out", help="folder for recap.md, recap.json, recap.png")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    per_class, steps = args.per_class, [int(s) for s in args.steps.split(",") if s]
    extra = [int(s) for s in args.base_extra_steps.split(",") if s]
    if args.quick:
        per_class, steps, extra = 2, [8, 16], [4]
    recap_options = {"local_steps": args.local_steps}
    if args.pre_full is not None:
        recap_options["pre_full"] = args.pre_full
    t0 = time.perf_counter()
    rows, info = run(args.model, per_class, steps, extra, args.seed, not args.no_progress, recap_options,
                     args.repeats)
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
