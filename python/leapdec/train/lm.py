"""Base language models of the zoo: one recipe, two objectives.

* ``ar``: a causal Llama-shaped ``Transformer`` trained with shifted next-token cross-entropy.
* ``mdm``: a LLaDA-style masked diffusion LM (``causal=False``). Each sequence draws
  ``t ~ U(eps, 1)``, each token is replaced by ``<|mask|>`` with probability ``t``, and the loss is
  the cross-entropy on masked positions weighted ``1/t`` (the LLaDA ELBO), normalised by the
  number of maskable positions. A share of the sequences is trained SFT-style: a function's
  signature and docstring (never masked) followed by its body, padded with ``<|endoftext|>`` to the
  window, so the model learns to fill unused slots with EOS. It can start from an AR checkpoint
  (``init_from``).

AdamW, linear warmup then cosine decay (over the step budget or the wall-clock budget, whichever
ends first), bf16 autocast on GPU, periodic held-out loss. Writes a Hugging Face checkpoint
directory (``config.json``, ``model.safetensors``, ``tokenizer.json``) and its card.

    python -m leapdec.train lm --objective ar --preset default --out DIR [--seconds N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from leapdec.models import ModelConfig, Transformer, load_checkpoint, save_checkpoint
from leapdec.paths import writable_dir
from leapdec.train import cards, corpus
from leapdec.train.budget import Budget, add_budget_arguments, check_budget, cosine_lr
from leapdec.train import tokenizer as tokenizers_

OBJECTIVES = ("ar", "mdm")
MAX_FILE_BYTES = 16_000_000   # zoo checkpoints ship inside the wheel: float32 only when it fits


@dataclasses.dataclass(frozen=True)
class Preset:
    """Model shape, data slice and optimisation settings of one recipe size."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    seq_len: int
    batch_size: int
    lr: float
    steps: int                      # default step budget when neither steps nor seconds is given
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    corpus_max_bytes: int | None = None   # UTF-8 bytes of the train split (None = all)
    tokenizer_preset: str = "default"
    eval_every: int = 100           # steps between quick held-out evaluations
    eval_max_windows: int | None = None   # cap on windows of the final held-out evaluation
    quick_windows: int = 8          # windows of the quick held-out subset (also checked by tests)
    sft_share: float = 0.5          # mdm: share of sequences trained prompt + EOS-padded answer
    mask_eps: float = 1e-3          # mdm: t ~ U(eps, 1)
    random_length_share: float = 0.0  # mdm: share of steps whose batch is cut to a random length
                                      # in [seq_len // 4, seq_len] (LLaDA trains on random lengths
                                      # too), so that the EOS padding of an SFT row does not pin
                                      # the answer to one total length
    distill_base: str | None = None   # mdm: sequence-level distillation (issue 10 item 8): this
    distill_answers: int = 0          # chat model's answers to that many short function requests
    distill_share: float = 0.0        # of the train split (distill.function_bodies) make this
                                      # share of the SFT rows; the rest stay the corpus' functions


PRESETS = {
    # seconds on a CPU: used by the tests
    "tiny": Preset(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=64, seq_len=128,
                   batch_size=8, lr=3e-3, steps=100, warmup=10, corpus_max_bytes=300_000,
                   tokenizer_preset="tiny", eval_every=25, eval_max_windows=32, quick_windows=4),
    # ~1.3M parameters
    "small": Preset(vocab_size=4096, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=64, seq_len=256,
                    batch_size=8, lr=3e-3, steps=4000),
    # ~2.4M parameters: the zoo's stdlib-ar (and the first stdlib-mdm), sized to train in minutes on a
    # shared 2-core CPU (GQA 3:1, head_dim 64)
    "default": Preset(vocab_size=4096, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=3, num_key_value_heads=1, head_dim=64, seq_len=256,
                      batch_size=8, lr=3e-3, steps=4000),
    # the default shape with a 512-token window, long enough for LLaDA / Learn2PD decoding at
    # gen_length 256 after a prompt of up to 256 tokens: the zoo's stdlib-mdm is "long" from
    # stdlib-ar, then "long-sft" from that (~0.3 s/step on an idle 2-core CPU)
    "long": Preset(vocab_size=4096, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=3, num_key_value_heads=1, head_dim=64, seq_len=512,
                   batch_size=4, lr=3e-3, steps=2400, random_length_share=0.5),
    # LLaDA's SFT stage on top of "long" (--init-from it): prompt + EOS-padded answer rows only
    "long-sft": Preset(vocab_size=4096, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                       num_attention_heads=3, num_key_value_heads=1, head_dim=64, seq_len=512,
                       batch_size=4, lr=1e-3, steps=600, warmup=20, random_length_share=1.0,
                       sft_share=1.0),
    # LLaDA's SFT stage with sequence-level distillation (--init-from stdlib-mdm): per batch of 8,
    # 4 rows of SmolLM2's bodies for short function requests (signature + one-line docstring),
    # 2 of the corpus' own functions and 2 plain corpus windows, so the model answers the short
    # prompts a user writes and stays a model of the corpus (~0.45 s/step on an idle 2-core CPU)
    "long-distill": Preset(vocab_size=4096, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                           num_attention_heads=3, num_key_value_heads=1, head_dim=64, seq_len=512,
                           batch_size=8, lr=1e-3, steps=1200, warmup=20, random_length_share=1.0,
                           sft_share=0.75, distill_base="smollm2-135m-instruct",
                           distill_answers=1200, distill_share=0.67),
    # ~4M parameters: for a GPU or an idle CPU
    "large": Preset(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64, seq_len=256,
                    batch_size=16, lr=2e-3, steps=4000),
}

HELDOUT_RULE = (f"files whose SHA-1(relative path) falls in the lowest "
                f"{corpus.HELDOUT_FRACTION:.0%} (corpus.split_of); test folders, site-packages and "
                f"_sysconfigdata excluded")


# ----------------------------------------------------------------------------- model

def model_config(preset: Preset, tok, objective: str) -> ModelConfig:
    """The ``ModelConfig`` of a preset for ``tok``'s special tokens."""
    ids = tokenizers_.special_token_ids(tok)
    return ModelConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size, num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads, head_dim=preset.head_dim,
        max_position_embeddings=4 * preset.seq_len, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=ids["eos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
        causal=objective == "ar", mask_token_id=ids["mask"] if objective == "mdm" else None)


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (a tied LM head counts once)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- data

def encode_files(tok, paths) -> torch.Tensor:
    """A token stream of ``paths`` laid out like ``corpus.encode_corpus``: each file preceded
    by ``<|endoftext|>``."""
    eos = tokenizers_.special_token_ids(tok)["eos"]
    ids: list[int] = []
    for path in paths:
        ids.append(eos)
        ids += tok.encode(Path(path).read_bytes().decode("utf-8"), add_special_tokens=False).ids
    return torch.tensor(ids, dtype=torch.long)


def quick_heldout_files(tok, seq_len: int, windows: int, objective: str) -> list[Path]:
    """The first held-out files (by relative path) whose stream covers ``windows`` windows:
    a cheap, fixed held-out subset that tests can re-evaluate."""
    root = corpus.stdlib_root()
    need = windows * seq_len + (1 if objective == "ar" else 0)
    chosen, total = [], 0
    for path in sorted(corpus.corpus_files("heldout"), key=lambda p: p.relative_to(root).as_posix()):
        try:
            text = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        chosen.append(path)
        total += 1 + len(tok.encode(text, add_special_tokens=False).ids)
        if total >= need:
            return chosen
    raise ValueError(f"windows: the held-out split has {total} tokens, fewer than {need}")


def sft_pairs(tok, texts: list[str], seq_len: int) -> list[tuple[list[int], list[int]]]:
    """(prompt, answer) token lists from the functions of ``texts``: the prompt is
    ``<|endoftext|>`` + signature + docstring (encoded alone, as at inference), the answer the
    body + ``<|endoftext|>``, cut to the window. Prompts longer than half the window are dropped."""
    eos = tokenizers_.special_token_ids(tok)["eos"]
    funcs = [f for text in texts for f in corpus.function_prompts(text)]
    if not funcs:
        return []
    prompts = tok.encode_batch([f.prompt for f in funcs], add_special_tokens=False)
    answers = tok.encode_batch([f.reference for f in funcs], add_special_tokens=False)
    pairs = []
    for p, a in zip(prompts, answers):
        prompt = [eos] + p.ids
        if len(prompt) > seq_len // 2:
            continue
        pairs.append((prompt, (a.ids + [eos])[:seq_len - len(prompt)]))
    return pairs


def distilled_pairs(tok, preset: Preset, seed: int) -> tuple[list, dict]:
    """Sequence-level distillation rows (issue 10 item 8): the ``distill_base`` chat model's
    answers to ``distill_answers`` short function requests of the train split, cut to their
    function bodies (``distill.function_bodies``), as text re-tokenized with ``tok``: prompt
    ``<|endoftext|>`` + request, answer body + ``<|endoftext|>``, each twice: the prompt ending
    in the body's indentation and ending at the docstring's newline; and what the card records."""
    from leapdec.train import distill

    start = time.perf_counter()
    bodies = distill.function_bodies(preset.distill_base, preset.distill_answers, "train", seed=seed)
    eos = tokenizers_.special_token_ids(tok)["eos"]
    pairs = []
    for prompt, body in bodies:
        # as laid out by the corpus (the prompt ends in the body's indentation), and as a user
        # often types it (the prompt ends at the docstring's newline, the answer indents itself)
        for text, answer in ((prompt, body), distill.at_docstring_end(prompt, body)):
            p = [eos] + tok.encode(text, add_special_tokens=False).ids
            a = tok.encode(answer, add_special_tokens=False).ids + [eos]
            if len(p) + len(a) <= preset.seq_len:
                pairs.append((p, a))
    if not pairs:
        raise ValueError(f"preset: {preset.distill_base}'s answers gave no function bodies to distill")
    info = {"base": preset.distill_base, "requests": preset.distill_answers, "bodies": len(bodies),
            "pairs": len(pairs),
            "answer_tokens": sum(len(a) for _, a in pairs), "split": "train",
            "rule": "distill.function_bodies: the body of the answer's function of the requested "
                    "name, from a closed code block, parsed, not only pass, no line repeated > 3 times; "
                    "each body twice: prompt ending in its indentation / at the docstring's newline",
            "seconds": round(time.perf_counter() - start, 1)}
    return pairs, info


def sft_batch(pairs, rows, seq_len: int, eos: int):
    """``tokens [R, seq_len]`` (prompt, answer, EOS padding) and ``prompt_len [R]``."""
    tokens = torch.full((len(rows), seq_len), eos, dtype=torch.long)
    prompt_len = torch.empty(len(rows), dtype=torch.long)
    for i, r in enumerate(rows.tolist() if isinstance(rows, torch.Tensor) else rows):
        prompt, answer = pairs[r]
        seq = prompt + answer
        tokens[i, :len(seq)] = torch.tensor(seq)
        prompt_len[i] = len(prompt)
    return tokens, prompt_len


# ----------------------------------------------------------------------------- losses

def ar_loss(model, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``windows [B, T+1]``."""
    logits = model(windows[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


def mdm_loss(model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             maskable: torch.Tensor, mask_id: int) -> torch.Tensor:
    """LLaDA's masked-diffusion loss of ``x0 [B, T]``.

    Position j of row b is masked when ``noise[b, j] < t[b]`` and ``maskable[b, j]``; the loss is
    ``mean_b sum_{masked j} CE(b, j) / t[b] / n_maskable[b]``: for pretraining rows (all
    maskable) an upper bound on the per-token NLL, for SFT rows the LLaDA SFT loss over the
    answer."""
    masked = (noise < t[:, None]) & maskable
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    h = model.hidden(xt)
    logits = model.lm_head(h[masked])                       # only masked positions pay for the head
    ce = F.cross_entropy(logits.float(), x0[masked], reduction="none")
    weight = 1.0 / (t[:, None] * maskable.sum(1, keepdim=True).clamp(min=1)).expand_as(x0)[masked]
    return (ce * weight).sum() / x0.shape[0]


@torch.no_grad()
def heldout_loss(model, stream: torch.Tensor, objective: str, seq_len: int,
                 max_windows: int | None = None, batch_size: int = 16, eps: float = 1e-3,
                 seed: int = 0) -> tuple[float, int]:
    """Held-out loss over consecutive non-overlapping windows of ``stream``; returns
    (loss in nats per token, tokens scored). Deterministic for a given model.

    ``ar``: mean next-token cross-entropy. ``mdm``: the LLaDA ELBO bound per token, window i
    masked at the stratified level ``t_i = eps + (1 - eps)(i + 1/2)/n`` with seeded noise."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    span = seq_len + (1 if objective == "ar" else 0)
    n = (stream.numel() - span) // seq_len + 1 if stream.numel() >= span else 0
    if max_windows is not None:
        n = min(n, max_windows)
    if n <= 0:
        raise ValueError(f"stream: {stream.numel()} tokens is too short for seq_len {seq_len}")
    was_training = model.training
    model.eval()
    device = model.device
    windows = torch.stack([stream[i * seq_len:i * seq_len + span] for i in range(n)]).long()
    total, count = 0.0, 0
    if objective == "mdm":
        mask_id = model.config.mask_token_id
        if mask_id is None:
            raise ValueError("model: an mdm evaluation needs config.mask_token_id")
        g = torch.Generator().manual_seed(seed)
        noise = torch.rand(n, seq_len, generator=g)
        t = eps + (1 - eps) * (torch.arange(n, dtype=torch.float32) + 0.5) / n
    with _autocast(device):
        for s in range(0, n, batch_size):
            x = windows[s:s + batch_size].to(device)
            if objective == "ar":
                logits = model(x[:, :-1]).float()
                ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                     reduction="sum")
                total += ce.item()
            else:
                b = x.shape[0]
                loss = mdm_loss(model, x, t[s:s + b].to(device), noise[s:s + b].to(device),
                                torch.ones_like(x, dtype=torch.bool), mask_id)
                total += loss.item() * b * seq_len
            count += x.shape[0] * seq_len
    model.train(was_training)
    return total / count, count


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


# ----------------------------------------------------------------------------- samples

@torch.no_grad()
def greedy_sample(model, prompt: list[int], new_tokens: int, eos: int) -> list[int]:
    """A short greedy completion for the card: next-token argmax for an AR model; for a masked
    diffusion LM, ``new_tokens`` masks filled one per step, most confident first (LLaDA
    low-confidence remasking), then cut at the first EOS."""
    device = model.device
    if model.config.causal:
        ids = list(prompt)
        for _ in range(new_tokens):
            nxt = int(model(torch.tensor([ids], device=device))[0, -1].argmax())
            if nxt == eos:
                break
            ids.append(nxt)
        return ids[len(prompt):]
    mask_id = model.config.mask_token_id
    x = torch.tensor([list(prompt) + [mask_id] * new_tokens], device=device)
    for _ in range(new_tokens):
        masked = x[0] == mask_id
        probs = model(x)[0].float().softmax(-1)
        conf, top = probs.max(-1)
        conf = torch.where(masked, conf, torch.full_like(conf, -1.0))
        j = int(conf.argmax())
        x[0, j] = top[j]
    out = x[0, len(prompt):].tolist()
    return out[:out.index(eos)] if eos in out else out


# ----------------------------------------------------------------------------- recipe

def _optimizer(model, preset: Preset, device: torch.device):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": preset.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=preset.lr, betas=(0.9, 0.95), eps=1e-8,
                             fused=device.type == "cuda")


def command_line(objective, preset, out_dir, steps, seconds, device, seed, tokenizer_dir,
                 init_from, threads) -> str:
    """The ``python -m leapdec.train lm ...`` command that reproduces a call."""
    args = ["python", "-m", "leapdec.train", "lm", "--objective", objective, "--preset", preset,
            "--out", str(out_dir)]
    if steps is not None:
        args += ["--steps", str(steps)]
    if seconds is not None:
        args += ["--seconds", f"{seconds:g}"]
    args += ["--device", str(device), "--seed", str(seed)]
    if tokenizer_dir is not None:
        args += ["--tokenizer-dir", str(tokenizer_dir)]
    if init_from is not None:
        args += ["--init-from", str(init_from)]
    if threads is not None:
        args += ["--threads", str(threads)]
    return shlex.join(args)


def _tokenizer_for(preset: Preset, tokenizer_dir, init_from):
    """(tokenizer, where it came from): a given folder, the ``init_from`` checkpoint's, or a
    fresh one trained by the tokenizer recipe's preset."""
    source = tokenizer_dir if tokenizer_dir is not None else init_from
    if source is not None:
        return tokenizers_.load_tokenizer(source), str(source)
    cfg = tokenizers_.PRESETS[preset.tokenizer_preset]
    if cfg["vocab_size"] != preset.vocab_size:
        cfg = dict(cfg, vocab_size=preset.vocab_size)
    return tokenizers_.train_tokenizer(**cfg), f"trained (tokenizer preset {preset.tokenizer_preset!r}: {cfg})"


def train_lm(objective: str = "ar", preset: str = "default", out_dir="stdlib-ar",
             steps: int | None = None, seconds: float | None = None, device="cpu", seed: int = 0,
             tokenizer_dir=None, init_from=None, threads: int | None = None,
             progress: bool = True) -> dict:
    """Train a base LM and write its checkpoint and card into ``out_dir``; returns the card.

    Training stops after ``steps`` optimizer steps or ``seconds`` of wall-clock training,
    whichever comes first (the preset's step budget when neither is given); the cosine schedule
    follows the same budget. ``tokenizer_dir`` reuses a tokenizer (default: ``init_from``'s, else
    a new one trained on the corpus). ``init_from``: a checkpoint directory whose weights (and
    shape) start the run, e.g. an AR model for the masked diffusion LM. ``threads`` sets
    ``torch.set_num_threads``.
    """
    wall_start = time.perf_counter()
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    check_budget(steps, seconds, threads)
    device = torch.device(device)
    command = command_line(objective, preset, out_dir, steps, seconds, device, seed,
                           tokenizer_dir, init_from, threads)
    name, p = preset, PRESETS[preset]
    if steps is None and seconds is None:
        steps = p.steps
    out_dir = Path(out_dir)
    writable_dir(out_dir, create=False)   # an unwritable --out fails now, not after training
    torch.manual_seed(seed)

    # --- tokenizer and data
    tok, tok_source = _tokenizer_for(p, tokenizer_dir, init_from)
    ids = tokenizers_.special_token_ids(tok)
    texts = corpus.read_corpus("train", max_bytes=p.corpus_max_bytes)
    train_stream = corpus.encode_corpus(tok, "train", max_bytes=p.corpus_max_bytes)
    heldout_stream = corpus.encode_corpus(tok, "heldout")
    quick_files = quick_heldout_files(tok, p.seq_len, p.quick_windows, objective)
    quick_stream = encode_files(tok, quick_files)
    pairs = sft_pairs(tok, texts, p.seq_len) if objective == "mdm" and p.sft_share > 0 else []
    if objective == "mdm" and p.sft_share > 0 and not pairs:
        raise ValueError("preset: the corpus slice holds no functions with docstrings for SFT rows")

    distilled, distill_info = [], None
    if objective == "mdm" and p.distill_answers:
        distilled, distill_info = distilled_pairs(tok, p, seed)

    # --- model
    init_sha256, init_commands = None, []
    if init_from is not None:
        source = load_checkpoint(init_from, dtype=torch.float32)
        init_sha256 = cards.file_sha256(Path(init_from) / "model.safetensors")
        init_card = Path(init_from) / "card.json"
        if init_card.is_file():       # the commands that made the starting point, oldest first
            prior = json.loads(init_card.read_text())
            init_commands = prior.get("recipe", {}).get("init_from_commands", []) + [prior.get("command")]
        config = dataclasses.replace(source.config, causal=objective == "ar",
                                     mask_token_id=ids["mask"] if objective == "mdm" else None,
                                     extra=dict(source.config.extra))
        if config.vocab_size != tok.get_vocab_size():
            raise ValueError(f"init_from: vocab_size {config.vocab_size} does not match the "
                             f"tokenizer's {tok.get_vocab_size()}")
        model = Transformer(config, device=device, init_std=None)
        model.load_state_dict(source.state_dict())
        del source
    else:
        config = model_config(p, tok, objective)
        model = Transformer(config, device=device)
    model.train()
    n_params = count_parameters(model)
    opt = _optimizer(model, p, device)

    # --- training loop
    gen = torch.Generator().manual_seed(seed)
    n_sft = round(p.sft_share * p.batch_size) if pairs else 0
    n_distill = min(n_sft, round(p.distill_share * n_sft)) if distilled else 0
    if p.batch_size > n_sft:
        windows = corpus.batches(train_stream, p.batch_size - n_sft,
                                 p.seq_len if objective == "ar" else p.seq_len - 1, seed=seed)
    else:                             # SFT rows only
        windows = iter(lambda: torch.empty(0, p.seq_len, dtype=torch.long), None)
    history, ema, step, tokens_seen = [], None, 0, 0
    budget = Budget(steps, seconds, f"{objective}/{name}", progress)

    def quick_eval():
        loss, _ = heldout_loss(model, quick_stream, objective, p.seq_len, p.quick_windows,
                               eps=p.mask_eps)
        history.append({"step": step, "tokens": tokens_seen,
                        "seconds": round(budget.seconds, 1),
                        "train_loss": round(ema, 4) if ema is not None else None,
                        "heldout_loss": round(loss, 4)})
        budget.bar.set_postfix(train=f"{ema:.3f}" if ema is not None else "-", heldout=f"{loss:.3f}")
        tqdm.write(f"step {step}: {tokens_seen:,} tokens, {history[-1]['seconds']:.0f} s, train loss "
                   f"{history[-1]['train_loss']}, quick held-out loss {loss:.4f}", file=sys.stderr)

    quick_eval()                      # step 0: the starting point of the loss curve

    while (frac := budget.progress(step)) is not None:
        lr = cosine_lr(p.lr, p.warmup, p.min_lr_ratio, step, frac)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = next(windows)
        with _autocast(device):
            if objective == "ar":
                batch = batch.to(device)
                loss = ar_loss(model, batch)
                tokens_seen += batch[:, :-1].numel()
            else:
                maskable = torch.ones_like(batch, dtype=torch.bool)
                if n_sft:
                    rows = torch.randint(0, len(pairs), (n_sft - n_distill,), generator=gen)
                    chosen = [pairs[r] for r in rows.tolist()]
                    if n_distill:
                        rows = torch.randint(0, len(distilled), (n_distill,), generator=gen)
                        chosen = [distilled[r] for r in rows.tolist()] + chosen
                    sft_tokens, prompt_len = sft_batch(chosen, range(len(chosen)), p.seq_len, ids["eos"])
                    batch = torch.cat([batch, sft_tokens])
                    pos = torch.arange(p.seq_len)
                    maskable = torch.cat([maskable, pos[None, :] >= prompt_len[:, None]])
                if p.random_length_share and torch.rand((), generator=gen) < p.random_length_share:
                    cut = int(torch.randint(p.seq_len // 4, p.seq_len + 1, (), generator=gen))
                    batch, maskable = batch[:, :cut], maskable[:, :cut]
                b, length = batch.shape
                t = p.mask_eps + (1 - p.mask_eps) * torch.rand(b, generator=gen)
                noise = torch.rand(b, length, generator=gen)
                loss = mdm_loss(model, batch.to(device), t.to(device), noise.to(device),
                                maskable.to(device), ids["mask"])
                tokens_seen += batch.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged at step {step} (loss {value})")
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        budget.tick()
        if step % p.eval_every == 0:
            quick_eval()
    if not history or history[-1]["step"] != step:
        quick_eval()
    train_s = budget.close()

    # --- save, then evaluate what was saved
    model.eval()
    fp32_bytes = 4 * n_params
    store_dtype = torch.float32 if fp32_bytes <= MAX_FILE_BYTES else torch.bfloat16
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.to("cpu", store_dtype), out_dir)
    tokenizers_.save_tokenizer(tok, out_dir)
    saved = load_checkpoint(out_dir, device=device, dtype=torch.float32)
    final, scored = heldout_loss(saved, heldout_stream, objective, p.seq_len, p.eval_max_windows,
                                 eps=p.mask_eps)
    quick, _ = heldout_loss(saved, quick_stream, objective, p.seq_len, p.quick_windows,
                            eps=p.mask_eps)
    prompt = corpus.eval_prompts(1, seed=seed, max_prompt_chars=300)
    sample = None
    if prompt:
        prompt_ids = [ids["eos"]] + tok.encode(prompt[0].prompt, add_special_tokens=False).ids
        completion = greedy_sample(saved, prompt_ids, 48, ids["eos"])
        sample = {"method": "greedy" if objective == "ar" else "mdm low-confidence, 1 token/step",
                  "source": f"{prompt[0].path}:{prompt[0].name}", "prompt": prompt[0].prompt,
                  "completion": tok.decode(completion)}

    root = corpus.stdlib_root()
    info = corpus.corpus_info()
    card = {
        "name": out_dir.name,
        "card_version": cards.CARD_VERSION,
        "summary": (f"{'Causal LM' if objective == 'ar' else 'LLaDA-style masked diffusion LM'} "
                    f"trained on the Python standard library's source by leapdec.train.lm "
                    f"(objective {objective!r}, preset {name!r})."),
        "objective": objective,
        "command": command,
        "date": cards.now_iso(),
        "machine": cards.machine_info(device),
        "recipe": {**{k: v for k, v in dataclasses.asdict(p).items() if k != "steps"},
                   "preset": name, "objective": objective, "seed": seed,
                   "steps_budget": steps, "seconds_budget": seconds,
                   "init_from": str(init_from) if init_from is not None else None,
                   "init_from_sha256": init_sha256,
                   "init_from_commands": init_commands,
                   "tokenizer": tok_source, "optimizer": "AdamW(betas=(0.9, 0.95))",
                   "schedule": "linear warmup, cosine to min_lr_ratio over the step/time budget",
                   "autocast": "bfloat16" if device.type == "cuda" else None},
        "corpus": {**info.to_dict(), "heldout_rule": HELDOUT_RULE,
                   "train_bytes_used": sum(len(x.encode("utf-8")) for x in texts),
                   "train_files_used": len(texts),
                   "train_tokens": int(train_stream.numel()),
                   "heldout_tokens": int(heldout_stream.numel()),
                   "sft_pairs": len(pairs), "distilled": distill_info},
        "model": {"architecture": config.architecture, "parameters": n_params,
                  "causal": config.causal, "mask_token_id": config.mask_token_id,
                  "storage_dtype": str(store_dtype).replace("torch.", ""),
                  "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
                  "num_hidden_layers": config.num_hidden_layers,
                  "num_attention_heads": config.num_attention_heads,
                  "num_key_value_heads": config.num_key_value_heads,
                  "intermediate_size": config.intermediate_size, "seq_len": p.seq_len,
                  "tokenizer_sha256": tokenizers_.tokenizer_hash(tok)},
        "training": {"steps": step, "tokens_seen": tokens_seen,
                     "epochs": round(tokens_seen / max(1, train_stream.numel()), 3),
                     "train_s": round(train_s, 1),
                     "wall_s": round(time.perf_counter() - wall_start, 1),
                     "final_train_loss": round(ema, 4), "history": history},
        "eval": {"heldout_loss": round(final, 4), "heldout_tokens": scored,
                 "loss_kind": ("next-token cross-entropy, nats/token" if objective == "ar" else
                               "LLaDA ELBO bound (1/t-weighted masked CE), nats/token, "
                               "stratified t, seeded masks"),
                 "quick": {"loss": round(quick, 4), "windows": p.quick_windows,
                           "seq_len": p.seq_len, "mask_eps": p.mask_eps,
                           "files": [{"path": f.relative_to(root).as_posix(),
                                      "sha256": cards.file_sha256(f)} for f in quick_files]},
                 "sample": sample},
    }
    names = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json"]
    card["files"] = cards.file_entries(out_dir, names)
    card["training"]["wall_s"] = round(time.perf_counter() - wall_start, 1)
    cards.write_card(out_dir, card)
    return card


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leapdec.train lm",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", choices=OBJECTIVES, default="ar")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    add_budget_arguments(parser)
    parser.add_argument("--tokenizer-dir", help="reuse this folder's tokenizer.json")
    parser.add_argument("--init-from", help="start from this checkpoint directory")
    args = parser.parse_args(argv)
    card = train_lm(args.objective, args.preset, args.out, steps=args.steps, seconds=args.seconds,
                    device=args.device, seed=args.seed, tokenizer_dir=args.tokenizer_dir,
                    init_from=args.init_from, threads=args.threads, progress=not args.no_progress)
    print(f"{args.out}: {card['model']['parameters']:,} parameters, {card['training']['steps']} steps, "
          f"{card['training']['tokens_seen']:,} tokens, held-out loss {card['eval']['heldout_loss']:.4f}, "
          f"{card['training']['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
