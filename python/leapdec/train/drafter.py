"""The draft model of ``sd`` and ``pearl``, distilled from its target.

Data: the target's own greedy answers to instruction prompts from the corpus
(``leapdec.train.distill.answers``; held-out prompts stay held out) and the target's final
hidden states over them (``distill.hidden_states``), from which the target's next-token
distribution at every position is one matmul with its LM head. The drafter (``DraftModel``: a few
layers initialised from the target's first layers, sharing its frozen embedding and LM head,
optionally on a frequency-ranked reduced vocabulary) learns that distribution (forward KL at
temperature 1, over its draft vocabulary) on the prompt and answer positions.

Evaluation on held-out pairs: top-1 agreement with the target's greedy token on the answer
positions (what greedy verification accepts), then ``sd`` and ``pearl`` on held-out prompts
(identical to AR, mean tokens per target call).

    python -m leapdec.train drafter --base stdlib-ar --layers 1 --seconds 600
    python -m leapdec.train drafter --base smollm2-135m-instruct --layers 2 --vocab 8192 --seconds 1200
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from leapdec.models.draft_model import CONFIG_FILE, WEIGHTS_FILE, DraftModel
from leapdec.train import cards, distill
from leapdec.train.budget import Budget, add_budget_arguments, budget_command_args, check_budget, cosine_lr

KIND = "drafter"


def _batches(data: dict, seq_len: int, batch: int, generator: torch.Generator):
    """Random windows of ``seq_len`` tokens inside single sequences, ``batch`` at a time:
    (token ids [b, L], hidden [b, L, h], loss mask [b, L])."""
    offsets = data["offsets"].tolist()
    lengths = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
    seqs = [i for i, n in enumerate(lengths) if n >= 2]
    while True:
        pick = torch.randint(len(seqs), (batch,), generator=generator).tolist()
        ids = torch.zeros(batch, seq_len, dtype=torch.long)
        hid = torch.zeros(batch, seq_len, data["hidden"].shape[1], dtype=torch.float32)
        mask = torch.zeros(batch, seq_len, dtype=torch.bool)
        for r, k in enumerate(pick):
            i = seqs[k]
            n = lengths[i]
            start = 0 if n <= seq_len else int(torch.randint(n - seq_len + 1, (1,), generator=generator))
            take = min(seq_len, n)
            a = offsets[i] + start
            ids[r, :take] = data["tokens"][a:a + take]
            hid[r, :take] = data["hidden"][a:a + take].float()
            mask[r, :take] = True
        yield ids, hid, mask


def kd_loss(draft: DraftModel, base, ids, hidden, mask) -> torch.Tensor:
    """Forward KL from the target's next-token distribution (from its hidden states) to the
    drafter's, over the draft vocabulary, at the unpadded positions."""
    h = draft.hidden(ids, attention_mask=mask.long())
    student = draft.lm_head.subset_logits(h)[mask]
    with torch.no_grad():
        teacher = draft.lm_head.subset_logits(hidden.to(h.dtype))[mask].float().log_softmax(-1)
    return F.kl_div(student.float().log_softmax(-1), teacher, log_target=True, reduction="batchmean")


@torch.no_grad()
def agreement(draft: DraftModel, data: dict, max_seqs: int = 64) -> float:
    """Share of held-out answer positions where the drafter's top token is the target's greedy one."""
    offsets, plens = data["offsets"].tolist(), data["prompt_lens"].tolist()
    hit = total = 0
    for i in range(min(max_seqs, len(plens))):
        a, b = offsets[i], offsets[i + 1]
        ids = data["tokens"][a:b][None].to(draft.device)
        top = draft.logits(ids)[0].argmax(-1).cpu()
        start = max(plens[i] - 1, 0)
        want = data["greedy"][a:b]
        hit += int((top[start:] == want[start:]).sum())
        total += b - a - start
    return hit / max(total, 1)


def decode_eval(base, draft, prompts: list[list[int]], max_new_tokens: int, gamma: int) -> dict:
    """``sd`` and ``pearl`` (thread) on held-out prompts against AR: identical output, tokens per
    target call, wall-clock ratio."""
    from leapdec.decoding import generate

    out = {}
    ar = generate(base, prompts, method="ar", max_new_tokens=max_new_tokens)
    out["ar_tokens_per_s"] = ar.stats["tokens_per_s"]
    for method in ("sd", "pearl"):
        res = generate(base, prompts, method=method, drafter=draft, gamma=gamma, max_new_tokens=max_new_tokens)
        out[f"{method}_identical_to_ar"] = res.tokens == ar.tokens
        out[f"{method}_tokens_per_call"] = round(res.stats["tokens_per_call"], 3)
        out[f"{method}_mean_accepted_length"] = round(res.stats["mean_accepted_length"], 3)
        out[f"{method}_speedup_vs_ar"] = round(res.stats["tokens_per_s"] / max(ar.stats["tokens_per_s"], 1e-9), 3)
    return out


def train_drafter(base: str = "stdlib-ar", layers: int = 1, vocab: int | None = None, n_train: int = 600,
                  n_heldout: int = 32, max_new_tokens: int = 128, seq_len: int = 256, batch: int = 8,
                  lr: float = 1e-3, steps: int | None = None, seconds: float | None = 600,
                  device: str = "cpu", seed: int = 0, threads: int | None = None, out_dir=None,
                  gamma: int = 4, eval_prompts: int = 4, progress: bool = True, init=None,
                  save_dtype: str | None = None) -> dict:
    """Distill a ``layers``-layer drafter for ``base``; writes it (and its card) to
    ``<base>/drafter`` or ``out_dir``. Returns the card."""
    check_budget(steps, seconds, threads)
    torch.manual_seed(seed)
    t_start = time.perf_counter()
    model, tokenizer, base_dir, sha = distill.load_base(base, device)
    pairs = distill.answers(base, n_train, "train", max_new_tokens, seed)
    held = distill.answers(base, n_heldout, "heldout", max_new_tokens, seed)
    data = distill.hidden_states(base, pairs, model=model, progress=progress)
    held_data = distill.hidden_states(base, held, model=model, progress=progress)
    vocab_ids = None
    if vocab is not None and vocab < model.config.vocab_size:
        stops = [t for t in (model.config.eos_token_id,) if isinstance(t, int)]
        stops += sorted({a[-1] for _, a in pairs if a})                      # the stop tokens it emits
        vocab_ids = distill.frequent_tokens(base, vocab, pairs, tokenizer=tokenizer, always=stops)
    if init is not None:                                  # continue training a saved drafter
        draft = DraftModel.load(init, model)
        layers, vocab_ids = len(draft.layers), draft.vocab_ids
        vocab = None if vocab_ids is None else int(vocab_ids.numel())
    else:
        draft = DraftModel.from_base(model, layers, vocab_ids)
    params = draft.own_parameters()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    batches = _batches(data, seq_len, batch, gen)
    before = agreement(draft, held_data)
    budget = Budget(steps, seconds, f"drafter {base}", progress)
    step, tokens_seen, ema = 0, 0, None
    draft.train()
    while (progress_share := budget.progress(step)) is not None:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(lr, 20, 0.1, step, progress_share)
        ids, hid, mask = next(batches)
        loss = kd_loss(draft, model, ids.to(device), hid.to(device), mask.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        value = float(loss.detach())
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        tokens_seen += int(mask.sum())
        step += 1
        budget.tick()
        if progress and step % 50 == 0:
            budget.bar.set_postfix(kl=f"{ema:.3f}")
    train_s = budget.close()
    draft.eval()
    for p in params:
        p.requires_grad_(False)
    with torch.no_grad():
        ids, hid, mask = next(_batches(held_data, seq_len, 16, torch.Generator().manual_seed(1)))
        held_kl = float(kd_loss(draft, model, ids.to(device), hid.to(device), mask.to(device)))
    after = agreement(draft, held_data)
    prompts = [p for p, _ in held[:eval_prompts]]
    dec = decode_eval(model, draft, prompts, max_new_tokens, gamma)
    out = base_dir / KIND if out_dir is None else out_dir
    meta = {"base": str(base), "base_sha256": sha, "layers": layers}
    draft.save(out, meta, dtype=getattr(torch, save_dtype) if save_dtype else None)
    command = " ".join(["python -m leapdec.train drafter", "--base", shlex.quote(str(base)), "--layers",
                        str(layers)] + (["--vocab", str(vocab)] if vocab else []) +
                       (["--init", shlex.quote(str(init))] if init is not None else []) +
                       (["--save-dtype", save_dtype] if save_dtype else []) +
                       ["--n-train", str(n_train), "--batch", str(batch), "--seq-len", str(seq_len),
                        "--lr", f"{lr:g}"] + budget_command_args(steps, seconds, device, seed, threads))
    own = sum(p.numel() for p in params)
    earlier = []                                          # how the drafter it continued was made
    if init is not None and (Path(init) / cards.CARD_JSON).is_file():
        prev = cards.load_card(init)
        earlier = prev["recipe"].get("init_from_commands", []) + [prev["command"]]
    card = {
        "name": f"{base}/{KIND}",
        "card_version": cards.CARD_VERSION,
        "summary": (f"A {layers}-layer draft model for {base} (methods sd and pearl), sharing its frozen "
                    f"embedding and LM head" + (f", drafting from its {vocab} most frequent tokens" if vocab_ids is not None else "")
                    + ", distilled (forward KL) from the target's distributions over its own greedy answers."),
        "command": command,
        "date": cards.now_iso(),
        "machine": cards.machine_info(device),
        "recipe": {"layers": layers, "vocab": vocab, "n_train": n_train, "n_heldout": n_heldout,
                   "max_new_tokens": max_new_tokens, "seq_len": seq_len, "batch": batch, "lr": lr,
                   "steps_budget": steps, "seconds_budget": seconds, "seed": seed,
                   "init_from": None if init is None else str(init), "init_from_commands": earlier,
                   "saved_dtype": save_dtype or "float32",
                   "optimizer": "AdamW(betas=(0.9, 0.95))", "loss": "KL(target || drafter) over the draft vocabulary",
                   "init": "the target's first layers and final norm; embedding and LM head shared, frozen"},
        "corpus": {"base_model": str(base), "targets": "the target's greedy answers (leapdec.train.distill)",
                   "train_pairs": len(pairs), "heldout_pairs": len(held),
                   "answer_tokens": sum(len(a) for _, a in pairs),
                   "vocab_coverage_of_answers": None if vocab_ids is None else round(distill.coverage(vocab_ids, pairs), 4)},
        "training": {"steps": step, "tokens_seen": tokens_seen, "wall_s": round(time.perf_counter() - t_start, 1),
                     "train_s": round(train_s, 1), "final_train_kl": ema},
        "eval": {"heldout_kl_loss": held_kl, "top1_agreement_before": round(before, 4),
                 "top1_agreement": round(after, 4), "decode_prompts": len(prompts), "gamma": gamma, **dec},
        "model": {"class": "leapdec.models.draft_model.DraftModel", "layers": layers,
                  "own_parameters": own, "hidden_size": model.config.hidden_size,
                  "draft_vocab": None if vocab_ids is None else len(vocab_ids), "base_sha256": sha},
        "files": cards.file_entries(out, [CONFIG_FILE, WEIGHTS_FILE]),
    }
    cards.write_card(out, card)
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leapdec.train drafter",
                                     description="Distill a draft model (methods sd, pearl) from its target.")
    parser.add_argument("--base", default="stdlib-ar", help="target: zoo name or checkpoint folder")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--vocab", type=int, help="reduced draft vocabulary size (FR-Spec); default: full")
    parser.add_argument("--n-train", type=int, default=600, help="distillation prompts (train split)")
    parser.add_argument("--n-heldout", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--gamma", type=int, default=4, help="draft length of the decode evaluation")
    parser.add_argument("--out", help="output folder (default: <base>/drafter)")
    parser.add_argument("--init", help="continue training this saved drafter folder (its layers and vocabulary)")
    parser.add_argument("--save-dtype", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the saved weights (bfloat16 halves the file; default float32)")
    add_budget_arguments(parser)
    a = parser.parse_args(argv)
    seconds = a.seconds if (a.seconds is not None or a.steps is not None) else 600
    card = train_drafter(a.base, a.layers, a.vocab, a.n_train, a.n_heldout, a.max_new_tokens, a.seq_len,
                         a.batch, a.lr, a.steps, seconds, a.device, a.seed, a.threads, a.out,
                         a.gamma, progress=not a.no_progress, init=a.init, save_dtype=a.save_dtype)
    ev = card["eval"]
    print(f"drafter for {a.base}: top-1 agreement {ev['top1_agreement_before']:.3f} -> {ev['top1_agreement']:.3f}; "
          f"sd {ev['sd_tokens_per_call']} tok/call ({ev['sd_speedup_vs_ar']}x AR), "
          f"pearl {ev['pearl_tokens_per_call']} tok/call ({ev['pearl_speedup_vs_ar']}x AR)")
    return 0
