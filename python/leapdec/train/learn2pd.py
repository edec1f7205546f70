"""Learn2PD filter recipe: learn which masked positions already hold their final token.

1. Reference: decode training prompts (functions of the corpus's train split: signature and
   docstring) with LLaDA, one token per step (steps == gen_length), until the answer is final at
   its first EOS (LLaDA's output; the padding after it is never decoded). The preset runs it
   with the dual KV cache: only its tokens are used, and it is the bulk of the recipe's time.
2. Oracle ("extremely greedy parallel"): decode them again, committing at each step exactly the
   masked positions of the block whose current prediction equals the reference (when none does,
   the most confident one gets its reference token, so the decode always advances), until the
   same point. Each step logs, per row, the block's ``confidence[32]`` (top-1 probabilities, as
   the decoding op computes them: 1.0 past a shorter block) and ``is_correct[32]`` (prediction
   == reference; positions the reference never decoded are left out of the loss).
3. Filter: ``Linear(32, H) -> ReLU -> Linear(H, 32)`` (H = 32: 2,112 parameters) trained on the
   logged pairs with full-batch BCE (AdamW, lr 3e-3), a tenth of the prompts held out.

Writes ``filter.safetensors`` (w1, b1, w2, b2 and the accept threshold as metadata) and its card
into ``<model>/learn2pd/`` (or ``--out``), where ``generate(method="learn2pd")`` finds it.

    python -m leapdec.train learn2pd --model stdlib-mdm [--preset default|tiny] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shlex
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from leapdec.decoding.learn2pd import ACCEPT_THRESHOLD, COMPANION, FILTER_FILE, make_filter, save_filter
from leapdec.decoding.llada import DiffusionDecoder, DiffusionSettings
from leapdec.ops.diffusion import UnmaskResult, unmask_and_filter
from leapdec.paths import writable_dir
from leapdec.train import cards, corpus
from leapdec.train import tokenizer as tokenizers_


@dataclasses.dataclass(frozen=True)
class Preset:
    prompts: int                 # training prompts (functions of the train split)
    gen_length: int
    block_length: int
    batch_size: int              # prompts decoded together
    iterations: int              # full-batch optimizer steps
    hidden_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    max_prompt_chars: int = 600
    corpus_max_bytes: int | None = None
    val_share: float = 0.1       # share of the prompts held out for the filter's evaluation
    reference_cache: str = "dual"   # KV cache of the reference decode (llada's cache=): only its tokens matter
    cache: str = "none"             # KV cache of the oracle decode, whose confidences the filter learns
    request_share: float = 0.0      # share of the prompts that are short function requests (signature
                                    # + one-line docstring, distill.request_prompt) of the train split


PRESETS = {
    "tiny": Preset(prompts=4, gen_length=16, block_length=8, batch_size=4, iterations=60,
                   max_prompt_chars=300, corpus_max_bytes=300_000, val_share=0.25),
    "default": Preset(prompts=96, gen_length=128, block_length=32, batch_size=16, iterations=1500,
                      request_share=0.5),
}


# ----------------------------------------------------------------------------- data

def training_prompts(tok, n: int, seed: int = 0, max_prompt_chars: int = 600,
                     max_bytes: int | None = None, request_share: float = 0.0) -> list[list[int]]:
    """``n`` prompts (``<|endoftext|>`` + a function's signature and docstring) drawn, seeded,
    from the functions of the corpus's train split; ``request_share`` of them are short requests
    instead (``def name(args):`` + a one-line docstring, as a user writes them and as the
    distilled model was trained on), shuffled in; the held-out split stays for evaluation."""
    from leapdec.train import distill

    eos = tokenizers_.special_token_ids(tok)["eos"]
    funcs = [f for text in corpus.read_corpus("train", max_bytes=max_bytes)
             for f in corpus.function_prompts(text, max_prompt_chars=max_prompt_chars)]
    if not funcs:
        raise ValueError("the corpus slice holds no functions with docstrings")
    n_requests = round(request_share * n)
    rng = random.Random(seed)
    texts = [f.prompt for f in rng.sample(funcs, min(n - n_requests, len(funcs)))]
    if n_requests:
        texts += [distill.request_prompt(sig, summary)
                  for sig, summary, _ in distill.requests(n_requests, "train", seed)]
        rng.shuffle(texts)
    return [[eos] + tok.encode(t, add_special_tokens=False).ids for t in texts]


class OracleRule:
    """Learn2PD's "extremely greedy parallel" commit rule for rows whose answers are known
    (``reference [B, gen_length]``; the mask id where the reference decode stopped early): each
    step commits exactly the masked block positions whose prediction equals the reference and
    logs the block's ``(confidence, is_correct, masked, valid)`` (``input_size`` entries: past a
    shorter block 1.0, True, False, False; ``valid`` False where the reference is unknown) with
    the row's index. A ``DiffusionDecoder`` runs it as its ``commit_rule``."""

    def __init__(self, reference: torch.Tensor, input_size: int = 32):
        self.reference = reference
        self.input_size = input_size
        self.records: list[tuple] = []
        self.forced = 0

    def __call__(self, decoder, rows, tokens, masked, logits, block_end, quota, step_index):
        lo, wend = decoder.window
        if self.reference.device != tokens.device:
            self.reference = self.reference.to(tokens.device)
        mask_id = decoder.s.mask_id
        stats = unmask_and_filter(logits, tokens.clone(), masked.clone(), "topk", k=1, block_start=0,
                                  block_end=block_end, return_stats=True)
        idx = torch.tensor(rows, device=tokens.device)
        ref = self.reference[idx, lo:wend]
        known = (ref != mask_id)[:, :block_end]
        correct = (stats.predicted.long() == ref)[:, :block_end] & known
        conf = stats.confidence[:, :block_end]
        entry = masked[:, :block_end]
        pad = self.input_size - block_end
        for i, r in enumerate(rows):
            self.records.append((r, F.pad(conf[i].float().cpu(), (0, pad), value=1.0),
                                 F.pad(correct[i].cpu(), (0, pad), value=True),
                                 F.pad(entry[i].cpu(), (0, pad), value=False),
                                 F.pad(known[i].cpu(), (0, pad), value=False)))
        take = entry & correct
        stuck = (entry & known).any(1) & ~take.any(1)
        if bool(stuck.any()):                  # nothing right yet: the most confident gets its reference
            best = torch.where(entry & known, conf, torch.full_like(conf, -1.0)).argmax(1)
            take[stuck, best[stuck]] = True
            self.forced += int(stuck.sum())
        # past the reference's end only the model's own predictions remain to fill the block
        unknown = entry & ~known & ~(entry & known).any(1, keepdim=True)
        window = torch.zeros_like(masked)
        window[:, :block_end] = take
        tokens[window] = ref[window]
        window[:, :block_end] = unknown
        tokens[window] = stats.predicted.long()[window]
        take |= unknown
        window[:, :block_end] = take
        masked[window] = False
        committed = take.sum(1).to(torch.int32)
        return UnmaskResult(committed, stats.confidence, torch.full_like(committed, -1))


class OracleDecoder:
    """The oracle decode of ``prompts``: a ``DiffusionDecoder`` whose commit rule is
    :class:`OracleRule` (composition: the recipe does not subclass the decoder)."""

    def __init__(self, model, prompts, settings, stops, reference: torch.Tensor, input_size: int = 32):
        self.rule = OracleRule(reference, input_size)
        self.decoder = DiffusionDecoder(model, prompts, settings, stops, commit_rule=self.rule)

    def run(self):
        return self.decoder.run()

    answer = property(lambda self: self.decoder.answer)
    masked = property(lambda self: self.decoder.masked)
    stats = property(lambda self: self.decoder.stats)
    records = property(lambda self: self.rule.records)
    forced = property(lambda self: self.rule.forced)


@torch.no_grad()
def oracle_records(model, prompts, gen_length: int, block_length: int, batch_size: int,
                   input_size: int = 32, cache: str = "none", reference_cache: str = "none",
                   progress: bool = True) -> dict:
    """Reference and oracle decodes of ``prompts`` (both stop a row once its answer is final
    at its EOS); returns the logged tensors ``confidence, is_correct, masked, valid
    [N, input_size]`` and ``prompt [N]`` plus decode statistics (model calls counted per row)."""
    from tqdm.auto import tqdm

    eos = model.config.stop_token_ids[0]
    logged = {"confidence": [], "is_correct": [], "masked": [], "valid": [], "prompt": []}
    ref_calls = oracle_calls = forced = blocks = 0
    bar = tqdm(total=len(prompts), desc="oracle", disable=not progress)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        ref = DiffusionDecoder(model, batch, DiffusionSettings(model, gen_length, gen_length, block_length,
                                                               gen_length, cache=reference_cache), {eos})
        ref.run()
        ref_calls += ref.stats.row_calls
        settings = DiffusionSettings(model, gen_length, gen_length, block_length, gen_length, cache=cache)
        oracle = OracleDecoder(model, batch, settings, {eos}, ref.answer, input_size)
        oracle.run()
        oracle_calls += oracle.stats.row_calls
        forced += oracle.forced
        for r, c, y, m, v in oracle.records:
            for name, value in zip(logged, (c, y, m, v, start + r)):
                logged[name].append(value)
        blocks += sum(len(o) // block_length + 1 if len(o) < gen_length else gen_length // block_length
                      for o in ref.outputs)          # the blocks up to the one holding the EOS
        bar.update(len(batch))
    bar.close()
    out = {name: torch.stack(v) if name != "prompt" else torch.tensor(v) for name, v in logged.items()}
    return {**out, "reference_calls": ref_calls, "oracle_calls": oracle_calls, "forced": forced,
            "blocks": blocks}


# ----------------------------------------------------------------------------- filter

def masked_bce(logits, is_correct, valid) -> torch.Tensor:
    """Mean BCE-with-logits over the ``valid`` positions."""
    loss = F.binary_cross_entropy_with_logits(logits, is_correct.float(), reduction="none")
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def filter_metrics(filter_model, confidence, is_correct, masked, valid,
                   threshold: float = ACCEPT_THRESHOLD) -> dict:
    """BCE over every valid logged position, and on the masked ones (those the filter decides):
    the share accepted, the precision of the accepted, the recall of the correct."""
    with torch.no_grad():
        logits = filter_model(confidence)
        loss = masked_bce(logits, is_correct, valid).item()
        masked = masked & valid
        accept = (torch.sigmoid(logits) > threshold) & masked
        correct = is_correct & masked
        n_masked = int(masked.sum())
        n_accept = int(accept.sum())
        return {"loss": round(loss, 4), "masked_positions": n_masked,
                "accept_rate": round(n_accept / max(1, n_masked), 4),
                "precision": round(int((accept & is_correct).sum()) / n_accept, 4) if n_accept else None,
                "recall": round(int((accept & is_correct).sum()) / max(1, int(correct.sum())), 4),
                "oracle_correct_rate": round(int(correct.sum()) / max(1, n_masked), 4)}


def train_filter(confidence, is_correct, valid, iterations: int, hidden_size: int = 32, lr: float = 3e-3,
                 weight_decay: float = 0.01, seed: int = 0, val=None, eval_every: int = 250):
    """Full-batch BCE training (over ``valid`` positions) of a fresh filter on ``confidence ->
    is_correct`` (AdamW). ``val``: ``(confidence, is_correct, valid)`` scored every
    ``eval_every`` steps. Returns the filter and the loss history."""
    torch.manual_seed(seed)
    net = make_filter(confidence.shape[1], hidden_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    start = time.perf_counter()
    for step in range(iterations + 1):
        if step % eval_every == 0 or step == iterations:
            with torch.no_grad():
                train_loss = masked_bce(net(confidence), is_correct, valid).item()
                val_loss = masked_bce(net(val[0]), val[1], val[2]).item() if val is not None and len(val[0]) \
                    else train_loss
            history.append({"step": step, "tokens": step * int(valid.sum()),
                            "seconds": round(time.perf_counter() - start, 1),
                            "train_loss": round(train_loss, 4), "heldout_loss": round(val_loss, 4)})
        if step == iterations:
            break
        loss = masked_bce(net(confidence), is_correct, valid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval(), history


# ----------------------------------------------------------------------------- recipe

def command_line(model, preset, out, seed, threads) -> str:
    args = ["python", "-m", "leapdec.train", "learn2pd", "--model", str(model), "--preset", preset]
    if out is not None:
        args += ["--out", str(out)]
    args += ["--seed", str(seed)]
    if threads is not None:
        args += ["--threads", str(threads)]
    return shlex.join(args)


def train_learn2pd(model_path="stdlib-mdm", out_dir=None, preset: str = "default", seed: int = 0,
                   threads: int | None = None, progress: bool = True) -> dict:
    """Generate oracle data with the masked diffusion LM at ``model_path`` (a zoo name or a
    checkpoint folder with its tokenizer), train the filter, write it and its card into
    ``out_dir`` (default ``<model>/learn2pd``); returns the card."""
    from leapdec.models import load_checkpoint
    from leapdec.zoo import resolve

    wall_start = time.perf_counter()
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if threads is not None:
        if threads <= 0:
            raise ValueError(f"threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    p = PRESETS[preset]
    base = resolve(model_path)
    command = command_line(model_path, preset, out_dir, seed, threads)
    out_dir = Path(out_dir) if out_dir is not None else base / COMPANION
    writable_dir(out_dir, create=False)   # an unwritable --out fails now, not after training
    model = load_checkpoint(base, dtype=torch.float32).eval()
    if model.config.mask_token_id is None:
        raise ValueError(f"model_path: {base} is not a masked diffusion LM (config has no mask_token_id)")
    tok = tokenizers_.load_tokenizer(base)
    prompts = training_prompts(tok, p.prompts, seed, p.max_prompt_chars, p.corpus_max_bytes,
                               p.request_share)

    data = oracle_records(model, prompts, p.gen_length, p.block_length, p.batch_size, cache=p.cache,
                          reference_cache=p.reference_cache, progress=progress)
    n_val = max(1, round(p.val_share * len(prompts))) if len(prompts) > 1 else 0
    is_val = data["prompt"] >= len(prompts) - n_val
    fields = ("confidence", "is_correct", "masked", "valid")
    split = {name: (data[name][~is_val], data[name][is_val]) for name in fields}
    train_start = time.perf_counter()
    net, history = train_filter(split["confidence"][0], split["is_correct"][0], split["valid"][0],
                                p.iterations, p.hidden_size, p.lr, p.weight_decay, seed,
                                val=(split["confidence"][1], split["is_correct"][1], split["valid"][1]))
    train_s = time.perf_counter() - train_start
    metrics = {name: filter_metrics(net, *(split[k][i] for k in fields))
               for i, name in enumerate(("train", "heldout"))}

    out_dir.mkdir(parents=True, exist_ok=True)
    save_filter(net, out_dir / FILTER_FILE, {"accept_threshold": ACCEPT_THRESHOLD,
                                             "block_length": p.block_length, "base_model": base.name})
    n_params = sum(t.numel() for t in net.parameters())
    base_card = {}
    try:
        base_card = cards.load_card(base)
    except FileNotFoundError:
        pass
    card = {
        "name": out_dir.name,
        "card_version": cards.CARD_VERSION,
        "summary": (f"Learn2PD filter for {base.name}: from a block's {net[0].in_features} top-1 "
                    f"confidences, which masked positions already hold their final token "
                    f"(accepted where sigmoid > {ACCEPT_THRESHOLD}). Trained by leapdec.train.learn2pd "
                    f"(preset {preset!r}) on the model's own oracle decodes."),
        "method": "learn2pd",
        "command": command,
        "date": cards.now_iso(),
        "machine": cards.machine_info("cpu"),
        "recipe": {**dataclasses.asdict(p), "preset": preset, "seed": seed,
                   "accept_threshold": ACCEPT_THRESHOLD, "loss": "BCEWithLogits, full batch",
                   "optimizer": "AdamW", "oracle": "extremely greedy parallel (commit prediction == "
                   "reference; if none, the most confident position gets its reference token)"},
        "corpus": {"split": "train", "prompts": len(prompts), "heldout_prompts": n_val,
                   "prompt_source": ("functions with docstrings (signature + docstring), seeded sample"
                                     + (f"; {p.request_share:.0%} short requests (signature + one-line "
                                        "docstring, distill.request_prompt)" if p.request_share else "")),
                   "max_prompt_chars": p.max_prompt_chars, "train_bytes_limit": p.corpus_max_bytes,
                   "records": int(len(data["prompt"])), "train_records": int((~is_val).sum()),
                   "heldout_records": int(is_val.sum())},
        "model": {"architecture": f"MLP Linear({net[0].in_features}, {p.hidden_size}) -> ReLU -> "
                                  f"Linear({p.hidden_size}, {net[0].in_features})",
                  "parameters": n_params, "input_size": net[0].in_features, "hidden_size": p.hidden_size,
                  "base_model": base.name,
                  "base_model_sha256": (cards.file_sha256(base / "model.safetensors")
                                        if (base / "model.safetensors").is_file() else None),
                  "base_model_card_date": base_card.get("date")},
        "training": {"steps": p.iterations, "tokens_seen": p.iterations * int(split["valid"][0].sum()),
                     "train_s": round(train_s, 1), "wall_s": 0.0, "history": history,
                     "reference_model_calls": data["reference_calls"],
                     "oracle_model_calls": data["oracle_calls"], "oracle_forced_steps": data["forced"],
                     "oracle_blocks": data["blocks"],
                     "oracle_calls_per_block": round(data["oracle_calls"] / max(1, data["blocks"]), 3)},
        "eval": {"loss_kind": "BCE of is_correct over the logged block positions with a known reference",
                 "heldout_loss": metrics["heldout"]["loss"], "train": metrics["train"],
                 "heldout": metrics["heldout"]},
    }
    card["files"] = cards.file_entries(out_dir, [FILTER_FILE])
    card["training"]["wall_s"] = round(time.perf_counter() - wall_start, 1)
    cards.write_card(out_dir, card)
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leapdec.train learn2pd",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="stdlib-mdm", help="masked diffusion LM: zoo name or checkpoint folder")
    parser.add_argument("--out", help="output folder (default <model>/learn2pd)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    card = train_learn2pd(args.model, args.out, args.preset, args.seed, args.threads, not args.no_progress)
    held = card["eval"]["heldout"]
    print(f"learn2pd filter: {card['corpus']['records']} records, held-out loss {held['loss']}, "
          f"accept rate {held['accept_rate']}, precision {held['precision']}, "
          f"{card['training']['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
