"""Method "sd": vanilla speculative decoding with a draft model (Leviathan et al.; the baseline
PEARL and DEER compare against; HF ``assistant_model``, vLLM's draft-model speculation).

Each step the draft model (any causal leapdec model with the target's vocabulary) proposes a
chain of ``gamma`` tokens, one batched draft forward per token; the target verifies the chain in
one forward on the speculative core. Greedy acceptance keeps the output identical to greedy AR;
at temperature > 0 the drafts are sampled from the draft model's warped distribution and
verified by lossless speculative sampling (the emitted tokens follow the target's
distribution). After each step the draft model's cache is rolled back to the tokens that were
accepted (``PagedKVCache.truncate``), so a rejected draft leaves no K/V behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from leapdec.engine.companions import load_companion
from leapdec.engine.runner import close_session, open_sequences, plan_extend
from leapdec.engine.sampling import sample_next, warp_logits
from leapdec.engine.spec import register_method
from leapdec.models.draft_model import WEIGHTS_FILE, DraftModel
from leapdec.engine.speculative import Proposal, resolve_acceptance, speculative_generate

_HINT = ("pass drafter= (a smaller causal leapdec model with the target's vocabulary, e.g. "
         "leapdec.load_model(path), or its checkpoint folder), or train the target's own drafter: "
         "python -m leapdec.train drafter --base <target>")


def is_draft_companion(path) -> bool:
    """A folder written by ``DraftModel.save`` (layers only; the target's embedding is shared)."""
    cfg = Path(path).expanduser() / "config.json"
    try:
        return "draft" in json.loads(cfg.read_text()).get("leapdec", {})
    except (OSError, ValueError):
        return False


def load_draft_model(model, drafter, method: str = "sd", same_device: bool = True):
    """The draft model: a loaded leapdec model or a checkpoint folder / zoo name, on the target's
    device and dtype (``same_device``), checked against the target's vocabulary."""
    from leapdec.models import Transformer

    if drafter is None or (isinstance(drafter, (str, Path)) and is_draft_companion(drafter)):
        drafter = load_companion(model, "drafter", drafter, loaded_type=DraftModel, filename=WEIGHTS_FILE,
                                 hint=f"; {_HINT}", argument="drafter",
                                 load=lambda folder: DraftModel.load(folder, model))
    if isinstance(drafter, (str, Path)):
        from leapdec.api import load_model
        drafter = load_model(drafter, device=model.device, dtype=model.dtype)
    if not isinstance(drafter, Transformer):
        raise TypeError(f"drafter must be a leapdec model or a checkpoint path, got {type(drafter).__name__}")
    if drafter.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"drafter: its vocabulary ({drafter.config.vocab_size}) differs from the "
                         f"target's ({model.config.vocab_size}); {_HINT}")
    if not drafter.config.causal:
        raise ValueError("drafter: the draft model must be causal (an AR model)")
    if same_device and (drafter.device != model.device or drafter.dtype != model.dtype):
        raise ValueError(f"drafter: on {drafter.device} / {drafter.dtype}, the target on "
                         f"{model.device} / {model.dtype}")
    return drafter


class DraftModelDrafter:
    """Chains of ``gamma`` tokens from a draft model with its own paged cache."""

    needs_hidden = False
    fixed_nodes = None

    def __init__(self, draft, gamma: int, sampling: bool, temperature: float, top_k, top_p, page_size: int):
        self.draft, self.gamma, self.sampling = draft, gamma, sampling
        self.temperature, self.top_k, self.top_p, self.page_size = temperature, top_k, top_p, page_size
        self.max_nodes = gamma + 1
        self.session = None
        self.calls = 0

    def start(self, ctx, rows, hidden, offsets):
        self.session, self.seqs = open_sequences(
            self.draft, [len(r.prompt) + r.max_new_tokens + self.gamma + 1 for r in rows], self.page_size)
        self.generator = ctx.generator

    def close(self):
        self.session = close_session(self.session)

    def _pick(self, logits: torch.Tensor):
        if not self.sampling:
            return logits.argmax(dim=-1), None
        probs = warp_logits(logits, self.temperature, self.top_k, self.top_p).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1), probs

    def propose(self, ctx, live) -> Proposal:
        cache, device = self.session.cache, self.draft.device
        n = len(live)
        seqs = [self.seqs[r.index] for r in live]
        gamma = min(self.gamma, max(r.room for r in live) - 1)
        # feed what the draft model has not seen (the last token, the root, at least)
        new = [r.tokens[cache.seq_len(s):] for r, s in zip(live, seqs)]
        tokens, probs = [], []
        feed = new
        for _ in range(max(gamma, 0)):
            logits = self.draft.forward_paged(plan_extend(cache, seqs, feed, logits="last"), cache)
            self.calls += 1
            tok, q = self._pick(logits)
            tokens.append(tok)
            probs.append(q)
            feed = [[t] for t in tok.tolist()]
        roots = torch.tensor([r.out[-1] for r in live], dtype=torch.long, device=device)
        cand = torch.stack([roots] + tokens, 1)                                     # [n, 1 + gamma]
        width = cand.shape[1]
        parents = (torch.arange(width, dtype=torch.int32, device=device) - 1).expand(n, -1)
        depth = torch.arange(width, device=device).expand(n, -1)
        draft_probs = None
        if self.sampling and gamma > 0:
            draft_probs = torch.cat([torch.stack(probs, 1), torch.zeros_like(probs[0])[:, None]], 1)
        self.start_lens = [len(r.tokens) for r in live]                            # root at start - 1
        return Proposal(cand, parents, depth, draft_probs=draft_probs, sizes=[width] * n,
                        draft_rule="iid")

    def accepted(self, ctx, live, verified):
        cache = self.session.cache
        for r, path, start in zip(live, verified.paths, self.start_lens):
            seq = self.seqs[r.index]
            # valid: the tokens before the root, the root, and the accepted drafts that were fed
            keep = min(start + len(path) - 1, cache.seq_len(seq))
            cache.truncate(seq, keep)

    def stats(self) -> dict:
        return {"drafter_calls": self.calls, "gamma": self.gamma}


@register_method("sd", lossless=True, companion="drafter", recipe="drafter")
def sd(model, prompts: list[list[int]], *, drafter=None, gamma: int = 4, max_new_tokens: int = 128,
       temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
       seed: int | None = None, stop_tokens=None, stop_strings=None, tokenizer=None, stream=None,
       page_size: int = 16):
    """Speculative decoding with a draft model: ``drafter`` (a smaller causal leapdec model with
    the target's vocabulary, or its checkpoint folder) proposes ``gamma`` tokens per step; greedy
    at temperature 0 (identical to greedy AR), lossless speculative sampling above (``seed``).
    Stats add ``drafter_calls`` and the acceptance histogram."""
    if not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 1:
        raise ValueError(f"gamma must be an int >= 1, got {gamma!r}")
    acceptance = resolve_acceptance(None, temperature, top_k, top_p, 0.09, 0.3)
    draft = load_draft_model(model, drafter)
    chain = DraftModelDrafter(draft, gamma, acceptance == "sampling", temperature, top_k, top_p, page_size)
    try:
        return speculative_generate(
            model, prompts, chain, method="sd", max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, stop_tokens=stop_tokens, stop_strings=stop_strings,
            tokenizer=tokenizer, stream=stream, acceptance=acceptance, page_size=page_size)
    finally:
        chain.close()
