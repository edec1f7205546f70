"""DEER drafter: a block-causal masked-diffusion Transformer aligned to its AR target in DEER's
two stages (arXiv 2512.15176, Diffusion-to-AR alignment).

Data: the target's own greedy answers (``generate(method="ar")``) to function prompts of the
corpus's train split (a ``def`` line and its docstring, the held-out evaluation's format), and
to random windows. Each training sequence is ``prompt + answer``, run causally, plus blocks cut
at random points of the answer: a block at prefix length c is ``[BND, MASK, ...]`` at positions
``c ..`` that sees the prefix ``< c`` and itself (``models.deer.block_mask``); the root
(position c - 1, causal) predicts the answer's token c and block query j predicts c + j + 1.

* Stage I (continuation distillation): cross-entropy on every block position (and the causal
  next-token loss over the answer, the root's draft), equal weights.
* Stage II (boundary refinement): the same loss weighted ``decay ** k`` by the distance k from
  the boundary (k = 0 the root's draft), which is where greedy verification stops.

The drafter starts from the target: its embeddings, LM head, final norm and ``num_layers`` of
its layers. Writes ``config.json`` + ``model.safetensors`` (a Hugging Face checkpoint folder with
a ``leapdec.deer`` entry) and a card into ``<base>/deer`` (or ``--out``), where
``generate(method="deer")`` finds them.

    python -m leapdec.train deer --base stdlib-ar --seconds 1200 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import shlex
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from leapdec import zoo
from leapdec.decoding import generate
from leapdec.models import load_checkpoint
from leapdec.models.deer import DeerDrafter, block_mask
from leapdec.paths import writable_dir
from leapdec.train import cards, corpus, distill
from leapdec.train import tokenizer as tokenizers_
from leapdec.train.budget import add_budget_arguments, budget_command_args, check_budget, cosine_lr
from leapdec.train.medusa import sample_prompts

IGNORE = -100
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class Preset:
    num_layers: int
    function_prompts: int         # train-split function prompts answered by the target
    window_prompts: int           # random train windows answered by the target
    heldout_prompts: int          # held-out function prompts (block accuracy, accepted length)
    window_len: int
    max_prompt_tokens: int        # prompts keep their last tokens
    gen_len: int                  # the target's greedy answer length
    gen_batch: int
    batch_size: int               # sequences per optimizer step
    cuts: int                     # blocks per sequence
    block_lens: tuple             # block queries per step, drawn per batch (drafts = block + 1)
    lr: float
    steps: int
    stage2_fraction: float = 0.4  # the last part of the budget uses the position-weighted loss
    decay: float = 0.8            # stage II weight decay ** k
    warmup: int = 20
    min_lr_ratio: float = 0.1
    eval_every: int = 100
    eval_prompts: int = 8         # held-out prompts for the decoding evaluation
    eval_new_tokens: int = 128
    eval_block_size: int = 16
    corpus_max_bytes: int | None = None
    distill: bool = False         # data: leapdec.train.distill's chat requests and the target's answers
    share_embeddings: bool = False  # use the target's frozen embedding and LM head (a large target)
    vocab: int | None = None      # reduced draft vocabulary (FR-Spec; with share_embeddings)
    copy_layers: tuple | None = None  # the target's layers the drafter starts from (default: spread)
    save_dtype: str | None = None  # dtype of the saved own weights of a sharing drafter
    decode_sweep: tuple = ()      # (block_size, tree_topk) settings timed after training; the fastest
                                  # exact one becomes the drafter's decode_defaults


PRESETS = {
    # seconds on a CPU: the tests
    "tiny": Preset(num_layers=1, function_prompts=8, window_prompts=4, heldout_prompts=4, window_len=24,
                   max_prompt_tokens=48, gen_len=24, gen_batch=12, batch_size=4, cuts=3,
                   block_lens=(3, 7), lr=2e-3, steps=20, warmup=2, eval_every=10, eval_prompts=2,
                   eval_new_tokens=16, eval_block_size=4, corpus_max_bytes=300_000),
    # the tests: the sharing / reduced-vocabulary / distillation-data path of "smollm2", on any base
    "tiny-shared": Preset(num_layers=1, function_prompts=8, window_prompts=0, heldout_prompts=4, window_len=0,
                          max_prompt_tokens=48, gen_len=16, gen_batch=8, batch_size=4, cuts=3,
                          block_lens=(3, 7), lr=2e-3, steps=12, warmup=2, eval_every=6, eval_prompts=2,
                          eval_new_tokens=16, eval_block_size=4, distill=True, share_embeddings=True,
                          vocab=1024, save_dtype="bfloat16", decode_sweep=((2, 1), (3, 2))),
    # ~20 minutes on one thread of a shared 2-core CPU for the zoo's stdlib-ar
    # (768 answered prompts overfit in 300 steps: train loss 0.28, held-out 1.12)
    "default": Preset(num_layers=2, function_prompts=3000, window_prompts=600, heldout_prompts=48,
                      window_len=64, max_prompt_tokens=160, gen_len=128, gen_batch=64, batch_size=16,
                      cuts=6, block_lens=(7, 15, 15, 31), lr=1.5e-3, steps=3000),
    # SmolLM2-135M-Instruct: 2 layers of its shape (7.1 M own parameters, 14 MB in bfloat16) on
    # its frozen embedding and LM head, drafting from its 8192 most frequent answer tokens; data:
    # its own greedy answers to the distillation set's chat requests (`python -m
    # leapdec.train.distill --n 1600` fills the cache). ~2 s per step on an idle 2-core CPU.
    "smollm2": Preset(num_layers=2, function_prompts=1600, window_prompts=0, heldout_prompts=32,
                      window_len=0, max_prompt_tokens=160, gen_len=128, gen_batch=16, batch_size=8,
                      cuts=4, block_lens=(7, 15), lr=1e-3, steps=600, eval_every=100, eval_prompts=4,
                      eval_block_size=8, distill=True, share_embeddings=True, vocab=8192,
                      save_dtype="bfloat16", decode_sweep=((2, 1), (4, 1), (8, 1), (4, 3), (8, 3))),
}


# ----------------------------------------------------------------------------- data

def train_function_prompts(tok, n: int, seed: int, split: str = "train") -> list[str]:
    """``n`` function prompts (a ``def`` and its docstring) from the corpus split (seeded)."""
    candidates, rng = [], random.Random(seed)
    files = corpus.corpus_files(split)
    rng.shuffle(files)
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        candidates += [p.prompt for p in corpus.function_prompts(text, str(path), max_prompt_chars=1024)]
        if len(candidates) >= 8 * n:
            break
    return rng.sample(candidates, min(n, len(candidates)))


@torch.no_grad()
def greedy_answers(model, prompts: list[list[int]], gen_len: int, batch: int, progress: bool,
                   desc: str) -> list[tuple[list[int], list[int]]]:
    """``(prompt, answer)`` pairs: the target's greedy answers (an answer that stopped on eos
    keeps the eos as its last token, which the drafter then learns to draft)."""
    eos = min(model.config.stop_token_ids) if model.config.stop_token_ids else None
    pairs = []
    bar = tqdm(total=len(prompts), disable=not progress, desc=desc, unit="prompt")
    for s in range(0, len(prompts), batch):
        chunk = prompts[s:s + batch]
        out = generate(model, chunk, method="ar", max_new_tokens=gen_len)
        for p, ans in zip(chunk, out.tokens):
            if len(ans) < gen_len and eos is not None:
                ans = ans + [eos]
            if ans:
                pairs.append((p, ans))
        bar.update(len(chunk))
    bar.close()
    return pairs


def make_batch(pairs, cuts: int, block_len: int, boundary: int, mask: int, gen: random.Random):
    """Inputs, positions, labels ``[B, T]``, the attention mask ``[B, 1, T, T]`` and the distance
    from the boundary of each label (``[B, T]``, -1 where there is no label)."""
    seqs = [p + a for p, a in pairs]
    width = max(map(len, seqs))
    t = width + cuts * block_len
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    pos = torch.zeros(len(seqs), t, dtype=torch.long)
    labels = torch.full((len(seqs), t), IGNORE, dtype=torch.long)
    dist = torch.full((len(seqs), t), -1, dtype=torch.long)
    masks = []
    block_ids = torch.tensor([boundary] + [mask] * (block_len - 1))
    for r, ((p, a), seq) in enumerate(zip(pairs, seqs)):
        n, start = len(seq), len(p)
        st = torch.tensor(seq)
        ids[r, :n] = st
        pos[r, :width] = torch.arange(width)
        labels[r, start - 1:n - 1] = st[start:]                 # the root's draft: causal next token
        dist[r, start - 1:n - 1] = 0
        cut_at = [gen.randint(start, n - 1) if n - 1 > start else start for _ in range(cuts)]
        for i, c in enumerate(cut_at):
            s = width + i * block_len
            ids[r, s:s + block_len] = block_ids
            pos[r, s:s + block_len] = torch.arange(c, c + block_len)
            k = torch.arange(block_len)
            ok = c + 1 + k < n
            labels[r, s:s + block_len][ok] = st[c + 1 + k[ok]]
            dist[r, s:s + block_len][ok] = k[ok] + 1
        masks.append(block_mask(width, cut_at, block_len))
    return ids, pos, labels, torch.stack(masks)[:, None], dist


def loss_fn(drafter, batch, weights: torch.Tensor | None):
    """Mean cross-entropy over labelled positions, weighted per distance from the boundary."""
    ids, pos, labels, mask, dist = batch
    labels = drafter.draft_labels(labels, IGNORE)         # draft-vocabulary indices (FR-Spec)
    logits = drafter(ids, pos, mask, draft_vocab=True).float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                         reduction="none").view(labels.shape)
    ok = labels != IGNORE
    w = ok.float() if weights is None else weights[dist.clamp(min=0)] * ok
    return (ce * w).sum() / w.sum().clamp(min=1e-9)


@torch.no_grad()
def heldout_metrics(drafter, pairs, block_len: int, seed: int) -> dict:
    """On held-out answers, blocks cut at random answer positions: per-distance top-1 accuracy
    and the greedy accepted length it implies (leading correct drafts + the bonus token). A target
    token outside a reduced draft vocabulary counts as a miss."""
    accs, accept, losses = [], [], []
    gen = random.Random(seed)
    for i in range(0, len(pairs), 8):
        chunk = pairs[i:i + 8]
        batch = make_batch(chunk, 4, block_len, drafter.boundary_token_id, drafter.mask_token_id, gen)
        ids, pos, target_labels, mask, dist = batch
        labels = drafter.draft_labels(target_labels, IGNORE)
        logits = drafter(ids, pos, mask, draft_vocab=True).float()
        ok = labels != IGNORE
        losses.append(F.cross_entropy(logits[ok], labels[ok], reduction="sum") / max(1, int(ok.sum())))
        pred = logits.argmax(-1)
        # a label outside the draft vocabulary stays valid (-2) and no prediction matches it
        labels = torch.where((target_labels != IGNORE) & ~ok, torch.full_like(labels, -2), labels)
        width = ids.shape[1] - 4 * block_len
        for r in range(len(chunk)):
            for c in range(4):
                s = width + c * block_len
                # the root's draft sits at cut - 1 of the causal part: position pos[s] - 1
                root = int(pos[r, s]) - 1
                lab = torch.cat([labels[r, root:root + 1], labels[r, s:s + block_len]])
                prd = torch.cat([pred[r, root:root + 1], pred[r, s:s + block_len]])
                valid = lab != IGNORE
                hit = (prd == lab) & valid
                accs.append(torch.where(valid, hit.float(), torch.full_like(hit, float("nan"), dtype=torch.float)))
                run = int((hit.long().cumprod(0)).sum())
                accept.append(run + 1)
    acc = torch.stack(accs)
    per = torch.nanmean(acc, 0)
    return {"heldout_loss": round(float(torch.stack(losses).mean()), 4),
            "top1_by_distance": [round(float(x), 4) for x in per],
            "expected_accept_length": round(sum(accept) / len(accept), 3)}


def decode_eval(model, drafter, prompts: list[list[int]], max_new_tokens: int, block_size: int,
                tree_topk: int = 1) -> dict:
    """Greedy deer (``block_size`` drafts, top-``tree_topk`` alternatives at the first 2 positions)
    vs greedy AR on held-out prompts at batch 1, alternating: identical tokens, mean accepted
    length, its histogram, tokens/s of both."""
    ar_tok, deer_tok, ar_s, deer_s, hist, acc = [], [], 0.0, 0.0, {}, []
    generate(model, prompts[:1], method="deer", drafter=drafter, block_size=block_size, max_new_tokens=8)
    for p in prompts:
        t0 = time.perf_counter()
        a = generate(model, [p], method="ar", max_new_tokens=max_new_tokens)
        ar_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        d = generate(model, [p], method="deer", drafter=drafter, block_size=block_size, tree_topk=tree_topk,
                     max_new_tokens=max_new_tokens)
        deer_s += time.perf_counter() - t0
        ar_tok += a.tokens
        deer_tok += d.tokens
        acc += d.stats["accepted_lengths"][0]
        for k, v in d.stats["accept_length_histogram"].items():
            hist[k] = hist.get(k, 0) + v
    new = sum(map(len, deer_tok))
    return {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "block_size": block_size, "tree_topk": tree_topk,
            "identical_to_ar": ar_tok == deer_tok,
            "mean_accepted_length": round(sum(acc) / max(1, len(acc)), 3),
            "accept_length_histogram": {str(k): hist[k] for k in sorted(hist)},
            "ar_tokens_per_s": round(sum(map(len, ar_tok)) / ar_s, 1),
            "deer_tokens_per_s": round(new / deer_s, 1),
            "speedup_vs_ar": round((new / deer_s) / (sum(map(len, ar_tok)) / ar_s), 3)}


# ----------------------------------------------------------------------------- training

def command_line(base, preset, out_dir, steps, seconds, device, seed, threads) -> str:
    args = ["python", "-m", "leapdec.train", "deer", "--base", str(base), "--preset", preset]
    if out_dir is not None:
        args += ["--out", str(out_dir)]
    return shlex.join(args + budget_command_args(steps, seconds, device, seed, threads))


def _encode_prompts(tok, texts: list[str], eos: int, limit: int) -> list[list[int]]:
    return [([eos] + tok.encode(t, add_special_tokens=False).ids)[-limit:] for t in texts]


def train_deer(base="stdlib-ar", preset: str = "default", out_dir=None, steps: int | None = None,
               seconds: float | None = None, device="cpu", seed: int = 0, threads: int | None = None,
               progress: bool = True) -> dict:
    """Train a DEER drafter for the checkpoint ``base`` (zoo name or folder) and write it with a
    card into ``out_dir`` (default ``<base>/deer``); returns the card. Stops after ``steps``
    optimizer steps or ``seconds`` of training (the stage switch and the cosine schedule follow
    whichever budget is given; the preset's steps when neither)."""
    wall_start = time.perf_counter()
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    check_budget(steps, seconds, threads)
    device = torch.device(device)
    command = command_line(base, preset, out_dir, steps, seconds, device, seed, threads)
    p = PRESETS[preset]
    step_budget = steps if steps is not None else (None if seconds is not None else p.steps)
    torch.manual_seed(seed)
    rng = random.Random(seed)

    # --- frozen target and its greedy answers
    data_start = time.perf_counter()
    if p.distill:                        # a chat model: the distillation set's requests and answers
        model, tok, base_dir, base_sha = distill.load_base(base, device)
        train_pairs = distill.answers(base, p.function_prompts, "train", p.gen_len, seed, p.gen_batch,
                                      model=model, tokenizer=tok, progress=progress)
        held = distill.answers(base, p.eval_prompts + p.heldout_prompts, "heldout", p.gen_len, seed,
                               p.gen_batch, model=model, tokenizer=tok, progress=progress)
        decode_prompts = [q for q, _ in held[:p.eval_prompts]]
        held_pairs = held[p.eval_prompts:]
    else:
        base_dir = zoo.resolve(base)
        model = load_checkpoint(base_dir, device=device, dtype=torch.float32).eval()
        if not model.config.causal:
            raise ValueError(f"base: {base_dir} is not a causal LM; DEER verifies with an AR target")
        base_weights = base_dir / "model.safetensors"
        base_sha = cards.file_sha256(base_weights) if base_weights.is_file() else None
        tok = tokenizers_.load_tokenizer(base_dir)
        eos = tokenizers_.special_token_ids(tok)["eos"]
        texts = train_function_prompts(tok, p.function_prompts, seed)
        prompts = _encode_prompts(tok, texts, eos, p.max_prompt_tokens)
        stream = corpus.encode_corpus(tok, "train", max_bytes=p.corpus_max_bytes)
        prompts += sample_prompts(stream, p.window_prompts, p.window_len, seed)
        held_texts = [e.prompt for e in corpus.eval_prompts(p.heldout_prompts + p.eval_prompts, seed=1)]
        decode_prompts = _encode_prompts(tok, held_texts[:p.eval_prompts], eos, p.max_prompt_tokens)
        held_prompts = _encode_prompts(tok, held_texts[p.eval_prompts:], eos, p.max_prompt_tokens)
        train_pairs = greedy_answers(model, prompts, p.gen_len, p.gen_batch, progress, "answers/train")
        held_pairs = greedy_answers(model, held_prompts, p.gen_len, p.gen_batch, progress, "answers/heldout")
    out_dir = Path(out_dir) if out_dir is not None else base_dir / "deer"
    writable_dir(out_dir, create=False)
    data_s = time.perf_counter() - data_start

    # --- drafter from the target's weights
    vocab_ids = None
    if p.vocab is not None and p.vocab < model.config.vocab_size:
        stops = sorted({a[-1] for _, a in train_pairs if a} | set(model.config.stop_token_ids or []))
        vocab_ids = distill.frequent_tokens(base, p.vocab, train_pairs, tokenizer=tok, always=stops)
    drafter = DeerDrafter.for_target(model, p.num_layers, list(p.copy_layers) if p.copy_layers else None,
                                     share_embeddings=p.share_embeddings, vocab_ids=vocab_ids).float().train()
    params = [x for x in drafter.parameters() if x.requires_grad]
    opt = torch.optim.AdamW(params, lr=p.lr, betas=(0.9, 0.95), weight_decay=0.0)
    decay_w = torch.tensor([p.decay ** k for k in range(64)])
    decay_w = decay_w / decay_w[:32].mean()
    eval_block = max(p.block_lens)
    history = [{"step": 0, "stage": 1, "tokens": 0, "seconds": 0.0, "train_loss": None,
                **heldout_metrics(drafter.eval(), held_pairs, eval_block, seed)}]
    drafter.train()
    bar = tqdm(total=step_budget or int(seconds), disable=not progress, desc=f"deer/{preset}",
               unit="step" if step_budget else "s")
    train_start, step, ema, stage_switch, first_loss = time.perf_counter(), 0, None, None, None
    tokens_per_step = p.batch_size * (p.gen_len + p.cuts * sum(p.block_lens) // len(p.block_lens))

    def progress_frac() -> float:
        if step_budget is not None:
            frac = step / step_budget
        else:
            frac = 0.0
        if seconds is not None:
            frac = max(frac, (time.perf_counter() - train_start) / seconds)
        return frac

    while progress_frac() < 1.0:
        frac = progress_frac()
        stage = 2 if frac >= 1.0 - p.stage2_fraction else 1
        if stage == 2 and stage_switch is None:
            stage_switch = step
        for group in opt.param_groups:
            group["lr"] = cosine_lr(p.lr, p.warmup, p.min_lr_ratio, step, frac)
        pairs = [train_pairs[rng.randrange(len(train_pairs))] for _ in range(p.batch_size)]
        block_len = rng.choice(p.block_lens)
        batch = make_batch(pairs, p.cuts, block_len, drafter.boundary_token_id, drafter.mask_token_id, rng)
        batch = tuple(x.to(device) for x in batch)
        loss = loss_fn(drafter, batch, decay_w.to(device) if stage == 2 else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged at step {step} (loss {value})")
        ema = value if ema is None else 0.9 * ema + 0.1 * value
        first_loss = value if first_loss is None else first_loss
        if step_budget:
            bar.update(1)
        else:
            bar.n = min(int(seconds), int(time.perf_counter() - train_start))
            bar.refresh()
        bar.set_postfix(loss=f"{ema:.3f}", stage=stage)
        if step % p.eval_every == 0:
            ev = heldout_metrics(drafter.eval(), held_pairs, eval_block, seed)
            drafter.train()
            history.append({"step": step, "stage": stage, "tokens": step * tokens_per_step,
                            "seconds": round(time.perf_counter() - train_start, 1),
                            "train_loss": round(ema, 4), **ev})
    bar.close()
    train_s = time.perf_counter() - train_start

    # --- measure, save, decode with what was saved
    drafter.eval()
    final = heldout_metrics(drafter, held_pairs, eval_block, seed)
    if history[-1]["step"] != step:
        history.append({"step": step, "stage": 2 if stage_switch is not None else 1,
                        "tokens": step * tokens_per_step,
                        "seconds": round(train_s, 1), "train_loss": round(ema, 4) if ema else None, **final})
    drafter.meta = {"base_model": base_dir.name, "base_model_sha256": base_sha,
                    "default_block_size": p.eval_block_size}
    save_dtype = getattr(torch, p.save_dtype) if p.save_dtype else None
    drafter.save(out_dir, dtype=save_dtype)
    saved = DeerDrafter.load(out_dir, device=device, dtype=torch.float32, target=model)
    decoding = decode_eval(model, saved, decode_prompts, p.eval_new_tokens, p.eval_block_size)
    sweep = [decode_eval(model, saved, decode_prompts, p.eval_new_tokens, b, k) for b, k in p.decode_sweep]
    exact = [r for r in sweep if r["identical_to_ar"]]
    if exact:                             # the fastest exact setting: generate(method="deer")'s defaults
        best = max(exact, key=lambda r: r["speedup_vs_ar"])
        drafter.meta["decode_defaults"] = {"block_size": best["block_size"], "tree_topk": best["tree_topk"]}
        drafter.save(out_dir, dtype=save_dtype)

    n_params = sum(x.numel() for x in drafter.parameters())      # its own (shared ones are not parameters)
    card = {
        "name": f"{base_dir.name}/{out_dir.name}" if out_dir.parent == base_dir else out_dir.name,
        "card_version": cards.CARD_VERSION,
        "summary": (f"DEER drafter for {base_dir.name}: a {p.num_layers}-layer block-causal masked-diffusion "
                    f"Transformer initialised from the target, drafting a block in one forward, aligned "
                    f"by continuation distillation then a position-weighted loss (leapdec.train.deer, "
                    f"preset {preset!r})."),
        "command": command,
        "date": cards.now_iso(),
        "machine": cards.machine_info(device),
        "recipe": {**dataclasses.asdict(p), "block_lens": list(p.block_lens),
                   "decode_sweep": [list(x) for x in p.decode_sweep],
                   "copy_layers": list(p.copy_layers) if p.copy_layers else None, "preset": preset, "seed": seed,
                   "steps_budget": steps,
                   "seconds_budget": seconds, "optimizer": "AdamW(betas=(0.9, 0.95))",
                   "schedule": "linear warmup, cosine to min_lr_ratio over the budget",
                   "stage_1": "cross-entropy on the root's draft and every block position, equal weights",
                   "stage_2": f"the same loss weighted {p.decay}^k by the distance k from the boundary",
                   "stage_2_from_step": stage_switch,
                   "init": (f"target's final norm and layers {saved.config.extra['deer']['copied_layers']}; "
                            + ("its embedding and LM head shared, frozen" if p.share_embeddings
                               else "its embeddings and LM head copied")
                            + "; [MASK] and [BND] = mean embedding")},
        "corpus": {"base_model": str(base),
                   "targets": ("the base model's greedy answers to the distillation set's chat requests "
                               "(leapdec.train.distill)" if p.distill else
                               "the base model's greedy answers (generate(method='ar')) to train-split "
                               "function prompts and random train windows"),
                   "train_sequences": len(train_pairs), "heldout_sequences": len(held_pairs),
                   "gen_len": p.gen_len,
                   "train_answer_tokens": sum(len(a) for _, a in train_pairs),
                   "heldout_rule": "corpus.split_of: SHA-1 of the relative path, lowest 2 %",
                   "fingerprint": corpus.corpus_info().fingerprint},
        "model": {"num_layers": p.num_layers, "hidden_size": drafter.config.hidden_size,
                  "vocab_size": drafter.config.vocab_size, "target_vocab_size": drafter.target_vocab_size,
                  "mask_token_id": drafter.mask_token_id, "boundary_token_id": drafter.boundary_token_id,
                  "max_block": drafter.max_block, "parameters": n_params,
                  "storage_dtype": p.save_dtype or "float32", "shares_target_embeddings": p.share_embeddings,
                  "draft_vocab": None if vocab_ids is None else len(vocab_ids),
                  "vocab_coverage_of_answers": None if vocab_ids is None else round(distill.coverage(vocab_ids, train_pairs), 4),
                  "base_model_sha256": drafter.meta["base_model_sha256"]},
        "training": {"steps": step, "tokens_seen": step * tokens_per_step, "data_s": round(data_s, 1),
                     "train_s": round(train_s, 1), "wall_s": 0.0,
                     "threads": torch.get_num_threads(),
                     "first_train_loss": round(first_loss, 4) if first_loss is not None else None,
                     "final_train_loss": round(ema, 4) if ema is not None else None, "history": history},
        "eval": {**final, "decoding": decoding, "decode_sweep": sweep,
                 "decode_defaults": drafter.meta.get("decode_defaults")},
    }
    card["files"] = cards.file_entries(out_dir, [WEIGHTS_FILE, CONFIG_FILE])
    card["training"]["wall_s"] = round(time.perf_counter() - wall_start, 1)
    cards.write_card(out_dir, card)
    return card


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leapdec.train deer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="stdlib-ar", help="zoo name or checkpoint folder of the AR target")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--out", help="folder to write (default: <base>/deer)")
    add_budget_arguments(parser)
    args = parser.parse_args(argv)
    card = train_deer(args.base, args.preset, args.out, steps=args.steps, seconds=args.seconds,
                      device=args.device, seed=args.seed, threads=args.threads, progress=not args.no_progress)
    dec = card["eval"]["decoding"]
    print(f"{card['name']}: {card['training']['steps']} steps, held-out expected accepted length "
          f"{card['eval']['expected_accept_length']}, {card['training']['wall_s']:.0f} s")
    print(f"  greedy deer (block {dec['block_size']}): mean accepted {dec['mean_accepted_length']}, "
          f"{dec['deer_tokens_per_s']} tok/s vs AR {dec['ar_tokens_per_s']} ({dec['speedup_vs_ar']}x), "
          f"identical {dec['identical_to_ar']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
