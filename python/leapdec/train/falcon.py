"""Falcon's semi-autoregressive drafter on a frozen backbone, trained with Coupled Sequential
Glancing Distillation (CSGD; Bestpay-inc/Falcon, ``train/glance.py``).

Data: windows ``w_0 .. w_T`` of token sequences: random windows of the corpus's train split,
mixed (``distill_share`` of each batch) with the base's own greedy continuations of corpus
prompts, generated once at the start (the text greedy decoding will verify). The frozen base
gives the final-norm features ``f_j`` of ``w_0 .. w_{T-1}``; the drafter reads ``(f_j, w_{j+1})`` and at
position j regresses ``f_{j+k}`` (smooth L1) and predicts the **base's greedy token** after
position j + k, ``argmax lm_head(f_{j+k})`` (cross-entropy): the token greedy verification
accepts. Input tokens are the corpus tokens. The loss mask drops the last k positions (no
target inside the window).

CSGD, per window: (1) a no-grad pass predicts every block (block-causal mask, blocks at a
random offset, the alignment being arbitrary at decoding time); (2) glancing: with
``num_mask`` valid positions of which ``num_same`` the drafter already predicts right,
``int((num_mask - num_same) * lambda)`` blocks (k = 2; ``/ (k - 1)`` in general) get the first
1 .. k-1 of their positions replaced by their ground truth, ``(f_{j+k}, w_{j+k+1})``, so the
block's later positions see the true earlier tokens of the block they are predicting (more
glancing where the drafter is more wrong; lambda decays linearly over training); (3) the
second pass is trained on the glanced inputs, with the loss on the positions not glanced
(GLAT's rule; Falcon's code scores every position). Loss = ``feature_weight * smoothL1 +
token_weight * CE`` (Falcon's v_w = 1, p_w = 0.1; the default preset weighs the tokens 0.5,
which learns faster in a few hundred steps).

Writes ``model.safetensors`` + ``config.json`` (layers, block size, base hash, held-out metrics)
and a card into ``<base>/falcon`` (or ``--out``), where ``generate(method="falcon")`` finds it.

    python -m leapdec.train falcon --base stdlib-ar --preset default

A GGUF zoo model (``smollm2-135m-instruct``) gets the ``smollm2`` preset by default: windows of
the shared self-distillation set (``leapdec.train.distill``: the model's greedy answers to chat
requests built from corpus functions, its features computed once), a frequency-ranked draft
vocabulary (FR-Spec: the drafter's tokens come from the LM head rows of ``draft_vocab`` ids) and
bfloat16 storage (two SmolLM2-sized layers hold 7.7M parameters: 15.5 MB in bfloat16, within the
zoo's 16 MB per file):

    python -m leapdec.train falcon --base smollm2-135m-instruct --seconds 1200 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import shlex
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from leapdec import zoo
from leapdec.decoding import generate
from leapdec.decoding.falcon import DEFAULT_TREE
from leapdec.models.drafter import CONFIG_FILE, WEIGHTS_FILE, FalconDrafter
from leapdec.paths import writable_dir
from leapdec.train import cards, corpus, distill
from leapdec.train.budget import Budget, add_budget_arguments, budget_command_args, check_budget, cosine_lr
from leapdec.train import tokenizer as tokenizers_

IGNORE = -100


@dataclasses.dataclass(frozen=True)
class Preset:
    num_layers: int
    block_size: int
    seq_len: int
    batch_size: int
    lr: float
    steps: int
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    feature_weight: float = 1.0          # smooth-L1 feature regression (Falcon's v_w)
    token_weight: float = 0.1            # cross-entropy on the base's greedy tokens (p_w)
    lambda_start: float = 0.5            # glancing ratio at step 0 ...
    lambda_end: float = 0.1              # ... decaying linearly to this at the end of the budget
    corpus_max_bytes: int | None = None
    heldout_windows: int = 16
    eval_every: int = 50
    eval_prompts: int = 8                # held-out function prompts for the decoding evaluation
    eval_new_tokens: int = 64
    distill_prompts: int = 0             # corpus prompts continued greedily by the base ...
    prompt_len: int = 32                 # ... of this many tokens ...
    gen_len: int = 97                    # ... plus this many generated (>= seq_len + 1 in all)
    distill_share: float = 0.0           # share of each batch drawn from those sequences
    data: str = "corpus"                 # "distill": windows of leapdec.train.distill's chat set only
    num_prompts: int = 0                 # ... train pairs of that set
    heldout_prompts: int = 0             # ... held-out pairs (held-out windows come from them)
    draft_vocab: int | None = None       # frequency-ranked draft vocabulary size (FR-Spec), None: all
    save_dtype: str = "float32"          # storage dtype of the drafter's file


PRESETS = {
    # seconds on a CPU: used by the tests
    "tiny": Preset(num_layers=1, block_size=2, seq_len=48, batch_size=8, lr=3e-3, steps=40, warmup=5,
                   corpus_max_bytes=300_000, heldout_windows=4, eval_every=10, eval_prompts=2,
                   eval_new_tokens=12, distill_prompts=8, prompt_len=16, gen_len=33, distill_share=0.5),
    # minutes on a shared 2-core CPU for the zoo's stdlib-ar
    "default": Preset(num_layers=2, block_size=2, seq_len=128, batch_size=8, lr=3e-3, steps=3000,
                      warmup=30, token_weight=0.5, heldout_windows=32, eval_every=25, distill_prompts=96,
                      prompt_len=32, gen_len=97, distill_share=0.5),
    # SmolLM2-135M-Instruct: its own chat answers, an 8k-token draft vocabulary, bfloat16 file
    "smollm2": Preset(num_layers=2, block_size=2, seq_len=96, batch_size=8, lr=2e-3, steps=3000,
                      warmup=30, token_weight=0.5, heldout_windows=24, eval_every=50, eval_prompts=4,
                      eval_new_tokens=64, gen_len=128, data="distill", num_prompts=1600,
                      heldout_prompts=48, draft_vocab=8192, save_dtype="bfloat16"),
}


def default_preset(base) -> str:
    """``smollm2`` for a GGUF zoo model (a pretrained chat model), else ``default``."""
    return "smollm2" if isinstance(base, str) and base in zoo.GGUF_MODELS else "default"


# ----------------------------------------------------------------------------- targets

@torch.no_grad()
def make_targets(base, windows: torch.Tensor, block_size: int) -> dict:
    """Drafter inputs and targets of corpus ``windows [B, T+1]`` (see the module docstring):
    ``features [B, T, h]`` (``f_j``), ``input_ids`` (``w_{j+1}``), ``target_features``
    (``f_{j+k}``), ``labels`` (the base's greedy token after ``j + k``, -100 where invalid),
    ``glance_ids`` (``w_{j+k+1}``) and ``loss_mask`` (``j < T - k``)."""
    k = block_size
    b, t = windows.shape[0], windows.shape[1] - 1
    if t <= k:
        raise ValueError(f"windows: {t} positions is too short for block_size {k}")
    feats = base.hidden(windows[:, :t]).float()
    target = torch.zeros_like(feats)
    target[:, :t - k] = feats[:, k:]
    greedy = base.lm_head(feats[:, k:].to(base.dtype)).argmax(-1)
    labels = torch.full((b, t), IGNORE, dtype=torch.long, device=feats.device)
    labels[:, :t - k] = greedy
    glance_ids = torch.zeros(b, t, dtype=torch.long, device=feats.device)
    glance_ids[:, :t - k] = windows[:, k + 1:]
    mask = torch.zeros(b, t, dtype=torch.bool, device=feats.device)
    mask[:, :t - k] = True
    return {"features": feats, "input_ids": windows[:, 1:], "target_features": target,
            "labels": labels, "glance_ids": glance_ids, "loss_mask": mask}


def stream_targets(data: dict, starts: torch.Tensor, seq_len: int, block_size: int, device) -> dict:
    """:func:`make_targets`' dict from precomputed features (``distill.hidden_states``: the
    sequences concatenated) for the windows starting at ``starts``: no backbone call. Labels are
    the base's greedy token after ``j + k`` (``greedy[s + j + k]``)."""
    k, t = block_size, seq_len
    if t <= k:
        raise ValueError(f"seq_len: {t} positions is too short for block_size {k}")
    pos = starts[:, None] + torch.arange(t)                                       # [B, T]
    feats = data["hidden"][pos].float()
    b = starts.numel()
    target = torch.zeros_like(feats)
    target[:, :t - k] = feats[:, k:]
    labels = torch.full((b, t), IGNORE, dtype=torch.long)
    labels[:, :t - k] = data["greedy"][pos[:, k:]]
    glance_ids = torch.zeros(b, t, dtype=torch.long)
    glance_ids[:, :t - k] = data["tokens"][pos[:, k:] + 1]
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[:, :t - k] = True
    out = {"features": feats, "input_ids": data["tokens"][pos + 1], "target_features": target,
           "labels": labels, "glance_ids": glance_ids, "loss_mask": mask}
    return {name: v.to(device) for name, v in out.items()}


def _draft_labels(drafter, labels: torch.Tensor) -> torch.Tensor:
    """Labels as positions of the drafter's logits (``-100`` outside a reduced draft vocabulary)."""
    if drafter.vocab_ids is None:
        return labels
    mapped = drafter.draft_index(labels)
    return torch.where(mapped >= 0, mapped, torch.full_like(mapped, IGNORE))


@torch.no_grad()
def distill_sequences(model, stream: torch.Tensor, n: int, prompt_len: int, gen_len: int,
                      seed: int) -> torch.Tensor:
    """``[n, prompt_len + gen_len]``: ``n`` random ``prompt_len``-token windows of ``stream``
    (seeded) followed by the model's greedy continuation (stop tokens ignored)."""
    if stream.numel() <= prompt_len:
        raise ValueError(f"stream: {stream.numel()} tokens is too short for prompts of {prompt_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - prompt_len, (n,), generator=g)
    prompts = stream[starts[:, None] + torch.arange(prompt_len)].tolist()
    out = generate(model, prompts, method="ar", max_new_tokens=gen_len, stop_tokens=[])
    return torch.tensor([p + c for p, c in zip(prompts, out.tokens)], dtype=torch.long)


def mixed_batch(windows, distilled: torch.Tensor | None, n_distill: int, seq_len: int,
                generator: torch.Generator) -> torch.Tensor:
    """One ``[B, seq_len + 1]`` batch: ``n_distill`` random windows of the distilled sequences,
    then a batch of the corpus window iterator ``windows`` (None: distilled rows only)."""
    parts = []
    if n_distill:
        rows = torch.randint(0, distilled.shape[0], (n_distill,), generator=generator)
        starts = torch.randint(0, distilled.shape[1] - seq_len, (n_distill,), generator=generator)
        parts.append(distilled[rows[:, None], starts[:, None] + torch.arange(seq_len + 1)])
    if windows is not None:
        parts.append(next(windows))
    return torch.cat(parts)


def glance(features: torch.Tensor, input_ids: torch.Tensor, target_features: torch.Tensor,
           glance_ids: torch.Tensor, pred_tokens: torch.Tensor, labels: torch.Tensor,
           loss_mask: torch.Tensor, block_size: int, block_offset: int, lam: float,
           generator: torch.Generator | None = None):
    """CSGD glancing. Per row: ``n = int((num_mask - num_same) * lam)`` where ``num_mask`` counts
    the valid positions and ``num_same`` those whose ``pred_tokens`` already equal ``labels``;
    ``n // (k - 1)`` random blocks (those starting where ``(j + block_offset) % k == 0``) get
    their first ``1 .. k-1`` positions replaced by the ground truth (``target_features``,
    ``glance_ids``), feature and token together. Returns the new features, ids and the
    ``[B, T]`` bool mask of replaced positions (no glancing when k = 1)."""
    if not 0 <= lam <= 1:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    k = block_size
    glanced = torch.zeros_like(loss_mask)
    if k > 1:
        num_mask = loss_mask.sum(1)
        num_same = ((pred_tokens == labels) & loss_mask).sum(1)
        budget = ((num_mask - num_same).double() * lam).long().tolist()
        t = loss_mask.shape[1]
        starts = torch.arange(t, device=loss_mask.device)
        for r, n in enumerate(budget):
            blocks = n // (k - 1)
            if blocks <= 0:
                continue
            cand = starts[((starts + block_offset) % k == 0) & loss_mask[r]]
            pick = cand[torch.randperm(cand.numel(), generator=generator)[:blocks].to(cand.device)]
            lengths = 1 + torch.randint(0, k - 1, (pick.numel(),), generator=generator).to(cand.device)
            for s, length in zip(pick.tolist(), lengths.tolist()):
                glanced[r, s:s + length] = True
        glanced &= loss_mask
    features = torch.where(glanced[..., None], target_features, features)
    input_ids = torch.where(glanced, glance_ids, input_ids)
    return features, input_ids, glanced


def drafter_losses(drafter, base, features, input_ids, target_features, labels, mask, block_offset: int):
    """(feature smooth-L1, token CE, top-1 accuracy) of a drafter pass over ``mask``ed positions."""
    pred = drafter(features, input_ids, base.embed_tokens, block_offset)
    sel = mask.nonzero(as_tuple=True)
    feat = F.smooth_l1_loss(pred[sel], target_features[sel])
    logits = drafter.draft_logits(pred[sel].to(base.dtype), base.lm_head).float()
    lab = _draft_labels(drafter, labels[sel])
    ce = F.cross_entropy(logits, lab, ignore_index=IGNORE)
    acc = (logits.argmax(-1) == lab).float().mean()
    return feat, ce, acc


@torch.no_grad()
def heldout_metrics(drafter, base, targets: dict, p: Preset) -> dict:
    """Teacher-forced held-out losses and top-1 accuracy of the drafter, blocks at offset 0,
    with the accuracy of each position inside a block (``block_accuracy``)."""
    was = drafter.training
    drafter.eval()
    k = p.block_size
    pred = drafter(targets["features"], targets["input_ids"], base.embed_tokens, 0)
    mask = targets["loss_mask"]
    sel = mask.nonzero(as_tuple=True)
    feat = F.smooth_l1_loss(pred[sel], targets["target_features"][sel]).item()
    logits = drafter.draft_logits(pred.to(base.dtype), base.lm_head).float()
    labels = _draft_labels(drafter, targets["labels"])
    ce = F.cross_entropy(logits[sel], labels[sel], ignore_index=IGNORE).item()
    hit = (logits.argmax(-1) == labels) & mask           # a label outside the draft vocabulary: a miss
    pos = torch.arange(mask.shape[1], device=mask.device) % k
    block_acc = [round((hit[:, pos == i].sum() / mask[:, pos == i].sum()).item(), 4) for i in range(k)]
    drafter.train(was)
    return {"feature_loss": round(feat, 5), "token_ce": round(ce, 4),
            "loss": round(p.feature_weight * feat + p.token_weight * ce, 5),
            "top1_accuracy": round((hit.sum() / mask.sum()).item(), 4), "block_accuracy": block_acc}


def decode_eval(model, drafter, prompts: list[list[int]], max_new_tokens: int, tree: dict | None = None) -> dict:
    """Greedy Falcon vs greedy AR on ``prompts`` (one batch): tokens per base call, accepted
    length, tokens/s of both and whether the outputs are identical."""
    tree = tree or {}
    generate(model, prompts[:1], method="ar", max_new_tokens=4)                    # warm-up
    generate(model, prompts[:1], method="falcon", drafter=drafter, max_new_tokens=4, **tree)
    ar = generate(model, prompts, method="ar", max_new_tokens=max_new_tokens)
    fa = generate(model, prompts, method="falcon", drafter=drafter, max_new_tokens=max_new_tokens, **tree)
    return {
        "prompts": len(prompts), "max_new_tokens": max_new_tokens,
        "tree": {name: fa.stats[name] for name in DEFAULT_TREE},
        "new_tokens": fa.stats["new_tokens"],
        "model_calls": fa.stats["model_calls"], "drafter_calls": fa.stats["drafter_calls"],
        "ar_model_calls": ar.stats["model_calls"],
        "tokens_per_call": round(fa.stats["tokens_per_call"], 4),
        "mean_accepted_length": round(fa.stats["mean_accepted_length"], 4),
        "accept_length_histogram": fa.stats["accept_length_histogram"],
        "falcon_tokens_per_s": round(fa.stats["tokens_per_s"], 1),
        "ar_tokens_per_s": round(ar.stats["tokens_per_s"], 1),
        "speedup_vs_ar": round(fa.stats["tokens_per_s"] / ar.stats["tokens_per_s"], 3)
        if ar.stats["tokens_per_s"] else None,
        "identical_to_ar": fa.tokens == ar.tokens,
    }


# ----------------------------------------------------------------------------- recipe


def command_line(base, preset, out_dir, steps, seconds, device, seed, threads) -> str:
    """The ``python -m leapdec.train falcon ...`` command that reproduces a call."""
    args = ["python", "-m", "leapdec.train", "falcon", "--base", str(base), "--preset", preset]
    if out_dir is not None:
        args += ["--out", str(out_dir)]
    return shlex.join(args + budget_command_args(steps, seconds, device, seed, threads))


def train_falcon(base="stdlib-ar", preset: str | None = None, out_dir=None, steps: int | None = None,
                 seconds: float | None = None, device="cpu", seed: int = 0,
                 threads: int | None = None, progress: bool = True) -> dict:
    """Train a Falcon drafter for the checkpoint ``base`` (zoo name or folder) with CSGD and
    write it with a card into ``out_dir`` (default ``<base>/falcon``); returns the card.

    Stops after ``steps`` optimizer steps or ``seconds`` of training, whichever comes first
    (the preset's steps when neither is given); the schedules follow that budget.
    ``preset`` None: :func:`default_preset`.
    """
    wall_start = time.perf_counter()
    if preset is None:
        preset = default_preset(base)
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    check_budget(steps, seconds, threads)
    device = torch.device(device)
    p = PRESETS[preset]
    model, tok, base_dir, base_sha = distill.load_base(base, device)
    command = command_line(base, preset, out_dir, steps, seconds, device, seed, threads)
    out_dir = Path(out_dir) if out_dir is not None else base_dir / "falcon"
    writable_dir(out_dir, create=False)   # an unwritable --out fails now, not after training
    if steps is None and seconds is None:
        steps = p.steps
    k = p.block_size
    torch.manual_seed(seed)
    # --- frozen base, data
    span = p.seq_len + 1
    n_distill, distilled, distill_s, vocab_ids, data_info = 0, None, 0.0, None, {}
    if p.data == "distill":
        start = time.perf_counter()
        train_pairs = distill.answers(str(base), p.num_prompts, "train", p.gen_len, seed, model=model,
                                      tokenizer=tok, progress=progress)
        held_pairs = distill.answers(str(base), p.heldout_prompts, "heldout", p.gen_len, seed, model=model,
                                     tokenizer=tok, progress=progress)
        train_data = distill.hidden_states(str(base), train_pairs, model, progress=progress)
        held_data = distill.hidden_states(str(base), held_pairs, model, progress=progress)
        distill_s = time.perf_counter() - start
        n_starts = train_data["tokens"].numel() - span
        n_held = min(p.heldout_windows, (held_data["tokens"].numel() - 1) // span)
        if n_starts <= 0 or n_held <= 0:
            raise ValueError(f"preset: the distilled sequences are shorter than one window of {span} tokens")
        held_targets = stream_targets(held_data, torch.arange(n_held) * span, p.seq_len, k, device)
        if p.draft_vocab:
            vocab_ids = distill.frequent_tokens(str(base), p.draft_vocab, train_pairs, tok,
                                                always=model.config.stop_token_ids)
            data_info["draft_vocab_coverage_heldout_answers"] = round(distill.coverage(vocab_ids, held_pairs), 4)
        eval_prompt_ids = [q for q, _ in held_pairs[:p.eval_prompts]]
        data_info.update(train_pairs=len(train_pairs), heldout_pairs=len(held_pairs),
                         train_tokens=int(train_data["tokens"].numel()))
        train_stream = None
    else:
        train_stream = corpus.encode_corpus(tok, "train", max_bytes=p.corpus_max_bytes)
        heldout_stream = corpus.encode_corpus(tok, "heldout")
        n_held = min(p.heldout_windows, (heldout_stream.numel() - 1) // span)
        if n_held <= 0:
            raise ValueError(f"preset: the held-out stream ({heldout_stream.numel()} tokens) is shorter than one window")
        held = torch.stack([heldout_stream[i * span:(i + 1) * span] for i in range(n_held)]).to(device)
        held_targets = make_targets(model, held, k)
        n_distill = round(p.distill_share * p.batch_size) if p.distill_prompts else 0
        ids_ = tokenizers_.special_token_ids(tok)
        eval_prompt_ids = [[ids_["eos"]] + tok.encode(e.prompt, add_special_tokens=False).ids
                           for e in corpus.eval_prompts(p.eval_prompts, seed=0)]
    if n_distill:
        if p.prompt_len + p.gen_len < p.seq_len + 1:
            raise ValueError(f"preset: prompt_len + gen_len must cover a window of seq_len + 1 = {p.seq_len + 1}")
        start = time.perf_counter()
        distilled = distill_sequences(model, train_stream, p.distill_prompts, p.prompt_len, p.gen_len, seed)
        distill_s = time.perf_counter() - start

    # --- drafter
    drafter = FalconDrafter.for_base(model, num_layers=p.num_layers, block_size=k, dtype=torch.float32,
                                     vocab_ids=vocab_ids).train()
    params = list(drafter.parameters())
    decay = [x for x in params if x.dim() >= 2]
    no_decay = [x for x in params if x.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=p.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    windows = (corpus.batches(train_stream, p.batch_size - n_distill, p.seq_len, seed=seed)
               if n_distill < p.batch_size and train_stream is not None else None)
    history, ema, step, tokens_seen, glanced_total = [], None, 0, 0, 0

    def record(ev, seconds_now):
        history.append({"step": step, "tokens": tokens_seen, "seconds": round(seconds_now, 1),
                        "train_loss": round(ema, 4) if ema is not None else None,
                        "heldout_loss": ev["loss"], "heldout_top1_accuracy": ev["top1_accuracy"],
                        "heldout_block_accuracy": ev["block_accuracy"]})

    record(heldout_metrics(drafter, model, held_targets, p), 0.0)
    budget = Budget(steps, seconds, f"falcon/{preset}", progress)
    while (frac := budget.progress(step)) is not None:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(p.lr, p.warmup, p.min_lr_ratio, step, frac)
        lam = p.lambda_start + (p.lambda_end - p.lambda_start) * min(frac, 1.0)
        if train_stream is None:                                # precomputed features: no backbone call
            t = stream_targets(train_data, torch.randint(0, n_starts, (p.batch_size,), generator=gen),
                               p.seq_len, k, device)
        else:
            t = make_targets(model, mixed_batch(windows, distilled, n_distill, p.seq_len, gen).to(device), k)
        offset = int(torch.randint(0, k, (1,), generator=gen))
        with torch.no_grad():                                   # CSGD pass 1: predict every block
            pred = drafter(t["features"], t["input_ids"], model.embed_tokens, offset)
            pred_tokens = drafter.token_ids(drafter.draft_logits(pred, model.lm_head).argmax(-1))
        feats, ids, glanced = glance(t["features"], t["input_ids"], t["target_features"], t["glance_ids"],
                                     pred_tokens, t["labels"], t["loss_mask"], k, offset, lam, gen)
        mask = t["loss_mask"] & ~glanced                        # pass 2 on the glanced inputs
        feat, ce, _ = drafter_losses(drafter, model, feats, ids, t["target_features"], t["labels"], mask, offset)
        loss = p.feature_weight * feat + p.token_weight * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        tokens_seen += int(t["loss_mask"].sum())
        glanced_total += int(glanced.sum())
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged at step {step} (loss {value})")
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        budget.tick()
        budget.bar.set_postfix(loss=f"{ema:.3f}", lam=f"{lam:.2f}")
        if step % p.eval_every == 0:
            record(heldout_metrics(drafter, model, held_targets, p), budget.seconds)
    train_s = budget.close()
    final = heldout_metrics(drafter, model, held_targets, p)
    if history[-1]["step"] != step:
        record(final, train_s)

    # --- save, then evaluate decoding with what was saved
    drafter.meta = {
        "base_model": base_dir.name,
        "base_model_sha256": base_sha,
        "heldout": final,
    }
    save_dtype = getattr(torch, p.save_dtype)
    stored = drafter.eval() if save_dtype == torch.float32 else copy.deepcopy(drafter).eval().to(save_dtype)
    stored.save(out_dir)
    saved = FalconDrafter.load(out_dir, device=device, dtype=torch.float32)
    decoding = decode_eval(model, saved, eval_prompt_ids, p.eval_new_tokens)

    n_params = sum(x.numel() for x in drafter.parameters())
    card = {
        "name": f"{base_dir.name}/{out_dir.name}" if out_dir.parent == base_dir else out_dir.name,
        "card_version": cards.CARD_VERSION,
        "summary": (f"Falcon semi-autoregressive drafter ({p.num_layers} decoder layers, k = {k} tokens "
                    f"per forward) for {base_dir.name}, trained with Coupled Sequential Glancing "
                    f"Distillation on the frozen backbone (leapdec.train.falcon, preset {preset!r})."),
        "command": command,
        "date": cards.now_iso(),
        "machine": cards.machine_info(device),
        "recipe": {**dataclasses.asdict(p), "preset": preset, "seed": seed,
                   "steps_budget": steps, "seconds_budget": seconds,
                   "optimizer": "AdamW(betas=(0.9, 0.95))",
                   "schedule": "linear warmup, cosine to min_lr_ratio over the step/time budget; "
                               "glancing lambda linear from lambda_start to lambda_end",
                   "loss": "feature_weight * smoothL1(f_{j+k}) + token_weight * CE(base greedy token), "
                           "on valid positions not glanced",
                   "init": "normal(0, 0.02); fc passes the feature half through (identity added)"},
        "corpus": {"base_model": str(base_dir),
                   "inputs": ("random windows of the base's greedy answers to chat requests built from corpus "
                              "functions (leapdec.train.distill), prompts included, features precomputed"
                              if p.data == "distill" else
                              f"random windows of the corpus train split; {n_distill} of every {p.batch_size} "
                              f"rows are windows of the base's greedy continuations of "
                              f"{p.distill_prompts} train-split prompts"),
                   "distilled_tokens": int(distilled.numel()) if distilled is not None else 0,
                   "targets": "frozen base features f_{j+k}; tokens = the base's greedy predictions",
                   "seq_len": p.seq_len,
                   "train_stream_tokens": int(train_stream.numel()) if train_stream is not None else None,
                   **data_info,
                   "heldout_windows": n_held, "heldout_tokens": int(held_targets["loss_mask"].sum()),
                   "heldout_rule": "corpus.split_of: SHA-1 of the relative path, lowest 2 %",
                   "fingerprint": corpus.corpus_info().fingerprint},
        "model": {"num_layers": p.num_layers, "block_size": k, "hidden_size": model.config.hidden_size,
                  "intermediate_size": drafter.config.intermediate_size,
                  "num_attention_heads": drafter.config.num_attention_heads,
                  "num_key_value_heads": drafter.config.num_key_value_heads,
                  "vocab_size": model.config.vocab_size, "parameters": n_params,
                  "draft_vocab_size": drafter.draft_vocab_size,
                  "storage_dtype": p.save_dtype, "base_model_sha256": drafter.meta["base_model_sha256"]},
        "training": {"steps": step, "tokens_seen": tokens_seen, "glanced_positions": glanced_total,
                     "distill_s": round(distill_s, 1),
                     "train_s": round(train_s, 1), "wall_s": 0.0,
                     "final_train_loss": round(ema, 4) if ema is not None else None,
                     "history": history},
        "eval": {"heldout_loss": final["loss"], **{k_: v for k_, v in final.items() if k_ != "loss"},
                 "decoding": decoding},
    }
    card["files"] = cards.file_entries(out_dir, [WEIGHTS_FILE, CONFIG_FILE])
    card["training"]["wall_s"] = round(time.perf_counter() - wall_start, 1)
    cards.write_card(out_dir, card)
    return card


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leapdec.train falcon",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="stdlib-ar", help="zoo name or checkpoint folder of the target")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="default: smollm2 for a GGUF zoo model, else default")
    parser.add_argument("--out", help="folder to write (default: <base>/falcon)")
    add_budget_arguments(parser)
    args = parser.parse_args(argv)
    card = train_falcon(args.base, args.preset, args.out, steps=args.steps, seconds=args.seconds,
                        device=args.device, seed=args.seed, threads=args.threads,
                        progress=not args.no_progress)
    dec = card["eval"]["decoding"]
    print(f"{card['name']}: {card['training']['steps']} steps, held-out top-1 {card['eval']['top1_accuracy']} "
          f"(per block position {card['eval']['block_accuracy']}), greedy tokens/call "
          f"{dec['tokens_per_call']} (mean accepted {dec['mean_accepted_length']}), "
          f"{dec['speedup_vs_ar']}x AR tokens/s, {card['training']['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
