"""ReDiff refining recipe: teach a masked diffusion LM to revise tokens it already wrote.

Examples are the functions of the corpus's train split: prompt = ``<|endoftext|>`` + signature
and docstring, answer = the body + ``<|endoftext|>``, cut or padded with EOS to ``gen_length``
(the layout decoding sees).

* Stage 1 (restore corruptions): each answer is masked at a rate ``t ~ U(eps, 1)``; of the
  visible answer tokens ~5 % are replaced by random tokens (a quarter of them by EOS, the
  premature end typical of few-step decoding); the loss is the cross-entropy of the
  clean token on masked (weighted ``1/t``, the LLaDA SFT loss) and corrupted positions.
* Stage 2 (learn from its own drafts): the stage-1 model drafts answers in few steps
  (``draft_steps``); an expert gives the corrected answer: ``mdm`` (default) = the base model's
  own slow decode (LLaDA, one token per step), the output the few-step decode should reach;
  ``ar`` = the AR model (``--expert-model``, default ``stdlib-ar``) reading prompt + draft
  replaces the draft tokens it finds unlikely (p < 0.05) where it is confident of another
  (p > 0.5), a minimal edit; ``reference`` = the true function body, position by position
  (crude: a draft that drifted differs everywhere). Training input is the draft (masked at
  rate t), the targets the correction; the loss covers masked positions and visible draft
  tokens the expert changed. Half of each stage-2 batch are stage-1 examples, so the model
  keeps its footing on clean text. (Measured on stdlib-mdm: with the ``ar`` expert the targets
  of masked positions are mostly the model's own premature-EOS drafts, and the refined model
  learned to stop at once; ``mdm`` corrects exactly that.)

Writes a full Hugging Face checkpoint folder (config, weights, tokenizer) and its card into
``<model>/rediff/`` (or ``--out``), where ``generate(method="rediff")`` finds it; the card also
compares few-step decoding with and without refinement on held-out prompts.

    python -m leapdec.train rediff --model stdlib-mdm [--preset default|tiny] [--out DIR]
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

from leapdec.decoding.llada import DiffusionDecoder, DiffusionSettings
from leapdec.decoding.rediff import COMPANION
from leapdec.paths import writable_dir
from leapdec.train import cards, corpus
from leapdec.train import tokenizer as tokenizers_

EXPERTS = ("mdm", "ar", "reference")
EOS_SHARE = 0.25        # share of stage-1 corruptions that write EOS instead of a random token


@dataclasses.dataclass(frozen=True)
class Preset:
    gen_length: int
    block_length: int
    batch_size: int
    stage1_steps: int
    stage2_steps: int
    draft_prompts: int              # prompts drafted for stage 2
    draft_steps: int                # decoding steps of a draft (few: parallel, error-prone)
    lr: float = 2e-4
    warmup: int = 10
    corrupt_rate: float = 0.05
    mask_eps: float = 1e-3
    max_prompt_tokens: int = 128
    corpus_max_bytes: int | None = None
    expert: str = "mdm"
    eval_prompts: int = 8           # held-out prompts of the card's evaluation (0: none)
    eval_steps: int = 16            # the "few steps" of the evaluation
    quick_windows: int = 8          # held-out windows of the ELBO check (lm's quick subset)
    quick_seq_len: int = 256
    seconds: float = 240.0          # wall-clock cap on the two training stages (drafting aside)


PRESETS = {
    "tiny": Preset(gen_length=16, block_length=8, batch_size=4, stage1_steps=4, stage2_steps=4,
                   draft_prompts=4, draft_steps=4, lr=1e-3, warmup=1, max_prompt_tokens=48,
                   corpus_max_bytes=300_000, eval_prompts=2, eval_steps=4,
                   quick_windows=2, quick_seq_len=64, seconds=60.0),
    "default": Preset(gen_length=128, block_length=32, batch_size=8, stage1_steps=200, stage2_steps=400,
                      draft_prompts=128, draft_steps=16, lr=2e-4),
}


# ----------------------------------------------------------------------------- data

def answer_examples(tok, texts, gen_length: int, max_prompt_tokens: int) -> list[tuple[list[int], list[int]]]:
    """(prompt, answer[gen_length]) pairs from the functions of ``texts``."""
    eos = tokenizers_.special_token_ids(tok)["eos"]
    funcs = [f for text in texts for f in corpus.function_prompts(text)]
    prompts = tok.encode_batch([f.prompt for f in funcs], add_special_tokens=False)
    bodies = tok.encode_batch([f.reference for f in funcs], add_special_tokens=False)
    out = []
    for p, a in zip(prompts, bodies):
        prompt = [eos] + p.ids
        if len(prompt) > max_prompt_tokens:
            continue
        answer = (a.ids + [eos])[:gen_length]
        out.append((prompt, answer + [eos] * (gen_length - len(answer))))
    return out


def pack(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded ``tokens [R, T]``, ``attention [R, T]`` (bool) and ``answer [R, T]`` (bool:
    the answer positions) of (prompt, answer) rows."""
    width = max(len(p) + len(a) for p, a in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.bool)
    answer = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (p, a) in enumerate(rows):
        tokens[i, :len(p) + len(a)] = torch.tensor(p + a)
        attention[i, :len(p) + len(a)] = True
        answer[i, len(p):len(p) + len(a)] = True
    return tokens, attention, answer


def refine_loss(model, inputs, targets, attention, answer, masked, revised, t) -> torch.Tensor:
    """Cross-entropy of ``targets`` at ``masked`` positions of ``inputs`` (weighted ``1/t``) and
    at ``revised`` visible positions (weight 1), each row normalised by its ``answer`` length."""
    x = torch.where(masked, torch.full_like(inputs, model.config.mask_token_id), inputs)
    h = model.hidden(x, attention_mask=attention)
    sel = masked | revised
    ce = F.cross_entropy(model.lm_head(h[sel]).float(), targets[sel], reduction="none")
    weight = torch.where(masked, 1.0 / t[:, None], torch.ones_like(t)[:, None])
    weight = weight / answer.sum(1, keepdim=True).clamp(min=1)
    return (ce * weight[sel]).sum() / inputs.shape[0]


def stage1_batch(rows, pad_id: int, vocab: int, special: int, corrupt_rate: float, eps: float,
                 gen: torch.Generator):
    """Inputs with masked and corrupted answer positions (random tokens, or EOS = ``pad_id``);
    returns (inputs, targets, attention, answer, masked, corrupted, t)."""
    tokens, attention, answer = pack(rows, pad_id)
    b, T = tokens.shape
    t = eps + (1 - eps) * torch.rand(b, generator=gen)
    masked = (torch.rand(b, T, generator=gen) < t[:, None]) & answer
    corrupted = (torch.rand(b, T, generator=gen) < corrupt_rate) & answer & ~masked
    noise = torch.randint(special, vocab, (b, T), generator=gen)
    # a quarter of the corruptions are a premature EOS (the typical few-step error)
    noise = torch.where(torch.rand(b, T, generator=gen) < EOS_SHARE, torch.full_like(noise, pad_id), noise)
    inputs = torch.where(corrupted, noise, tokens)
    corrupted &= inputs != tokens
    return inputs, tokens, attention, answer, masked, corrupted, t


def _corrupt(answers: list[list[int]], vocab: int, special: int, rate: float, eos: int,
             gen: torch.Generator):
    """Each answer with a ``rate`` share of its tokens corrupted as in stage 1 (random
    non-special tokens, a quarter of them ``eos``)."""
    out = []
    for a in answers:
        t = torch.tensor(a)
        hit = torch.rand(len(a), generator=gen) < rate
        noise = torch.randint(special, vocab, (len(a),), generator=gen)
        noise = torch.where(torch.rand(len(a), generator=gen) < EOS_SHARE, torch.full_like(noise, eos), noise)
        out.append(torch.where(hit, noise, t).tolist())
    return out


def stage2_batch(pairs, pad_id: int, eps: float, gen: torch.Generator):
    """Drafts (masked at rate t) against the expert's corrections; returns (inputs, targets,
    attention, answer, masked, revised, t)."""
    drafts, _, _ = pack([(p, d) for p, d, _ in pairs], pad_id)
    targets, attention, answer = pack([(p, c) for p, _, c in pairs], pad_id)
    b, T = drafts.shape
    t = eps + (1 - eps) * torch.rand(b, generator=gen)
    masked = (torch.rand(b, T, generator=gen) < t[:, None]) & answer
    revised = answer & ~masked & (drafts != targets)
    return drafts, targets, attention, answer, masked, revised, t


# ----------------------------------------------------------------------------- drafts and experts

@torch.no_grad()
def diffusion_answers(model, prompts, gen_length: int, block_length: int, steps: int,
                      batch_size: int = 8, **options) -> list[list[int]]:
    """Whole ``gen_length`` answers (EOS tail kept) of greedy LLaDA decoding."""
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        settings = DiffusionSettings(model, gen_length, gen_length, block_length, steps, early_exit=False,
                                     **options)
        dec = DiffusionDecoder(model, batch, settings, set())
        dec.run()
        out += dec.answer.tolist()
    return out


@torch.no_grad()
def ar_corrections(ar_model, prompts, drafts, eos: int, confident: float = 0.5,
                   doubt: float = 0.05) -> list[list[int]]:
    """The AR expert's minimal corrections of ``drafts``: reading prompt + draft once
    (teacher-forced), it replaces a draft token that it finds unlikely (p < ``doubt``) where it
    is confident of another (p > ``confident``); a premature first EOS is corrected too, the
    padding after it is kept."""
    out = []
    for prompt, draft in zip(prompts, drafts):
        ids = torch.tensor([prompt + draft], device=ar_model.device)
        probs = ar_model(ids)[0, len(prompt) - 1:-1].float().softmax(-1)
        p_best, best = probs.max(-1)
        p_draft = probs.gather(-1, ids[0, len(prompt):, None])[:, 0]
        fix = (p_best > confident) & (p_draft < doubt)
        end = draft.index(eos) if eos in draft else len(draft)
        fix[end + 1:] = False
        out.append(torch.where(fix, best, ids[0, len(prompt):]).tolist())
    return out


@torch.no_grad()
def ar_nll(ar_model, prompts, outputs, eos: int) -> float:
    """Mean negative log-likelihood (nats per token) of each output followed by EOS under the AR
    model, over all rows' tokens."""
    total, count = 0.0, 0
    for prompt, out in zip(prompts, outputs):
        ids = torch.tensor([prompt + out + [eos]], device=ar_model.device)
        logits = ar_model(ids)[0, len(prompt) - 1:-1].float()
        total += F.cross_entropy(logits, ids[0, len(prompt):], reduction="sum").item()
        count += len(out) + 1
    return total / max(1, count)


# ----------------------------------------------------------------------------- evaluation

def evaluate_refinement(base, refined, prompts, gen_length: int, block_length: int, steps: int,
                        ar_model=None) -> dict:
    """Few-step decoding of held-out ``prompts``: the base model (``llada``) against the refined
    model with revision (``rediff``) and without, all at ``steps``; each compared with the base
    model's many-step output (steps == gen_length): rows identical, positions agreeing and, with
    ``ar_model``, the outputs' NLL under the AR model."""
    import leapdec
    from leapdec.evaluate import token_agreement

    eos = base.config.stop_token_ids[0]
    kw = dict(max_new_tokens=gen_length, block_length=block_length)
    runs = {"baseline_many_steps": leapdec.generate(base, prompts, method="llada", **kw),
            "llada_few_steps": leapdec.generate(base, prompts, method="llada", steps=steps, **kw),
            "refined_no_revise": leapdec.generate(base, prompts, method="rediff", refined=refined,
                                                  revise=False, steps=steps, **kw),
            "rediff_few_steps": leapdec.generate(base, prompts, method="rediff", refined=refined,
                                                 steps=steps, **kw)}
    ref = runs["baseline_many_steps"].tokens
    out = {"prompts": len(prompts), "gen_length": gen_length, "block_length": block_length, "steps": steps}
    for name, run in runs.items():
        row = {"model_calls": run.stats["model_calls"],
               "exact_match": round(sum(a == b for a, b in zip(run.tokens, ref)) / len(ref), 4),
               "token_agreement": round(token_agreement(run.tokens, ref), 4),
               "mean_length": round(sum(map(len, run.tokens)) / len(ref), 1)}
        if "revisions" in run.stats and name == "rediff_few_steps":
            row["revisions"] = run.stats["revisions"]
        if ar_model is not None:
            row["ar_nll"] = round(ar_nll(ar_model, prompts, run.tokens, eos), 4)
        out[name] = row
    return out


# ----------------------------------------------------------------------------- recipe

def _lr(p: Preset, step: int) -> float:
    return p.lr * min(1.0, (step + 1) / p.warmup)


def _train_stage(model, opt, p: Preset, steps: int, make_batch, deadline: float, history: list,
                 stage: int, offset: int) -> int:
    model.train()
    ema = None
    done = 0
    for step in range(steps):
        if time.perf_counter() >= deadline:
            break
        for group in opt.param_groups:
            group["lr"] = _lr(p, offset + step)
        loss = refine_loss(model, *make_batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"stage {stage} diverged at step {step} (loss {value})")
        ema = value if ema is None else 0.9 * ema + 0.1 * value
        done += 1
    history.append({"stage": stage, "steps": done, "train_loss": round(ema, 4) if ema is not None else None})
    model.eval()
    return done


def command_line(model, preset, out, seed, threads, expert, expert_model) -> str:
    args = ["python", "-m", "leapdec.train", "rediff", "--model", str(model), "--preset", preset]
    if out is not None:
        args += ["--out", str(out)]
    args += ["--seed", str(seed)]
    if expert is not None:
        args += ["--expert", expert]
    args += ["--expert-model", "none" if expert_model is None else str(expert_model)]
    if threads is not None:
        args += ["--threads", str(threads)]
    return shlex.join(args)


def train_rediff(model_path="stdlib-mdm", out_dir=None, preset: str = "default", seed: int = 0,
                 expert: str | None = None, expert_model="stdlib-ar", threads: int | None = None,
                 progress: bool = True) -> dict:
    """Refine the masked diffusion LM at ``model_path`` (stage 1 then stage 2) and write the
    refined checkpoint and its card into ``out_dir`` (default ``<model>/rediff``); returns the card."""
    from leapdec.models import load_checkpoint, save_checkpoint
    from leapdec.zoo import resolve

    wall_start = time.perf_counter()
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    p = PRESETS[preset]
    expert = expert or p.expert
    if expert not in EXPERTS:
        raise ValueError(f"expert must be one of {EXPERTS}, got {expert!r}")
    if threads is not None:
        if threads <= 0:
            raise ValueError(f"threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    base_dir = resolve(model_path)
    command = command_line(model_path, preset, out_dir, seed, threads, expert, expert_model)
    out_dir = Path(out_dir) if out_dir is not None else base_dir / COMPANION
    writable_dir(out_dir, create=False)   # an unwritable --out fails now, not after training
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)

    base = load_checkpoint(base_dir, dtype=torch.float32).eval()
    if base.config.mask_token_id is None:
        raise ValueError(f"model_path: {base_dir} is not a masked diffusion LM (config has no mask_token_id)")
    model = load_checkpoint(base_dir, dtype=torch.float32)
    tok = tokenizers_.load_tokenizer(base_dir)
    ids = tokenizers_.special_token_ids(tok)
    eos, vocab, special = ids["eos"], base.config.vocab_size, len(tokenizers_.SPECIAL_TOKENS)
    ar_model = None      # the expert, and the judge of the evaluation (when it shares the vocabulary)
    if expert_model is not None and (expert == "ar" or p.eval_prompts):
        try:
            ar_model = load_checkpoint(resolve(expert_model), dtype=torch.float32).eval()
        except FileNotFoundError:
            if expert == "ar":
                raise
        if ar_model is not None and ar_model.config.vocab_size != vocab:
            if expert == "ar":
                raise ValueError(f"expert_model: vocabulary {ar_model.config.vocab_size} differs from {vocab}")
            ar_model = None
    if expert == "ar" and ar_model is None:
        raise ValueError("expert 'ar' needs expert_model (an AR checkpoint with the same tokenizer)")

    from leapdec.train import lm

    quick_files = lm.quick_heldout_files(tok, p.quick_seq_len, p.quick_windows, "mdm")
    quick_stream = lm.encode_files(tok, quick_files)

    def quick_loss(m) -> float:
        """The LLaDA ELBO on lm's quick held-out subset (what the base model's card reports)."""
        return round(lm.heldout_loss(m, quick_stream, "mdm", p.quick_seq_len, p.quick_windows,
                                     eps=p.mask_eps)[0], 4)

    texts = corpus.read_corpus("train", max_bytes=p.corpus_max_bytes)
    examples = answer_examples(tok, texts, p.gen_length, p.max_prompt_tokens)
    if len(examples) < p.batch_size:
        raise ValueError(f"the corpus slice holds {len(examples)} usable functions, fewer than a batch")
    decay = [q for q in model.parameters() if q.dim() >= 2]
    rest = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=p.lr, betas=(0.9, 0.95))
    train_start = time.perf_counter()
    deadline = train_start + p.seconds
    history: list[dict] = []

    # --- stage 1: restore corrupted tokens
    def batch1():
        rows = [examples[rng.randrange(len(examples))] for _ in range(p.batch_size)]
        return stage1_batch(rows, eos, vocab, special, p.corrupt_rate, p.mask_eps, gen)

    share = p.stage1_steps / max(1, p.stage1_steps + p.stage2_steps)   # stage 1's part of the time cap
    s1 = _train_stage(model, opt, p, p.stage1_steps, batch1, train_start + share * p.seconds, history, 1, 0)
    history[-1]["heldout_loss"] = quick_loss(model)

    # --- stage 2: drafts and expert corrections
    draft_start = time.perf_counter()
    chosen = rng.sample(examples, min(p.draft_prompts, len(examples)))
    prompts = [e[0] for e in chosen]
    drafts = diffusion_answers(model, prompts, p.gen_length, p.block_length, p.draft_steps, p.batch_size)
    if expert == "mdm":
        corrections = diffusion_answers(base, prompts, p.gen_length, p.block_length, p.gen_length, p.batch_size)
    elif expert == "ar":
        corrections = ar_corrections(ar_model, prompts, drafts, eos)
    else:
        corrections = [e[1] for e in chosen]
    pairs = list(zip(prompts, drafts, corrections))
    changed = sum(int(d != c) for _, dr, cr in pairs for d, c in zip(dr, cr))
    draft_s = time.perf_counter() - draft_start

    def batch2():
        half = p.batch_size // 2
        rows = [pairs[rng.randrange(len(pairs))] for _ in range(p.batch_size - half)]
        # stage-1 examples as (prompt, corrupted answer, clean answer) triples
        clean = [examples[rng.randrange(len(examples))] for _ in range(half)]
        for (prompt, answer), corrupted in zip(clean, _corrupt([a for _, a in clean], vocab, special,
                                                               p.corrupt_rate, eos, gen)):
            rows.append((prompt, corrupted, answer))
        return stage2_batch(rows, eos, p.mask_eps, gen)

    s2 = _train_stage(model, opt, p, p.stage2_steps, batch2, deadline + draft_s, history, 2, s1)
    history[-1]["heldout_loss"] = quick_loss(model)
    train_s = time.perf_counter() - train_start

    # --- save: float32 when it fits a 16 MB file, else bfloat16
    n_params = sum(q.numel() for q in model.parameters())
    store = torch.float32 if 4 * n_params <= 16_000_000 else torch.bfloat16
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.to("cpu", store), out_dir)
    tokenizers_.save_tokenizer(tok, out_dir)
    refined = load_checkpoint(out_dir, dtype=torch.float32).eval()

    quick = {"refined": quick_loss(refined), "base": quick_loss(base)}
    evaluation = {}
    if p.eval_prompts:
        held = corpus.eval_prompts(p.eval_prompts, seed=seed, max_prompt_chars=600)
        eval_ids = [[eos] + tok.encode(e.prompt, add_special_tokens=False).ids for e in held]
        evaluation = evaluate_refinement(base, refined, eval_ids, p.gen_length, p.block_length,
                                         p.eval_steps, ar_model)
        evaluation["sources"] = [f"{e.path}:{e.name}" for e in held]

    card = {
        "name": out_dir.name,
        "card_version": cards.CARD_VERSION,
        "summary": (f"ReDiff-refined {base_dir.name}: fine-tuned to restore corrupted tokens (stage 1) "
                    f"and to revise its own few-step drafts into the {expert!r} expert's corrections "
                    f"(stage 2), by leapdec.train.rediff (preset {preset!r}). Decode with "
                    f"generate(model, method='rediff')."),
        "method": "rediff",
        "command": command,
        "date": cards.now_iso(),
        "machine": cards.machine_info("cpu"),
        "recipe": {**dataclasses.asdict(p), "preset": preset, "seed": seed, "expert": expert,
                   "expert_model": str(expert_model) if expert == "ar" else None,
                   "optimizer": "AdamW(betas=(0.9, 0.95), weight_decay=0.01 on matrices)",
                   "schedule": "linear warmup, then constant"},
        "corpus": {**corpus.corpus_info().to_dict(), "split": "train", "examples": len(examples),
                   "draft_prompts": len(pairs), "draft_tokens_changed_by_expert": changed,
                   "draft_tokens": len(pairs) * p.gen_length},
        "model": {"architecture": base.config.architecture, "parameters": n_params, "causal": False,
                  "mask_token_id": base.config.mask_token_id,
                  "storage_dtype": str(store).replace("torch.", ""), "base_model": base_dir.name,
                  "base_model_sha256": (cards.file_sha256(base_dir / "model.safetensors")
                                        if (base_dir / "model.safetensors").is_file() else None),
                  "tokenizer_sha256": tokenizers_.tokenizer_hash(tok)},
        "training": {"steps": s1 + s2, "stage1_steps": s1, "stage2_steps": s2,
                     "tokens_seen": (s1 + s2) * p.batch_size * p.gen_length,
                     "train_s": round(train_s, 1), "draft_s": round(draft_s, 1), "wall_s": 0.0,
                     "stages": history},
        "eval": {"heldout_loss": quick["refined"], "base_heldout_loss": quick["base"],
                 "loss_kind": (f"LLaDA ELBO bound, nats/token, on lm's quick held-out subset "
                               f"({p.quick_windows} windows of {p.quick_seq_len} tokens)"),
                 "quick_files": [f.relative_to(corpus.stdlib_root()).as_posix() for f in quick_files],
                 **evaluation,
                 "note": "few-step decoding of held-out prompts vs the base model's many-step output; "
                         "ar_nll = NLL of output + EOS under the AR model, nats/token"},
    }
    names = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json"]
    card["files"] = cards.file_entries(out_dir, names)
    card["training"]["wall_s"] = round(time.perf_counter() - wall_start, 1)
    cards.write_card(out_dir, card)
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leapdec.train rediff", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="stdlib-mdm", help="masked diffusion LM: zoo name or checkpoint folder")
    parser.add_argument("--out", help="output folder (default <model>/rediff)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--expert", choices=EXPERTS, help="stage-2 corrections (default: the preset's, mdm)")
    parser.add_argument("--expert-model", default="stdlib-ar",
                        help="the AR expert and evaluation judge (zoo name or folder; 'none' for neither)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    expert_model = None if args.expert_model == "none" else args.expert_model
    card = train_rediff(args.model, args.out, args.preset, args.seed, args.expert, expert_model,
                        args.threads, not args.no_progress)
    tr = card["training"]
    print(f"rediff: {tr['stage1_steps']} + {tr['stage2_steps']} steps, {tr['wall_s']:.0f} s; "
          f"eval: {card['eval']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
