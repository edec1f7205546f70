"""Recipe ``maskgit``: train the class-conditional MaskGIT image generator of
``leapdec.images`` on scikit-learn's digits (training split only; 16x16, 16 grey levels).

    python -m leapdec.train maskgit --out DIR [--preset tiny] [--seconds N] [--threads 1]

MaskGIT's objective: for each image draw r ~ U(0, 1), mask ``ceil(256 * cos(pi/2 * r))``
random pixel positions (at least one), and minimise the cross-entropy (label smoothing 0.1) of
the masked positions given the class token and the visible pixels. The card records the
held-out masked loss (fixed seeded masks over the held-out split) and, for the default preset,
the class consistency of 16-step samples judged by a classifier trained on the real digits.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from leapdec.images import data
from leapdec.images import model as model_
from leapdec.paths import writable_dir
from leapdec.train import cards
from leapdec.train.budget import Budget, add_budget_arguments, budget_command_args, cosine_lr


@dataclass
class Preset:
    hidden_size: int = 96
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    steps: int = 100_000          # the step budget when neither --steps nor --seconds is given
    eval_every: int = 100
    eval_images: int = 359        # held-out images scored (all of the default split)
    sample_eval: int = 200        # images sampled at the end for class consistency (0 = none)


PRESETS = {
    "default": Preset(),
    "tiny": Preset(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, batch_size=16,
                   warmup=5, steps=20, eval_every=10, eval_images=32, sample_eval=0),
}


def mask_batch(tokens: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskGIT's training corruption of ``tokens [B, 256]``: cosine-distributed mask ratios.
    Returns the corrupted tokens and the bool mask of corrupted positions."""
    B, n = tokens.shape
    r = torch.rand(B, generator=gen)
    k = torch.ceil(n * torch.cos(math.pi / 2 * r)).clamp(1, n).long()
    order = torch.rand(B, n, generator=gen).argsort(1)
    rank = order.argsort(1)
    masked = rank < k[:, None]
    return tokens.masked_fill(masked, data.MASK_ID), masked


def batch_loss(model, tokens, labels, gen, label_smoothing=0.0):
    corrupted, masked = mask_batch(tokens, gen)
    ids = torch.cat([data.class_token(labels)[:, None], corrupted], 1).to(model.device)
    logits = model(ids)[:, 1:]
    m = masked.to(model.device)
    return F.cross_entropy(logits[m].float(), tokens.to(model.device)[m], label_smoothing=label_smoothing)


@torch.no_grad()
def heldout_loss(model, tokens, labels, seed: int = 1234, batch: int = 128) -> float:
    """Masked cross-entropy (no smoothing) of the held-out images under fixed seeded masks."""
    gen = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch):
        t, lab = tokens[i:i + batch], labels[i:i + batch]
        corrupted, masked = mask_batch(t, gen)
        ids = torch.cat([data.class_token(lab)[:, None], corrupted], 1).to(model.device)
        logits = model(ids)[:, 1:]
        m = masked.to(model.device)
        total += F.cross_entropy(logits[m].float(), t.to(model.device)[m], reduction="sum").item()
        count += int(m.sum())
    model.train(was)
    return total / max(count, 1)


def command_line(out_dir, preset, steps, seconds, device, seed, threads) -> str:
    args = ["python", "-m", "leapdec.train", "maskgit", "--out", str(out_dir), "--preset", preset]
    return shlex.join(args + budget_command_args(steps, seconds, device, seed, threads))


def train_maskgit(out_dir, preset: str = "default", steps: int | None = None, seconds: float | None = None,
                  device="cpu", seed: int = 0, threads: int | None = None, progress: bool = True) -> dict:
    """Train, save the checkpoint and its card into ``out_dir``; returns the card."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    wall_start = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
    command = command_line(out_dir, preset, steps, seconds, device, seed, threads)
    p = PRESETS[preset]
    if steps is None and seconds is None:
        steps = p.steps
    out_dir = Path(out_dir)
    writable_dir(out_dir, create=False)   # an unwritable --out fails now, not after training
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train, held = data.split_digits()
    train_tok, held_tok = data.encode(train.images), data.encode(held.images)
    held_tok, held_lab = held_tok[:p.eval_images], held.labels[:p.eval_images]
    config = model_.image_config(p.hidden_size, p.num_layers, p.num_heads, p.intermediate_size)
    model = model_.MaskGIT(config, device=device)
    n_params = sum(x.numel() for x in model.parameters())
    decay = [x for n, x in model.named_parameters() if x.dim() >= 2 and "pos_embed" not in n]
    no_decay = [x for n, x in model.named_parameters() if not (x.dim() >= 2 and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=p.lr, betas=(0.9, 0.95))
    start_loss = heldout_loss(model, held_tok, held_lab)
    history = []
    budget = Budget(steps, seconds, f"maskgit/{preset}", progress)
    step, images_seen, ema = 0, 0, None
    n_train = len(train_tok)
    perm, cursor = torch.randperm(n_train, generator=gen), 0
    model.train()
    while True:
        frac = budget.progress(step)
        if frac is None:
            break
        for g in opt.param_groups:
            g["lr"] = cosine_lr(p.lr, p.warmup, p.min_lr_ratio, step, frac)
        if cursor + p.batch_size > n_train:
            perm, cursor = torch.randperm(n_train, generator=gen), 0
        idx = perm[cursor:cursor + p.batch_size]
        cursor += p.batch_size
        loss = batch_loss(model, train_tok[idx], train.labels[idx], gen, p.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        images_seen += len(idx)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        budget.tick()
        if step % p.eval_every == 0:
            history.append({"step": step, "tokens": images_seen * data.NUM_PIXELS,
                            "seconds": round(budget.seconds, 1), "train_loss": round(ema, 4),
                            "heldout_loss": round(heldout_loss(model, held_tok, held_lab), 4)})
            budget.bar.set_postfix(loss=f"{ema:.3f}", heldout=f"{history[-1]['heldout_loss']:.3f}")
    train_s = budget.close()
    model.eval()
    model_.save(model.to("cpu"), out_dir)
    saved = model_.load(out_dir)
    final = heldout_loss(saved, held_tok, held_lab)
    if not history or history[-1]["step"] != step:
        history.append({"step": step, "tokens": images_seen * data.NUM_PIXELS, "seconds": round(train_s, 1),
                        "train_loss": round(ema, 4) if ema is not None else None,
                        "heldout_loss": round(final, 4)})
    ev = {"heldout_loss": round(final, 4), "init_heldout_loss": round(start_loss, 4),
          "heldout_images": len(held_tok),
          "loss_kind": "nats per masked pixel on the held-out split, MaskGIT cosine masks seeded (1234)"}
    if p.sample_eval:
        from leapdec.images.metrics import train_judge
        from leapdec.images.sampling import sample

        judge = train_judge()
        labels = torch.arange(p.sample_eval) % data.NUM_CLASSES
        out = sample(saved, labels, method="maskgit", steps=16, seed=seed, temperature=1.0)
        ev.update(sample_method="maskgit", sample_steps=16, sample_images=p.sample_eval,
                  sample_temperature=1.0,
                  class_consistency=round(judge.consistency(out.images_8x8, labels), 4),
                  frechet_distance=round(judge.frechet(out.images_8x8), 3),
                  judge="sklearn MLPClassifier(64) on the training split, 8x8 scaled to 0..1",
                  judge_heldout_accuracy=round(judge.heldout_accuracy, 4))
    tok = model_.vocabulary_tokenizer()
    from leapdec.train.tokenizer import tokenizer_hash

    card = {
        "name": out_dir.name,
        "card_version": cards.CARD_VERSION,
        "summary": ("Class-conditional MaskGIT on scikit-learn's digits (16x16, 16 grey levels, class "
                    f"prefix token) trained by leapdec.train.maskgit (preset {preset!r}); sample with "
                    "leapdec.images.sample(model, labels, method='maskgit' | 'recap')."),
        "objective": "maskgit",
        "command": command,
        "date": cards.now_iso(),
        "machine": cards.machine_info(device),
        "recipe": {**dataclasses.asdict(p), "preset": preset, "seed": seed, "steps_budget": steps,
                   "seconds_budget": seconds, "optimizer": "AdamW(betas=(0.9, 0.95)), grad clip 1.0",
                   "schedule": "linear warmup, cosine to min_lr_ratio over the step/time budget",
                   "loss": "CE (label smoothing) of masked pixels; mask count ceil(256 cos(pi/2 r)), r ~ U(0,1)"},
        "corpus": {"dataset": "sklearn.datasets.load_digits", "images": len(train) + len(held),
                   "train_images": len(train), "heldout_images": len(held),
                   "heldout_fraction": data.HELDOUT_FRACTION, "split_seed": data.SPLIT_SEED,
                   "split": "stratified by class", "preprocessing": "8x8 -> 16x16 bilinear, 16 levels"},
        "model": {"architecture": config.architecture, "kind": model_.KIND, "parameters": n_params,
                  "causal": False, "mask_token_id": config.mask_token_id, "vocab_size": config.vocab_size,
                  "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
                  "num_attention_heads": config.num_attention_heads,
                  "intermediate_size": config.intermediate_size, "seq_len": model_.SEQ_LEN,
                  "positions": "learned absolute embedding + 1D RoPE",
                  "storage_dtype": "float32", "tokenizer_sha256": tokenizer_hash(tok)},
        "training": {"steps": step, "tokens_seen": images_seen * data.NUM_PIXELS, "images_seen": images_seen,
                     "epochs": round(images_seen / n_train, 2), "train_s": round(train_s, 1), "wall_s": 0.0,
                     "final_train_loss": round(ema, 4) if ema is not None else None, "history": history},
        "eval": ev,
    }
    card["files"] = cards.file_entries(out_dir, ["config.json", "model.safetensors", "tokenizer.json"])
    card["training"]["wall_s"] = round(time.perf_counter() - wall_start, 1)
    cards.write_card(out_dir, card)
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leapdec.train maskgit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    add_budget_arguments(parser)
    args = parser.parse_args(argv)
    card = train_maskgit(args.out, args.preset, steps=args.steps, seconds=args.seconds, device=args.device,
                         seed=args.seed, threads=args.threads, progress=not args.no_progress)
    ev = card["eval"]
    extra = (f", class consistency {ev['class_consistency']:.3f} (16 steps)" if "class_consistency" in ev else "")
    print(f"{args.out}: {card['training']['steps']} steps, held-out masked loss {ev['heldout_loss']:.4f}{extra}, "
          f"{card['training']['wall_s']:.0f} s")
    return 0
