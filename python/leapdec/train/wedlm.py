"""WeDLM recipe: fine-tune a causal LM into a causal diffusion LM (Tencent/WeDLM ``finetune/``).

Each training window ``x0 [L]`` becomes a dual stream of ``2L`` tokens: the clean copy ``x0``
(positions ``0..L-1``), then a noisy copy cut into blocks of ``block_size``. In every block a
share ``p ~ U(0, 1)`` (drawn per block) of the tokens becomes ``<|mask|>`` and the block is
reordered: observed tokens first, masked after, each group in logical order; every token keeps
its logical RoPE position. Attention (one explicit ``[2L, 2L]`` boolean mask, SDPA):

* clean stream: plain causal;
* noisy block k: causal over its own physical (reordered) order, plus the clean tokens of the
  blocks before k (the clean prefix), nothing else.

Losses: each masked token is predicted at its own position (unshifted) — cross-entropy weighted
``1/p`` and normalised by the weights' sum — and the clean stream keeps the ordinary shifted
next-token loss; total ``(mlm + ar_weight * ar) / (1 + ar_weight)``. The result is still a plain
causal checkpoint (HF layout, its own ``config.json`` with ``mask_token_id`` and tokenizer), which
``generate(method="wedlm")`` decodes with a streaming window, and ``method="ar"`` as usual.

``Transformer.forward`` / ``hidden`` take explicit ``positions`` but only a padding
``attention_mask [B, T]``, not an arbitrary ``[T, T]`` mask; ``masked_forward`` below drives the
model's decoder layers directly with the dual-stream mask instead.

    python -m leapdec.train wedlm --init-from stdlib-ar --out DIR [--preset tiny] [--seconds N]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from leapdec import zoo
from leapdec.models import Transformer, load_checkpoint, save_checkpoint
from leapdec.paths import writable_dir
from leapdec.train import cards, corpus
from leapdec.train.budget import Budget, add_budget_arguments, budget_command_args, check_budget, cosine_lr
from leapdec.train import tokenizer as tokenizers_

MAX_FILE_BYTES = 16_000_000


@dataclasses.dataclass(frozen=True)
class Preset:
    """Data shape and optimisation settings of one recipe size."""
    seq_len: int                    # L: tokens of the clean stream (a multiple of block_size)
    block_size: int
    batch_size: int
    lr: float
    steps: int                      # default step budget when neither steps nor seconds is given
    warmup: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    ar_weight: float = 1.0
    mask_eps: float = 1e-3          # per-block mask share p ~ U(mask_eps, 1)
    corpus_max_bytes: int | None = None
    eval_every: int = 100
    eval_windows: int = 16          # held-out windows of the quick evaluation
    decode_prompts: int = 8         # held-out prompts decoded for the card
    decode_tokens: int = 64
    # self-distillation (as Medusa's and Falcon's recipes): a share of each batch are windows of
    # the init model's own greedy continuations (prompt tail + continuation), the text that
    # decoding produces, so that the masks become confident where greedy AR is
    distill_share: float = 0.0
    distill_prompts: int = 0        # corpus windows continued greedily
    distill_gen_len: int = 64       # tokens generated per window (the rest of seq_len is prompt)
    # sequence-level distillation from a chat model (issue 10 item 8): a share of each batch are
    # windows of a stream of its answers to short function requests of the train split, cut to
    # their bodies (distill.function_bodies) and re-tokenized: <|endoftext|> request body ...
    answers_base: str | None = None
    answers: int = 0
    answers_share: float = 0.0


PRESETS = {
    # seconds on a CPU: used by the tests
    "tiny": Preset(seq_len=64, block_size=16, batch_size=4, lr=1e-3, steps=30, warmup=5,
                   corpus_max_bytes=300_000, eval_every=10, eval_windows=4, decode_prompts=2,
                   decode_tokens=16),
    # the zoo's stdlib-wedlm: ~20 minutes on an idle 2-core CPU from stdlib-ar (0.2 s/step)
    "default": Preset(seq_len=128, block_size=16, batch_size=8, lr=5e-4, steps=6000, warmup=100,
                      eval_every=250),
    # the zoo's stdlib-wedlm: "default" with 3/4 of each batch self-distilled from stdlib-ar
    "distill": Preset(seq_len=128, block_size=16, batch_size=8, lr=5e-4, steps=6000, warmup=100,
                      eval_every=250, distill_share=0.75, distill_prompts=2048, distill_gen_len=64),
    # "distill" with a quarter of each batch from SmolLM2's function bodies (fine-tunes the zoo's
    # stdlib-wedlm: --init-from stdlib-wedlm), so that it answers short requests and stops
    "distill-smollm2": Preset(seq_len=128, block_size=16, batch_size=8, lr=3e-4, steps=3000, warmup=50,
                              eval_every=250, distill_share=0.5, distill_prompts=2048, distill_gen_len=64,
                              answers_base="smollm2-135m-instruct", answers=1200, answers_share=0.25),
}


def answer_stream(tok, p: Preset, seed: int) -> tuple[torch.Tensor, dict]:
    """The packed stream ``<|endoftext|> request body <|endoftext|> request body ...`` of the
    ``answers_base`` chat model's function bodies (``distill.function_bodies``; request and body
    encoded apart), and its record."""
    from leapdec.train import distill

    bodies = distill.function_bodies(p.answers_base, p.answers, "train", seed=seed)
    if not bodies:
        raise ValueError(f"preset: {p.answers_base}'s answers gave no function bodies to distill")
    eos = tokenizers_.special_token_ids(tok)["eos"]
    ids = []
    for i, (prompt, body) in enumerate(bodies):
        # prompt and body encoded apart, as a prompt is at inference; every other one ends at
        # the docstring's newline (as a user often types it) and its body indents itself
        if i % 2:
            prompt, body = distill.at_docstring_end(prompt, body)
        ids += [eos] + tok.encode(prompt, add_special_tokens=False).ids + tok.encode(body, add_special_tokens=False).ids
    ids.append(eos)
    info = {"base": p.answers_base, "requests": p.answers, "pairs": len(bodies), "tokens": len(ids),
            "split": "train", "rule": "distill.function_bodies, packed; every other prompt ends at the "
                                                "docstring's newline instead of the body's indentation"}
    return torch.tensor(ids, dtype=torch.long), info


# ----------------------------------------------------------------------------- the dual stream

def dual_stream_mask(seq_len: int, block_size: int, device=None) -> torch.Tensor:
    """``[2L, 2L]`` bool (True = may attend): rows/cols ``0..L-1`` are the clean stream,
    ``L..2L-1`` the noisy stream in reordered physical order."""
    if seq_len <= 0 or block_size <= 0:
        raise ValueError(f"seq_len and block_size must be positive, got {seq_len}, {block_size}")
    idx = torch.arange(2 * seq_len, device=device)
    noisy = idx >= seq_len
    local = torch.where(noisy, idx - seq_len, idx)
    block = local // block_size
    q_noisy, k_noisy = noisy[:, None], noisy[None, :]
    q_blk, k_blk = block[:, None], block[None, :]
    same_stream_causal = (q_noisy == k_noisy) & (idx[None, :] <= idx[:, None])
    # clean -> clean is causal over the whole stream; noisy -> noisy stays inside its block
    within = same_stream_causal & (~q_noisy | (q_blk == k_blk))
    noisy_sees_clean_prefix = q_noisy & ~k_noisy & (k_blk < q_blk)
    return within | noisy_sees_clean_prefix


def noisy_stream(x0: torch.Tensor, block_size: int, mask_id: int, generator: torch.Generator,
                 eps: float = 1e-3):
    """Mask and reorder ``x0 [B, L]`` block by block.

    Returns ``tokens [B, L]`` (masked positions hold ``mask_id``), ``targets [B, L]`` (the
    original tokens, same physical order), ``positions [B, L]`` (logical), ``masked [B, L]``
    bool and ``p [B, L]`` (the block's mask share at masked positions, 0 elsewhere)."""
    b, seq_len = x0.shape
    if seq_len % block_size:
        raise ValueError(f"seq_len ({seq_len}) must be a multiple of block_size ({block_size})")
    nblk = seq_len // block_size
    p = eps + (1 - eps) * torch.rand(b, nblk, 1, generator=generator)
    count = torch.round(p * block_size)
    rank = torch.rand(b, nblk, block_size, generator=generator).argsort(-1).argsort(-1)
    masked = rank < count                                           # [B, nblk, bs]
    local = torch.arange(block_size)
    order = (masked.long() * block_size + local).argsort(-1)         # stable: observed first
    positions = (torch.arange(nblk)[:, None] * block_size + local).expand(b, nblk, block_size)
    positions = positions.gather(-1, order)
    masked = masked.gather(-1, order)
    targets = x0.reshape(b, nblk, block_size).gather(-1, order)
    tokens = torch.where(masked, torch.full_like(targets, mask_id), targets)
    share = torch.where(masked, p.expand_as(masked), torch.zeros(()))
    flat = (lambda t: t.reshape(b, seq_len))
    return flat(tokens), flat(targets), flat(positions), flat(masked), flat(share)


def masked_forward(model: Transformer, input_ids: torch.Tensor, positions: torch.Tensor,
                   attn_mask: torch.Tensor) -> torch.Tensor:
    """Final-norm hidden states ``[B, T, hidden]`` of ``input_ids [B, T]`` at RoPE ``positions
    [B, T]`` under an explicit boolean ``attn_mask`` (``[T, T]`` or ``[B, T, T]``, True = may
    attend), through the model's own layers with SDPA."""
    b, t = input_ids.shape
    if positions.shape != (b, t):
        raise ValueError(f"positions must be [B, T] = {(b, t)}, got {tuple(positions.shape)}")
    if attn_mask.dtype != torch.bool or tuple(attn_mask.shape[-2:]) != (t, t):
        raise ValueError(f"attn_mask must be a bool [T, T] or [B, T, T] tensor with T = {t}")
    x = model.embed_tokens(input_ids)
    table = model.cos_sin(int(positions.max()) + 1, x.device)
    cos, sin = table[positions.long()].to(x.dtype).unsqueeze(2).chunk(2, dim=-1)
    mask = attn_mask.to(x.device)
    mask = mask[None, None] if mask.dim() == 2 else mask[:, None]
    for layer in model.layers:
        x = layer(x, cos, sin, mask, False)
    return model.norm(x)


def wedlm_loss(model: Transformer, x0: torch.Tensor, block_size: int, mask_id: int,
               generator: torch.Generator, ar_weight: float = 1.0, eps: float = 1e-3,
               attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The WeDLM objective on windows ``x0 [B, L]``: returns (total loss, {"mlm", "ar",
    "masked"}) with the masked-token loss and the clean stream's next-token loss."""
    b, seq_len = x0.shape
    device = model.device
    tokens, targets, positions, masked, share = noisy_stream(x0.cpu(), block_size, mask_id, generator, eps)
    ids = torch.cat([x0.cpu(), tokens], 1).to(device)
    pos = torch.cat([torch.arange(seq_len).expand(b, seq_len), positions], 1).to(device)
    if attn_mask is None:
        attn_mask = dual_stream_mask(seq_len, block_size, device)
    h = masked_forward(model, ids, pos, attn_mask)
    masked, targets, share = masked.to(device), targets.to(device), share.to(device)
    h_noisy = h[:, seq_len:]
    if bool(masked.any()):
        ce = F.cross_entropy(model.lm_head(h_noisy[masked]).float(), targets[masked], reduction="none")
        weight = 1.0 / share[masked]
        mlm = (ce * weight).sum() / weight.sum()
    else:
        mlm = h.sum() * 0.0
    logits = model.lm_head(h[:, :seq_len - 1]).float()
    ar = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x0[:, 1:].to(device).reshape(-1))
    total = (mlm + ar_weight * ar) / (1.0 + ar_weight)
    return total, {"mlm": mlm.detach(), "ar": ar.detach(), "masked": int(masked.sum())}


@torch.no_grad()
def heldout_losses(model: Transformer, stream: torch.Tensor, preset: Preset, mask_id: int,
                   seed: int = 0, batch_size: int = 8) -> dict:
    """Held-out WeDLM losses on the first ``preset.eval_windows`` consecutive windows of
    ``stream``, with seeded masks (deterministic for a given model): ``mlm`` (1/p-weighted
    masked-token CE), ``masked_ce`` (its unweighted mean), ``ar`` (clean next-token CE)."""
    L = preset.seq_len
    n = min(preset.eval_windows, stream.numel() // L)
    if n <= 0:
        raise ValueError(f"stream: {stream.numel()} tokens is too short for seq_len {L}")
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    mask = dual_stream_mask(L, preset.block_size, model.device)
    totals = {"mlm": 0.0, "ar": 0.0, "masked_ce": 0.0}
    masked_total, rows = 0, 0
    for s in range(0, n, batch_size):
        x0 = torch.stack([stream[i * L:(i + 1) * L] for i in range(s, min(n, s + batch_size))]).long()
        tokens, targets, positions, masked, share = noisy_stream(x0, preset.block_size, mask_id, gen,
                                                                 preset.mask_eps)
        ids = torch.cat([x0, tokens], 1).to(model.device)
        pos = torch.cat([torch.arange(L).expand(len(x0), L), positions], 1).to(model.device)
        h = masked_forward(model, ids, pos, mask)
        logits = model.lm_head(h).float()
        m = masked.to(model.device)
        ce = F.cross_entropy(logits[:, L:][m], targets.to(model.device)[m], reduction="none")
        w = 1.0 / share.to(model.device)[m]
        totals["mlm"] += float((ce * w).sum() / w.sum()) * len(x0)
        totals["masked_ce"] += float(ce.sum())
        masked_total += int(m.sum())
        ar = F.cross_entropy(logits[:, :L - 1].reshape(-1, logits.shape[-1]),
                             x0[:, 1:].to(model.device).reshape(-1))
        totals["ar"] += float(ar) * len(x0)
        rows += len(x0)
    model.train(was_training)
    return {"mlm": totals["mlm"] / rows, "masked_ce": totals["masked_ce"] / max(1, masked_total),
            "ar": totals["ar"] / rows, "windows": rows, "masked_tokens": masked_total}


# ----------------------------------------------------------------------------- decoding check

@torch.no_grad()
def decode_eval(model: Transformer, reference: Transformer, tok, n_prompts: int, max_new_tokens: int,
                seed: int = 0) -> dict:
    """WeDLM decoding (defaults: window 16, threshold 0.4, greedy) on ``n_prompts`` held-out
    prompts against greedy AR of ``reference`` (the model fine-tuned from): tokens per forward,
    rows identical to the AR output, and the mean share of each AR output reproduced before
    the first difference."""
    from leapdec.decoding import generate
    from leapdec.decoding.wedlm import DEFAULT_POSITION_PENALTY, DEFAULT_THRESHOLD, DEFAULT_WINDOW

    eos = tokenizers_.special_token_ids(tok)["eos"]
    prompts = [[eos] + tok.encode(p.prompt, add_special_tokens=False).ids
               for p in corpus.eval_prompts(n_prompts, seed=seed, max_prompt_chars=600)]
    if not prompts:
        return {}
    wedlm = generate(model, prompts, method="wedlm", max_new_tokens=max_new_tokens)
    ar = generate(reference, prompts, method="ar", max_new_tokens=max_new_tokens)

    def prefix_share(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n / max(1, len(b))

    return {"prompts": len(prompts), "max_new_tokens": max_new_tokens,
            "settings": {"window": DEFAULT_WINDOW, "threshold": DEFAULT_THRESHOLD,
                         "position_penalty": DEFAULT_POSITION_PENALTY, "temperature": 0},
            "model_calls": wedlm.stats["model_calls"],
            "tokens_per_call": round(wedlm.stats["tokens_per_call"], 3),
            "new_tokens": wedlm.stats["new_tokens"],
            "rows_identical_to_reference_ar": sum(a == b for a, b in zip(wedlm.tokens, ar.tokens)),
            "mean_prefix_share_of_reference_ar": round(
                sum(prefix_share(a, b) for a, b in zip(wedlm.tokens, ar.tokens)) / len(prompts), 3)}


# ----------------------------------------------------------------------------- self-distillation

@torch.no_grad()
def distilled_windows(model: Transformer, stream: torch.Tensor, p: Preset, seed: int,
                      progress: bool = False, batch: int = 64) -> torch.Tensor:
    """``[distill_prompts, seq_len]`` windows: ``seq_len - distill_gen_len`` tokens of the
    corpus followed by ``model``'s greedy continuation of them (a continuation that stops early
    is padded with EOS)."""
    from leapdec.decoding import generate
    from leapdec.train.medusa import sample_prompts

    prompt_len = p.seq_len - p.distill_gen_len
    if prompt_len <= 0:
        raise ValueError(f"distill_gen_len ({p.distill_gen_len}) must be below seq_len ({p.seq_len})")
    prompts = sample_prompts(stream, p.distill_prompts, prompt_len, seed + 1)
    eos = model.config.stop_token_ids[0]
    out = []
    for s in tqdm(range(0, len(prompts), batch), disable=not progress, desc="distill", unit="batch"):
        chunk = prompts[s:s + batch]
        gen = generate(model, chunk, method="ar", max_new_tokens=p.distill_gen_len)
        for prompt, cont in zip(chunk, gen.tokens):
            out.append(prompt + cont + [eos] * (p.distill_gen_len - len(cont)))
    return torch.tensor(out, dtype=torch.long)


# ----------------------------------------------------------------------------- recipe

def command_line(init_from, out_dir, preset, steps, seconds, device, seed, threads) -> str:
    """The ``python -m leapdec.train wedlm ...`` command that reproduces a call."""
    args = ["python", "-m", "leapdec.train", "wedlm", "--init-from", str(init_from), "--out", str(out_dir),
            "--preset", preset]
    return shlex.join(args + budget_command_args(steps, seconds, device, seed, threads))


def init_lineage(source_dir: Path) -> dict:
    """What made the starting checkpoint: ``init_from_commands`` (the commands before this one,
    oldest first, so the card's Reproduce section is complete when a WeDLM checkpoint is
    fine-tuned again) and ``init_sha256_chain`` (the weights each step started from, the first
    being the causal LM at the root)."""
    prior = {}
    if (source_dir / "card.json").is_file():
        prior = cards.load_card(source_dir)
    recipe = prior.get("recipe", {})
    commands = list(recipe.get("init_from_commands", [])) + ([prior["command"]] if prior.get("command") else [])
    chain = list(recipe.get("init_sha256_chain") or ([recipe["init_from_sha256"]] if recipe.get("init_from_sha256") else []))
    return {"init_from_commands": commands,
            "init_sha256_chain": chain + [cards.file_sha256(source_dir / "model.safetensors")]}


def train_wedlm(init_from="stdlib-ar", out_dir="stdlib-wedlm", preset: str = "default",
                steps: int | None = None, seconds: float | None = None, device="cpu", seed: int = 0,
                threads: int | None = None, progress: bool = True) -> dict:
    """Fine-tune the causal LM ``init_from`` (a zoo name or checkpoint directory, with its
    tokenizer) into a WeDLM causal diffusion LM written to ``out_dir`` with its card; returns
    the card. Stops after ``steps`` or ``seconds`` of training, whichever comes first."""
    wall_start = time.perf_counter()
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    check_budget(steps, seconds, threads)
    device = torch.device(device)
    command = command_line(init_from, out_dir, preset, steps, seconds, device, seed, threads)
    p = PRESETS[preset]
    if steps is None and seconds is None:
        steps = p.steps
    out_dir = Path(out_dir)
    writable_dir(out_dir, create=False)   # an unwritable --out fails now, not after training
    source_dir = zoo.resolve(init_from)
    lineage = init_lineage(source_dir)     # now: out_dir may be source_dir, overwritten at the end
    torch.manual_seed(seed)

    # --- model and tokenizer
    tok = tokenizers_.load_tokenizer(source_dir)
    ids = tokenizers_.special_token_ids(tok)
    reference = load_checkpoint(source_dir, device=device, dtype=torch.float32)
    if not reference.config.causal:
        raise ValueError(f"init_from: {source_dir} is not a causal LM (config.causal is False)")
    if reference.config.vocab_size != tok.get_vocab_size():
        raise ValueError(f"init_from: vocab_size {reference.config.vocab_size} does not match its "
                         f"tokenizer's {tok.get_vocab_size()}")
    extra = dict(reference.config.extra)
    extra["wedlm"] = {"block_size": p.block_size, "trained_from": source_dir.name}
    config = dataclasses.replace(reference.config, causal=True, mask_token_id=ids["mask"], extra=extra)
    model = Transformer(config, device=device, init_std=None)
    model.load_state_dict(reference.state_dict())
    model.train()
    reference.eval()
    n_params = sum(q.numel() for q in model.parameters())

    # --- data
    train_stream = corpus.encode_corpus(tok, "train", max_bytes=p.corpus_max_bytes)
    heldout_stream = corpus.encode_corpus(tok, "heldout")
    n_distill = round(p.distill_share * p.batch_size) if p.distill_prompts else 0
    n_answers = round(p.answers_share * p.batch_size) if p.answers else 0
    windows = corpus.batches(train_stream, p.batch_size - n_distill - n_answers, p.seq_len - 1, seed=seed)
    answers_info = None
    if n_answers:
        stream, answers_info = answer_stream(tok, p, seed)
        answer_windows = corpus.batches(stream, n_answers, p.seq_len - 1, seed=seed + 2)
    distilled = (distilled_windows(reference, train_stream, p, seed, progress) if n_distill
                 else None)
    gen = torch.Generator().manual_seed(seed)
    attn_mask = dual_stream_mask(p.seq_len, p.block_size, device)

    decay = [q for q in model.parameters() if q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=p.lr, betas=(0.9, 0.95), eps=1e-8)

    history, ema, step, tokens_seen = [], None, 0, 0
    start_eval = heldout_losses(model, heldout_stream, p, ids["mask"], seed=seed)
    history.append({"step": 0, "tokens": 0, "seconds": 0.0, "train_loss": None,
                    "heldout_loss": round(start_eval["mlm"], 4), "heldout_ar": round(start_eval["ar"], 4)})
    budget = Budget(steps, seconds, f"wedlm/{preset}", progress)
    while (frac := budget.progress(step)) is not None:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(p.lr, p.warmup, p.min_lr_ratio, step, frac)
        x0 = next(windows)
        if n_answers:
            x0 = torch.cat([x0, next(answer_windows)])
        if n_distill:
            rows = torch.randint(0, len(distilled), (n_distill,), generator=gen)
            x0 = torch.cat([x0, distilled[rows]])
        loss, parts = wedlm_loss(model, x0, p.block_size, ids["mask"], gen, p.ar_weight, p.mask_eps,
                                 attn_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_seen += x0.numel()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged at step {step} (loss {value})")
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        budget.tick()
        if step % p.eval_every == 0:
            ev = heldout_losses(model, heldout_stream, p, ids["mask"], seed=seed)
            history.append({"step": step, "tokens": tokens_seen,
                            "seconds": round(budget.seconds, 1),
                            "train_loss": round(ema, 4), "heldout_loss": round(ev["mlm"], 4),
                            "heldout_ar": round(ev["ar"], 4)})
            budget.bar.set_postfix(train=f"{ema:.3f}", mlm=f"{ev['mlm']:.3f}", ar=f"{ev['ar']:.3f}")
    train_s = budget.close()

    # --- save, then evaluate what was saved
    model.eval()
    store_dtype = torch.float32 if 4 * n_params <= MAX_FILE_BYTES else torch.bfloat16
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.to("cpu", store_dtype), out_dir)
    tokenizers_.save_tokenizer(tok, out_dir)
    saved = load_checkpoint(out_dir, device=device, dtype=torch.float32)
    final = heldout_losses(saved, heldout_stream, p, ids["mask"], seed=seed)
    if not history or history[-1]["step"] != step:
        history.append({"step": step, "tokens": tokens_seen, "seconds": round(train_s, 1),
                        "train_loss": round(ema, 4) if ema is not None else None,
                        "heldout_loss": round(final["mlm"], 4), "heldout_ar": round(final["ar"], 4)})
    reference_eval = start_eval
    decoding = decode_eval(saved, reference, tok, p.decode_prompts, p.decode_tokens, seed=seed)

    info = corpus.corpus_info()
    card = {
        "name": out_dir.name,
        "card_version": cards.CARD_VERSION,
        "summary": (f"WeDLM causal diffusion LM fine-tuned from {source_dir.name} by "
                    f"leapdec.train.wedlm (preset {preset!r}): <|mask|> predicts its own position "
                    f"under causal attention over an observed-first reordering; decode with "
                    f"generate(method='wedlm')."),
        "objective": "wedlm",
        "command": command,
        "date": cards.now_iso(),
        "machine": cards.machine_info(device),
        "recipe": {**dataclasses.asdict(p), "preset": preset, "seed": seed,
                   "steps_budget": steps, "seconds_budget": seconds,
                   "init_from": str(init_from), "init_from_dir": str(source_dir),
                   "init_from_sha256": lineage["init_sha256_chain"][-1],
                   **lineage,
                   "optimizer": "AdamW(betas=(0.9, 0.95))",
                   "schedule": "linear warmup, cosine to min_lr_ratio over the step/time budget",
                   "attention": "dual stream [2L, 2L]: clean causal; noisy block causal over its "
                                "observed-first order + clean prefix before the block",
                   "loss": "(mlm + ar_weight * ar) / (1 + ar_weight); mlm = 1/p-weighted CE of "
                           "masked tokens at their own position; ar = shifted CE of the clean stream"},
        "corpus": {**info.to_dict(), "train_tokens": int(train_stream.numel()),
                   "heldout_tokens": int(heldout_stream.numel()), "distilled_answers": answers_info},
        "model": {"architecture": config.architecture, "parameters": n_params, "causal": True,
                  "mask_token_id": config.mask_token_id,
                  "storage_dtype": str(store_dtype).replace("torch.", ""),
                  "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
                  "num_hidden_layers": config.num_hidden_layers,
                  "num_attention_heads": config.num_attention_heads,
                  "num_key_value_heads": config.num_key_value_heads,
                  "intermediate_size": config.intermediate_size, "seq_len": p.seq_len,
                  "block_size": p.block_size, "tokenizer_sha256": tokenizers_.tokenizer_hash(tok)},
        "training": {"steps": step, "tokens_seen": tokens_seen,
                     "epochs": round(tokens_seen / max(1, train_stream.numel()), 3),
                     "train_s": round(train_s, 1), "wall_s": 0.0,
                     "final_train_loss": round(ema, 4) if ema is not None else None,
                     "history": history},
        "eval": {"heldout_loss": round(final["mlm"], 4),
                 "heldout_mlm_loss": round(final["mlm"], 4),
                 "heldout_masked_ce": round(final["masked_ce"], 4),
                 "heldout_ar_loss": round(final["ar"], 4),
                 "init_heldout_mlm_loss": round(reference_eval["mlm"], 4),
                 "init_heldout_ar_loss": round(reference_eval["ar"], 4),
                 "heldout_windows": final["windows"], "heldout_masked_tokens": final["masked_tokens"],
                 "loss_kind": (f"nats/token on the first {final['windows']} held-out windows of "
                               f"{p.seq_len} tokens, seeded per-block masks (seed {seed})"),
                 "decoding": decoding},
    }
    names = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json"]
    card["files"] = cards.file_entries(out_dir, names)
    card["training"]["wall_s"] = round(time.perf_counter() - wall_start, 1)
    cards.write_card(out_dir, card)
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leapdec.train wedlm",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--init-from", default="stdlib-ar",
                        help="causal LM to fine-tune: a zoo name or checkpoint directory")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    add_budget_arguments(parser)
    args = parser.parse_args(argv)
    card = train_wedlm(args.init_from, args.out, args.preset, steps=args.steps, seconds=args.seconds,
                       device=args.device, seed=args.seed, threads=args.threads,
                       progress=not args.no_progress)
    ev = card["eval"]
    dec = ev.get("decoding") or {}
    print(f"{args.out}: {card['training']['steps']} steps, held-out masked loss {ev['heldout_mlm_loss']:.4f}, "
          f"AR loss {ev['heldout_ar_loss']:.4f} (init {ev['init_heldout_ar_loss']:.4f}), "
          f"{dec.get('tokens_per_call', float('nan')):.2f} tokens/forward, "
          f"{card['training']['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
