"""Medusa-1 heads on a frozen backbone, trained by self-distillation.

Data: random windows of the corpus's train split are prompts; the backbone's own greedy
continuations (``generate(method="ar")``) are the targets, so the heads learn what the base
model will say, which is what greedy verification accepts. The backbone runs once over each
prompt + continuation to give the final-norm hidden states; head i learns to predict the token
at ``t + i + 2`` from the hidden state at t (t from the last prompt token on), with Medusa's
per-head loss weights ``0.8 ** i``. The same is done on held-out windows to measure each head's
top-k accuracy; decoding sizes its draft trees from that table (``leapdec.trees.greedy_tree``,
``leapdec.decoding.medusa``).

Writes ``medusa_heads.safetensors`` + ``config.json`` (shape, head accuracies, base
checkpoint hash) and a card into ``<base>/medusa`` (or ``--out``), where
``generate(method="medusa")`` finds them.

    python -m leapdec.train medusa --base stdlib-ar --preset default

A GGUF zoo model (``smollm2-135m-instruct``) gets the ``smollm2`` preset by default: its data are
the shared self-distillation set (``leapdec.train.distill``: chat requests "Write a Python
function ..." built from the corpus functions, the model's own greedy answers, and the final
hidden states computed once), and the heads project onto a frequency-ranked subset of the
vocabulary (FR-Spec; ``draft_vocab`` token ids stored with the heads, the LM head rows shared):

    python -m leapdec.train medusa --base smollm2-135m-instruct --seconds 1200 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from leapdec import zoo
from leapdec.decoding import generate
from leapdec.models.heads import CONFIG_FILE, WEIGHTS_FILE, MedusaHeads
from leapdec.paths import writable_dir
from leapdec.train import cards, corpus, distill
from leapdec.train.budget import add_budget_arguments, budget_command_args, check_budget, cosine_lr
from leapdec.train import tokenizer as tokenizers_
from leapdec.decoding.medusa import MAX_AUTO_NODES, NODE_COST, cpu_node_cost, expected_accept_lengths

TOPK_MEASURED = 10           # ranks of the head-accuracy table (Medusa's TOPK)
LOSS_DECAY = 0.8             # Medusa-1: head i's loss weighted 0.8 ** i
IGNORE = -100


@dataclasses.dataclass(frozen=True)
class Preset:
    num_heads: int
    num_layers: int
    num_prompts: int              # train prompts (random windows of the train split)
    heldout_prompts: int          # held-out prompts for the accuracy table and held-out loss
    prompt_len: int
    gen_len: int                  # greedy continuation tokens per prompt
    gen_batch: int                # prompts per AR generate call
    batch_size: int               # positions per optimizer step
    lr: float
    steps: int
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    corpus_max_bytes: int | None = None
    eval_prompts: int = 8         # held-out function prompts for the decoding evaluation
    eval_new_tokens: int = 128
    eval_every: int = 100
    shared_lm_head: bool = True   # heads project with the frozen base LM head (one GEMM for all heads)
    data: str = "corpus"          # "corpus": random corpus windows; "distill": leapdec.train.distill's chat set
    draft_vocab: int | None = None  # heads project onto this many frequency-ranked token ids (FR-Spec)


PRESETS = {
    # seconds on a CPU: used by the tests
    "tiny": Preset(num_heads=3, num_layers=1, num_prompts=24, heldout_prompts=8, prompt_len=16,
                   gen_len=24, gen_batch=24, batch_size=128, lr=3e-3, steps=40, warmup=5,
                   corpus_max_bytes=300_000, eval_prompts=2, eval_new_tokens=16,
                   eval_every=10),
    # minutes on a shared 2-core CPU for the zoo's stdlib-ar
    "default": Preset(num_heads=4, num_layers=1, num_prompts=384, heldout_prompts=64,
                      prompt_len=64, gen_len=96, gen_batch=64, batch_size=256, lr=2e-3,
                      steps=1200),                 # shared-LM-head heads: 600 -> 1200 steps (top-1 +2-3 points)
    # SmolLM2-135M-Instruct: the self-distilled chat answers, heads on an 8k-token draft vocabulary
    "smollm2": Preset(num_heads=4, num_layers=1, num_prompts=1600, heldout_prompts=48, prompt_len=0,
                      gen_len=128, gen_batch=16, batch_size=256, lr=2e-3, steps=2000, warmup=30,
                      eval_prompts=4, eval_new_tokens=64, eval_every=200, data="distill", draft_vocab=8192),
}


def default_preset(base) -> str:
    """``smollm2`` for a GGUF zoo model (a pretrained chat model), else ``default``."""
    return "smollm2" if isinstance(base, str) and base in zoo.GGUF_MODELS else "default"


# ----------------------------------------------------------------------------- data

def sample_prompts(stream: torch.Tensor, n: int, length: int, seed: int) -> list[list[int]]:
    """``n`` random windows of ``length`` tokens of a token stream (seeded)."""
    if stream.numel() <= length:
        raise ValueError(f"stream: {stream.numel()} tokens is too short for prompts of {length}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - length, (n,), generator=g)
    offs = torch.arange(length)
    return stream[starts[:, None] + offs].tolist()


@torch.no_grad()
def self_distill(model, prompts: list[list[int]], gen_len: int, num_heads: int, gen_batch: int,
                 progress: bool = False, desc: str = "distill") -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy continuations of ``prompts`` by ``model``, then its hidden states over them.

    Returns ``hidden [N, h]`` float32 (positions from each prompt's last token on) and
    ``targets [N, num_heads]`` int64: the token ``t + i + 2`` for head i (``-100`` past the end).
    A continuation that stops on the model's eos keeps the eos as its last token."""
    eos = set(model.config.stop_token_ids)
    hiddens, targets = [], []
    bar = tqdm(total=len(prompts), disable=not progress, desc=desc, unit="prompt")
    for s in range(0, len(prompts), gen_batch):
        chunk = prompts[s:s + gen_batch]
        out = generate(model, chunk, method="ar", max_new_tokens=gen_len)
        seqs = []
        for p, cont in zip(chunk, out.tokens):
            stopped = len(cont) < gen_len and eos
            seqs.append(p + cont + ([min(eos)] if stopped else []))
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, seq in enumerate(seqs):
            ids[r, :len(seq)] = torch.tensor(seq)       # right padding: causal, never seen
        h = model.hidden(ids.to(model.device)).float().cpu()
        for r, (p, seq) in enumerate(zip(chunk, seqs)):
            t = torch.arange(len(p) - 1, len(seq) - 2)
            if t.numel() == 0:
                continue
            seq_t = torch.tensor(seq)
            tgt = torch.full((t.numel(), num_heads), IGNORE, dtype=torch.long)
            for i in range(num_heads):
                pos = t + i + 2
                ok = pos < len(seq)
                tgt[ok, i] = seq_t[pos[ok]]
            hiddens.append(h[r, t])
            targets.append(tgt)
        bar.update(len(chunk))
    bar.close()
    return torch.cat(hiddens), torch.cat(targets)


def distilled_targets(data: dict, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Medusa's training pairs from ``distill.hidden_states``: ``hidden [N, h]`` float32 at each
    answer position t (from the last prompt token on) and ``targets [N, num_heads]``, the
    token ``t + i + 2`` for head i (``-100`` past the end of the sequence)."""
    hiddens, targets = [], []
    offsets, plens = data["offsets"].tolist(), data["prompt_lens"].tolist()
    for i, plen in enumerate(plens):
        lo, hi = offsets[i], offsets[i + 1]
        seq = data["tokens"][lo:hi]
        t = torch.arange(plen - 1, hi - lo - 2)
        if t.numel() == 0:
            continue
        tgt = torch.full((t.numel(), num_heads), IGNORE, dtype=torch.long)
        for h in range(num_heads):
            pos = t + h + 2
            ok = pos < seq.numel()
            tgt[ok, h] = seq[pos[ok]]
        hiddens.append(data["hidden"][lo + t].float())
        targets.append(tgt)
    return torch.cat(hiddens), torch.cat(targets)


# ----------------------------------------------------------------------------- loss and metrics

def heads_loss(heads: MedusaHeads, hidden: torch.Tensor, targets: torch.Tensor):
    """Medusa-1 loss: ``sum_i 0.8^i CE_i`` over the positions with a target, and per-head CE."""
    logits = heads(hidden).float()                                     # [N, H, V']
    targets = _draft_targets(heads, targets)
    per_head = []
    for i in range(heads.num_heads):
        per_head.append(F.cross_entropy(logits[:, i], targets[:, i], ignore_index=IGNORE))
    total = sum(LOSS_DECAY ** i * l for i, l in enumerate(per_head))
    return total, per_head


def _draft_targets(heads: MedusaHeads, targets: torch.Tensor) -> torch.Tensor:
    """Targets as positions of the heads' output: a token outside a reduced draft vocabulary
    becomes ``-100`` (no loss; the heads can never draft it)."""
    if not heads.reduced_vocab:
        return targets
    mapped = heads.draft_index(targets)
    return torch.where(mapped >= 0, mapped, torch.full_like(mapped, IGNORE))


@torch.no_grad()
def evaluate_heads(heads: MedusaHeads, hidden: torch.Tensor, targets: torch.Tensor,
                   topk: int = TOPK_MEASURED, batch: int = 2048,
                   max_paths: int = MAX_AUTO_NODES) -> dict:
    """Held-out loss per head, the accuracy table ``[H, topk]`` (the share of positions where
    head h's rank-k token is the target) and ``tree_paths``: the ``max_paths`` most frequent
    prefixes ``(rank of head 0's target, rank of head 1's, ...)`` with their frequency, i.e.
    the tree paths best first with the probability that a step accepts them (the heads'
    joint behaviour, which the per-head table misses: their errors are correlated)."""
    device = next(heads.parameters()).device
    hits = torch.zeros(heads.num_heads, topk, dtype=torch.float64)
    counts = torch.zeros(heads.num_heads, dtype=torch.float64)
    ce = torch.zeros(heads.num_heads, dtype=torch.float64)
    path_counts: Counter = Counter()
    for s in range(0, hidden.shape[0], batch):
        h = hidden[s:s + batch].to(device, next(heads.parameters()).dtype)
        tgt = targets[s:s + batch].to(device)
        logits = heads(h).float()
        top = logits.topk(topk, dim=-1).indices                        # [n, H, k]
        valid = tgt != IGNORE              # a target outside a reduced draft vocabulary is a miss
        tgt = heads.draft_index(tgt)
        match = (top == tgt[..., None]) & valid[..., None]                 # [n, H, k]
        ranks = torch.where(match.any(-1), match.int().argmax(-1), topk).tolist()
        for row in ranks:
            for depth in range(len(row)):
                if row[depth] == topk:
                    break
                path_counts[tuple(row[:depth + 1])] += 1
        for i in range(heads.num_heads):
            v = valid[:, i]
            hits[i] += (top[v, i] == tgt[v, i, None]).sum(0).double().cpu()
            counts[i] += v.sum().item()
            inside = v & (tgt[:, i] >= 0)     # CE where the target is in the draft vocabulary
            if inside.any():
                ce[i] += F.cross_entropy(logits[inside, i], tgt[inside, i], reduction="sum").item()
    positions = int(counts[0].item())
    counts = counts.clamp(min=1)
    acc = hits / counts[:, None]
    best = sorted(path_counts.items(), key=lambda pc: (-pc[1], len(pc[0]), pc[0]))[:max_paths]
    return {"loss_per_head": [round(float(x), 4) for x in ce / counts],
            "top1_accuracy": [round(float(x), 4) for x in acc[:, 0]],
            "accuracy": [[round(float(x), 4) for x in row] for row in acc],
            "tree_paths": [[list(p), round(c / max(positions, 1), 5)] for p, c in best],
            "positions": positions}


def _compare(model, heads, prompt_sets, max_new_tokens: int) -> dict:
    """Greedy AR and greedy Medusa over each batch of ``prompt_sets`` (one generate call per
    batch); totals over the batches."""
    tot = {"ar_s": 0.0, "md_s": 0.0, "new": 0, "row_calls": 0.0, "steps": 0, "accepted": 0.0,
           "nodes": 0.0, "calls": 0, "ar_calls": 0, "same": True}
    hist: dict = {}
    for rows in prompt_sets:
        ar = generate(model, rows, method="ar", max_new_tokens=max_new_tokens)
        md = generate(model, rows, method="medusa", heads=heads, max_new_tokens=max_new_tokens)
        st = md.stats
        tot["ar_s"] += ar.stats["wall_s"]
        tot["md_s"] += st["wall_s"]
        tot["new"] += st["new_tokens"]
        tot["calls"] += st["model_calls"]
        tot["ar_calls"] += ar.stats["model_calls"]
        tot["row_calls"] += st["new_tokens"] / st["tokens_per_call"] if st["tokens_per_call"] else 0
        tot["steps"] += st["tree_steps"]
        tot["accepted"] += st["mean_accepted_length"] * st["tree_steps"]
        tot["nodes"] += st["mean_tree_nodes"] * st["tree_steps"]
        tot["same"] &= md.tokens == ar.tokens
        for k, v in st["accept_length_histogram"].items():
            hist[str(k)] = hist.get(str(k), 0) + v
    return {
        "batch_size": len(prompt_sets[0]), "prompts": sum(map(len, prompt_sets)),
        "new_tokens": tot["new"], "model_calls": tot["calls"], "ar_model_calls": tot["ar_calls"],
        "tokens_per_call": round(tot["new"] / tot["row_calls"], 4) if tot["row_calls"] else 0.0,
        "mean_accepted_length": round(tot["accepted"] / tot["steps"], 4) if tot["steps"] else 0.0,
        "mean_tree_nodes": round(tot["nodes"] / tot["steps"], 2) if tot["steps"] else 0.0,
        "accept_length_histogram": dict(sorted(hist.items(), key=lambda kv: int(kv[0]))),
        "medusa_tokens_per_s": round(tot["new"] / tot["md_s"], 1),
        "ar_tokens_per_s": round(tot["new"] / tot["ar_s"], 1),
        "speedup_vs_ar": round(tot["ar_s"] / tot["md_s"], 3),
        "identical_to_ar": tot["same"],
    }


def decode_eval(model, heads: MedusaHeads, prompts: list[list[int]], max_new_tokens: int) -> dict:
    """Greedy Medusa vs greedy AR on ``prompts``: each prompt alone (batch 1) and all of them
    in one ragged batch. Tokens per call count the prefill call (one token per row)."""
    generate(model, prompts[:1], method="ar", max_new_tokens=4)                 # warm-up
    generate(model, prompts[:1], method="medusa", heads=heads, max_new_tokens=4)
    return {"max_new_tokens": max_new_tokens, "torch_threads": torch.get_num_threads(),
            "node_cost": cpu_node_cost(model) if model.device.type == "cpu" else NODE_COST.get(model.device.type),
            "batch1": _compare(model, heads, [[p] for p in prompts], max_new_tokens),
            f"batch{len(prompts)}": _compare(model, heads, [prompts], max_new_tokens)}


# ----------------------------------------------------------------------------- recipe

def weighted_loss(per_head: list[float]) -> float:
    """The training objective's value from per-head losses: ``sum_i 0.8^i loss_i``."""
    return sum(LOSS_DECAY ** i * x for i, x in enumerate(per_head))


def _history_entry(step: int, p: Preset, seconds: float, ema, ev: dict) -> dict:
    return {"step": step, "tokens": step * p.batch_size, "seconds": round(seconds, 1),
            "train_loss": round(ema, 4) if ema is not None else None,
            "heldout_loss": round(weighted_loss(ev["loss_per_head"]), 4),
            "heldout_loss_per_head": ev["loss_per_head"], "top1_accuracy": ev["top1_accuracy"]}


def command_line(base, preset, out_dir, steps, seconds, device, seed, threads) -> str:
    args = ["python", "-m", "leapdec.train", "medusa", "--base", str(base), "--preset", preset]
    if out_dir is not None:
        args += ["--out", str(out_dir)]
    return shlex.join(args + budget_command_args(steps, seconds, device, seed, threads))


def train_medusa(base="stdlib-ar", preset: str | None = None, out_dir=None, steps: int | None = None,
                 seconds: float | None = None, device="cpu", seed: int = 0,
                 threads: int | None = None, progress: bool = True) -> dict:
    """Train Medusa heads for the checkpoint ``base`` (zoo name or folder) and write them with a
    card into ``out_dir`` (default ``<base>/medusa``); returns the card.

    Stops after ``steps`` optimizer steps or ``seconds`` of training, whichever comes first
    (the preset's steps when neither is given); the cosine schedule follows the step budget.
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
    out_dir = Path(out_dir) if out_dir is not None else base_dir / "medusa"
    writable_dir(out_dir, create=False)   # an unwritable --out fails now, not after training
    budget = steps if steps is not None else p.steps
    torch.manual_seed(seed)

    # --- frozen backbone and self-distilled data
    data_start = time.perf_counter()
    vocab_ids, data_info = None, {}
    if p.data == "distill":
        train_pairs = distill.answers(str(base), p.num_prompts, "train", p.gen_len, seed, p.gen_batch,
                                      model=model, tokenizer=tok, progress=progress)
        held_pairs = distill.answers(str(base), p.heldout_prompts, "heldout", p.gen_len, seed, p.gen_batch,
                                     model=model, tokenizer=tok, progress=progress)
        train_h, train_t = distilled_targets(distill.hidden_states(str(base), train_pairs, model,
                                                                   progress=progress), p.num_heads)
        held_h, held_t = distilled_targets(distill.hidden_states(str(base), held_pairs, model,
                                                                 progress=progress), p.num_heads)
        train_prompts, heldout_prompts = [q for q, _ in train_pairs], [q for q, _ in held_pairs]
        if p.draft_vocab:
            vocab_ids = distill.frequent_tokens(str(base), p.draft_vocab, train_pairs, tok,
                                                always=model.config.stop_token_ids)
            data_info["draft_vocab_coverage_heldout_answers"] = round(distill.coverage(vocab_ids, held_pairs), 4)
        eval_prompt_ids = heldout_prompts[:p.eval_prompts]
        stream_tokens = None
    else:
        train_stream = corpus.encode_corpus(tok, "train", max_bytes=p.corpus_max_bytes)
        heldout_stream = corpus.encode_corpus(tok, "heldout")
        train_prompts = sample_prompts(train_stream, p.num_prompts, p.prompt_len, seed)
        heldout_prompts = sample_prompts(heldout_stream, p.heldout_prompts, p.prompt_len, seed + 1)
        train_h, train_t = self_distill(model, train_prompts, p.gen_len, p.num_heads, p.gen_batch,
                                        progress, "distill/train")
        held_h, held_t = self_distill(model, heldout_prompts, p.gen_len, p.num_heads, p.gen_batch,
                                      progress, "distill/heldout")
        ids = tokenizers_.special_token_ids(tok)
        eval_prompt_ids = [[ids["eos"]] + tok.encode(e.prompt, add_special_tokens=False).ids
                           for e in corpus.eval_prompts(p.eval_prompts, seed=0)]
        stream_tokens = int(train_stream.numel())
    data_s = time.perf_counter() - data_start

    # --- heads
    heads = MedusaHeads.from_base(model, p.num_heads, p.num_layers, p.shared_lm_head,
                                  vocab_ids=vocab_ids).float().train()
    params = list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=p.lr, betas=(0.9, 0.95), weight_decay=p.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history, ema, step = [], None, 0
    start_eval = evaluate_heads(heads.eval(), held_h, held_t)
    heads.train()
    history.append(_history_entry(0, p, 0.0, None, start_eval))
    bar = tqdm(total=budget, disable=not progress, desc=f"medusa/{preset}", unit="step")
    train_start = time.perf_counter()
    while step < budget:
        if seconds is not None and time.perf_counter() - train_start >= seconds:
            break
        # the cosine follows whichever budget is spent faster (steps, or seconds when given)
        frac = step / budget if seconds is None else max(step / budget, (time.perf_counter() - train_start) / seconds)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(p.lr, p.warmup, p.min_lr_ratio, step, frac)
        idx = torch.randint(0, train_h.shape[0], (p.batch_size,), generator=gen)
        loss, _ = heads_loss(heads, train_h[idx].to(device), train_t[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged at step {step} (loss {value})")
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.3f}")
        if step % p.eval_every == 0 or step == budget:
            ev = evaluate_heads(heads.eval(), held_h, held_t)
            heads.train()
            history.append(_history_entry(step, p, time.perf_counter() - train_start, ema, ev))
    bar.close()
    train_s = time.perf_counter() - train_start

    # --- measure the heads, save, evaluate decoding with what was saved
    heads.eval()
    final = evaluate_heads(heads, held_h, held_t)
    if history[-1]["step"] != step:
        history.append(_history_entry(step, p, train_s, ema, final))
    expected = expected_accept_lengths([(tuple(p), v) for p, v in final["tree_paths"]])
    heads.meta = {
        "base_model": base_dir.name,
        "base_model_sha256": base_sha,
        "head_accuracy": final["accuracy"],
        "tree_paths": final["tree_paths"],
        "expected_accept_length": {str(k): round(expected[min(k, len(expected) - 1)], 4)
                                   for k in (1, 2, 4, 8, 16, 32, MAX_AUTO_NODES)},
    }
    heads.save(out_dir)
    saved = MedusaHeads.load(out_dir, device=device, dtype=torch.float32).attach(model)
    decoding = decode_eval(model, saved, eval_prompt_ids, p.eval_new_tokens)

    n_params = sum(x.numel() for x in heads.parameters())
    card = {
        "name": f"{base_dir.name}/{out_dir.name}" if out_dir.parent == base_dir else out_dir.name,
        "card_version": cards.CARD_VERSION,
        "summary": (f"Medusa-1 heads ({p.num_heads} heads x {p.num_layers} ResBlock) for "
                    f"{base_dir.name}"
                    f"{', sharing its frozen LM head' if p.shared_lm_head else ''}, trained by "
                    f"self-distillation on the frozen backbone "
                    f"(leapdec.train.medusa, preset {preset!r})."),
        "command": command,
        "date": cards.now_iso(),
        "machine": cards.machine_info(device),
        "recipe": {**dataclasses.asdict(p), "preset": preset, "seed": seed,
                   "steps_budget": budget, "seconds_budget": seconds,
                   "optimizer": "AdamW(betas=(0.9, 0.95))",
                   "schedule": "linear warmup, cosine to min_lr_ratio over the step budget "
                               "(or the seconds budget when that is spent first)",
                   "loss": f"sum_i {LOSS_DECAY}^i * CE(head i, token t+i+2)",
                   "init": "ResBlock weight zero, bias default; output layer = base lm_head"},
        "corpus": {"base_model": str(base),
                   "targets": ("the base model's greedy answers (generate(method='ar'), to its stop token) to "
                               "chat requests built from corpus functions (leapdec.train.distill)"
                               if p.data == "distill" else "the base model's greedy continuations "
                               "(generate(method='ar')) of random corpus windows"),
                   **data_info,
                   "train_prompts": len(train_prompts), "heldout_prompts": len(heldout_prompts),
                   "prompt_len": p.prompt_len, "gen_len": p.gen_len,
                   "train_positions": int(train_h.shape[0]), "heldout_positions": int(held_h.shape[0]),
                   "train_stream_tokens": stream_tokens,
                   "heldout_rule": "corpus.split_of: SHA-1 of the relative path, lowest 2 %",
                   "fingerprint": corpus.corpus_info().fingerprint},
        "model": {"num_heads": p.num_heads, "num_layers": p.num_layers, "shared_lm_head": p.shared_lm_head,
                  "hidden_size": heads.hidden_size, "vocab_size": heads.vocab_size,
                  "draft_vocab_size": heads.draft_vocab_size,
                  "parameters": n_params, "storage_dtype": "float32",
                  "base_model_sha256": heads.meta["base_model_sha256"],
                  "trees": "sized per step from tree_paths (leapdec.decoding.medusa, tree='auto')"},
        "training": {"steps": step, "tokens_seen": step * p.batch_size, "data_s": round(data_s, 1),
                     "train_s": round(train_s, 1), "wall_s": 0.0,
                     "final_train_loss": round(ema, 4) if ema is not None else None,
                     "history": history},
        "eval": {"heldout_loss": round(weighted_loss(final["loss_per_head"]), 4),
                 "heldout_loss_per_head": final["loss_per_head"],
                 "top1_accuracy": final["top1_accuracy"], "accuracy_topk": TOPK_MEASURED,
                 "heldout_positions": final["positions"],
                 "expected_accept_length": heads.meta["expected_accept_length"],
                 "decoding": decoding},
    }
    card["files"] = cards.file_entries(out_dir, [WEIGHTS_FILE, CONFIG_FILE])
    card["training"]["wall_s"] = round(time.perf_counter() - wall_start, 1)
    cards.write_card(out_dir, card)
    return card


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leapdec.train medusa",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="stdlib-ar", help="zoo name or checkpoint folder of the backbone")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="default: smollm2 for a GGUF zoo model, else default")
    parser.add_argument("--out", help="folder to write (default: <base>/medusa)")
    add_budget_arguments(parser)
    args = parser.parse_args(argv)
    card = train_medusa(args.base, args.preset, args.out, steps=args.steps, seconds=args.seconds,
                        device=args.device, seed=args.seed, threads=args.threads,
                        progress=not args.no_progress)
    print(f"{card['name']}: {card['training']['steps']} steps, top-1 accuracy per head "
          f"{card['eval']['top1_accuracy']}, {card['training']['wall_s']:.0f} s")
    for key, run in card["eval"]["decoding"].items():
        if isinstance(run, dict):
            print(f"  greedy {key}: {run['tokens_per_call']} tokens/call (mean accepted "
                  f"{run['mean_accepted_length']}), {run['medusa_tokens_per_s']} tok/s vs AR "
                  f"{run['ar_tokens_per_s']} ({run['speedup_vs_ar']}x), identical {run['identical_to_ar']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
