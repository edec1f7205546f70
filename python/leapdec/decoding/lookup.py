"""Method "lookup": prompt-lookup decoding (n-gram drafting from the row's own tokens, as
``transformers``' ``prompt_lookup_num_tokens``), verified by the target on the speculative core.

Each step, per live row: the last ``max_ngram`` tokens (then shorter n-grams down to
``min_ngram``) are looked up in the row's earlier tokens (prompt and output); the first match's
continuation, up to ``num_tokens`` tokens, is the draft chain. One target forward verifies every
row's chain; greedy acceptance keeps the output identical to greedy AR, sampling is lossless
(drafts are deterministic). No companion weights: it works on any causal model.
"""

from __future__ import annotations

import torch

from leapdec.engine.spec import register_method
from leapdec.engine.speculative import Proposal, resolve_acceptance, speculative_generate
from leapdec.trees import ABSENT_PARENT


def find_draft(tokens: list[int], num_tokens: int, max_ngram: int, min_ngram: int = 1) -> list[int]:
    """The continuation of the first earlier occurrence of the longest suffix n-gram of
    ``tokens`` (``max_ngram`` down to ``min_ngram``), at most ``num_tokens`` long ([] if none)."""
    n_total = len(tokens)
    for n in range(min(max_ngram, n_total - 1), min_ngram - 1, -1):
        suffix = tokens[n_total - n:]
        first = suffix[0]
        for start in range(0, n_total - n):
            if tokens[start] == first and tokens[start:start + n] == suffix:
                cont = tokens[start + n:start + n + num_tokens]
                if cont:
                    return cont
    return []


class LookupDrafter:
    needs_hidden = False
    fixed_nodes = None

    def __init__(self, num_tokens: int, max_ngram: int, min_ngram: int, device):
        self.num_tokens, self.max_ngram, self.min_ngram, self.device = num_tokens, max_ngram, min_ngram, device
        self.max_nodes = num_tokens + 1
        self.proposed = 0
        self.found = 0

    def start(self, ctx, rows, hidden, offsets):
        pass

    def propose(self, ctx, live) -> Proposal:
        drafts = [find_draft(r.tokens, min(self.num_tokens, max(r.room - 1, 0)), self.max_ngram,
                             self.min_ngram) for r in live]
        self.proposed += len(live)
        self.found += sum(1 for d in drafts if d)
        width = 1 + max(len(d) for d in drafts)
        n = len(live)
        cand = [[r.out[-1]] + d + [0] * (width - 1 - len(d)) for r, d in zip(live, drafts)]
        par = [[-1] + list(range(len(d))) + [ABSENT_PARENT] * (width - 1 - len(d)) for d in drafts]
        depth = torch.arange(width, device=self.device).expand(n, -1)
        return Proposal(torch.tensor(cand, dtype=torch.long, device=self.device),
                        torch.tensor(par, dtype=torch.int32, device=self.device), depth,
                        sizes=[1 + len(d) for d in drafts])

    def accepted(self, ctx, live, verified):
        pass

    def stats(self) -> dict:
        return {"draft_hit_rate": self.found / self.proposed if self.proposed else 0.0,
                "num_tokens": self.num_tokens, "max_ngram": self.max_ngram}


@register_method("lookup", lossless=True)
def lookup(model, prompts: list[list[int]], *, max_new_tokens: int = 128, num_tokens: int = 10,
           max_ngram: int = 3, min_ngram: int = 1, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, seed: int | None = None, stop_tokens=None, stop_strings=None,
           tokenizer=None, stream=None, page_size: int = 16):
    """Prompt-lookup decoding: draft chains of up to ``num_tokens`` tokens copied from the row's
    earlier tokens after a match of its last ``max_ngram`` .. ``min_ngram`` tokens. Greedy at
    temperature 0 (identical to greedy AR), lossless sampling above (``seed``)."""
    for name, value, low in (("num_tokens", num_tokens, 1), ("max_ngram", max_ngram, 1), ("min_ngram", min_ngram, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if min_ngram > max_ngram:
        raise ValueError(f"min_ngram ({min_ngram}) must not exceed max_ngram ({max_ngram})")
    acceptance = resolve_acceptance(None, temperature, top_k, top_p, 0.09, 0.3)
    return speculative_generate(
        model, prompts, LookupDrafter(num_tokens, max_ngram, min_ngram, model.device), method="lookup",
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        stop_tokens=stop_tokens, stop_strings=stop_strings, tokenizer=tokenizer, stream=stream,
        acceptance=acceptance, page_size=page_size)
