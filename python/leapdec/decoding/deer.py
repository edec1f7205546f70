"""Method "deer": draft with diffusion, verify with the AR target (DEER, arXiv 2512.15176).

Each step ONE forward of the DEER drafter (``models.deer``, a small block-causal masked
diffusion Transformer with its own paged cache) proposes a whole block of ``block_size`` draft
tokens: it takes the tokens it has not seen yet (the accepted drafts and the new root, causal)
together with the block ``[BND, MASK, ...]`` (bidirectional, seeing the whole prefix), and the
root's and the block's outputs are the drafts. The target verifies the chain in one forward on
the speculative core: greedy (identical to greedy AR) or lossless speculative sampling with the
drafter's per-position distributions (drafts sampled independently per position). The block's
K/V is dropped after the step (``PagedKVCache.truncate``), so the drafter's cache only ever
holds the committed prefix.

``tree_topk=k`` (greedy) adds the block's top-k alternatives at the first ``tree_positions``
positions as siblings of the chain: a small tree the core verifies in the same forward.
"""

from __future__ import annotations

import torch

from leapdec.engine.companions import load_companion
from leapdec.engine.runner import close_session, open_sequences, plan_extend
from leapdec.engine.sampling import warp_logits
from leapdec.engine.spec import register_method
from leapdec.engine.speculative import Proposal, resolve_acceptance, speculative_generate
from leapdec.models.deer import KIND, DeerDrafter

_HINT = (": train one with `python -m leapdec.train deer --base <model>` or pass drafter= "
         "(a DeerDrafter or its folder)")


def load_drafter(model, drafter) -> DeerDrafter:
    """The DEER drafter: ``drafter`` (a ``DeerDrafter`` or its folder), else the ``deer/``
    companion beside the model; checked against the model's vocabulary, device and dtype."""

    def check(d: DeerDrafter) -> None:
        d.check_target(model)
        if d.device != model.device or d.dtype != model.dtype:
            raise ValueError(f"drafter: on {d.device} / {d.dtype}, the target on {model.device} / {model.dtype}")

    return load_companion(model, KIND, drafter, loaded_type=DeerDrafter, filename="model.safetensors",
                          load=lambda folder: DeerDrafter.load(folder, device=model.device, dtype=model.dtype,
                                                              target=model),
                          hint=_HINT, check=check, argument="drafter")


def block_tree(num_drafts: int, topk: int, positions: int) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """The draft tree of one step: a chain of ``num_drafts`` nodes plus ``topk - 1`` sibling
    alternatives at each of the first ``positions`` depths, nodes ordered by depth.

    Returns ``parents`` (node 0 the root), ``depth`` and, per node after the root, its
    (block position, rank) source: rank 0 is the chain's token, rank r the r-th alternative."""
    parents, depth, source = [-1], [0], []
    chain_node = 0                                   # the chain node at the previous depth
    for j in range(num_drafts):
        width = topk if j < positions else 1
        for r in range(width):
            parents.append(chain_node)
            depth.append(j + 1)
            source.append((j, r))
        chain_node = len(parents) - width            # the rank-0 node of this depth
    return parents, depth, source


class BlockDrafter:
    """Blocks of ``block_size`` drafts from a ``DeerDrafter`` with its own paged cache."""

    needs_hidden = False
    fixed_nodes = None

    def __init__(self, drafter: DeerDrafter, block_size: int, topk: int, positions: int, sampling: bool,
                 temperature: float, top_k, top_p, page_size: int):
        self.drafter, self.block_size, self.topk, self.positions = drafter, block_size, topk, positions
        self.sampling, self.temperature, self.top_k, self.top_p = sampling, temperature, top_k, top_p
        self.page_size = page_size
        self.max_nodes = len(block_tree(block_size, topk, positions)[0])
        self.session = None
        self.calls = 0

    def start(self, ctx, rows, hidden, offsets):
        self.session, self.seqs = open_sequences(
            self.drafter.lm, [len(r.prompt) + r.max_new_tokens + self.block_size + 1 for r in rows],
            self.page_size)
        self.generator = ctx.generator

    def close(self):
        self.session = close_session(self.session)

    def _block_logits(self, live, num_drafts: int) -> torch.Tensor:
        """One drafter forward: per row its unseen tokens (causal) and the block (bidirectional);
        logits ``[n, num_drafts, V]`` of the root and the block queries."""
        d, cache = self.drafter, self.session.cache
        seqs = [self.seqs[r.index] for r in live]
        block = ([d.boundary_token_id] + [d.mask_token_id] * (num_drafts - 2))[:num_drafts - 1]
        tokens, masks, rows_out, at = [], [], [], 0
        for r, s in zip(live, seqs):
            feed = r.tokens[cache.seq_len(s):]             # the root at least
            f, q = len(feed), len(feed) + len(block)
            m = torch.ones(q, q, dtype=torch.bool).tril()
            m[f:, :] = True                                # block rows see the prefix and the block
            m[:f, f:] = False                              # prefix rows never see the block
            tokens.append(feed + block)
            masks.append(m.reshape(-1))
            rows_out.extend(range(at + f - 1, at + q))     # the root, then the block queries
            at += q
        step = plan_extend(cache, seqs, tokens, custom_mask=torch.cat(masks), logits=rows_out)
        self.calls += 1
        return d.forward_paged(step, cache).reshape(len(live), num_drafts, -1)

    def propose(self, ctx, live) -> Proposal:
        device = ctx.model.device
        n = len(live)
        num_drafts = min(self.block_size, max(r.room for r in live) - 1)
        self.start_lens = [len(r.tokens) for r in live]                        # the root is last
        roots = torch.tensor([r.out[-1] for r in live], dtype=torch.long, device=device)
        if num_drafts < 1:                                 # the rows need only the bonus token
            zero = torch.zeros(n, 1, dtype=torch.int32, device=device)
            return Proposal(roots[:, None], zero - 1, zero.long(), sizes=[1] * n)
        logits = self._block_logits(live, num_drafts)                           # [n, D, V]
        parents, depth, source = block_tree(num_drafts, self.topk, self.positions)
        width = max(r for _, r in source) + 1
        probs = None
        if self.sampling:                                  # a chain: one draw per position
            probs = warp_logits(logits, self.temperature, self.top_k, self.top_p).softmax(dim=-1)
            picks = torch.multinomial(probs.reshape(n * num_drafts, -1), 1, generator=self.generator)
            picks = picks.view(n, num_drafts, 1)
        else:
            picks = logits.topk(width, dim=-1).indices if width > 1 else logits.argmax(-1, keepdim=True)
        pos = torch.tensor([j for j, _ in source], device=device)
        rank = torch.tensor([r for _, r in source], device=device)
        cand = torch.cat([roots[:, None], picks[:, pos, rank]], 1)               # [n, T]
        T = cand.shape[1]
        parents_t = torch.tensor(parents, dtype=torch.int32, device=device).expand(n, T)
        depth_t = torch.tensor(depth, device=device).expand(n, T)
        draft_probs = None
        if probs is not None:                              # node u's child was drawn from q[u]
            draft_probs = torch.cat([probs, torch.zeros_like(probs[:, :1])], 1)
        return Proposal(cand, parents_t, depth_t, draft_probs=draft_probs, sizes=[T] * n, draft_rule="iid")

    def accepted(self, ctx, live, verified):
        cache = self.session.cache
        for r, start in zip(live, self.start_lens):
            seq = self.seqs[r.index]
            cache.truncate(seq, min(start, cache.seq_len(seq)))        # drop the block's K/V

    def stats(self) -> dict:
        return {"drafter_calls": self.calls, "block_size": self.block_size, "tree_topk": self.topk}


def _positive_int(name: str, value, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (high is not None and value > high):
        bound = f" and <= {high}" if high is not None else ""
        raise ValueError(f"{name} must be an int >= 1{bound}, got {value!r}")
    return value


@register_method("deer", companion=KIND, recipe="deer", lossless=True)
def deer(model, prompts: list[list[int]], *, drafter=None, block_size: int | None = None, tree_topk: int | None = None,
         tree_positions: int = 2, max_new_tokens: int = 128, temperature: float = 0.0,
         top_k: int | None = None, top_p: float | None = None, seed: int | None = None, stop_tokens=None,
         stop_strings=None, tokenizer=None, stream=None, page_size: int = 16):
    """DEER: a diffusion drafter proposes ``block_size`` tokens in one step, the target verifies
    them in one forward (greedy = greedy AR; lossless sampling above temperature 0, ``seed``).
    ``drafter``: a DeerDrafter or its folder (default: the model's ``deer/`` companion).
    ``tree_topk`` > 1 adds alternatives at the first ``tree_positions`` positions (default: 3 when
    greedy, a chain when sampling; block 8 with top-3 at 2 positions was the fastest setting of
    the stdlib-ar drafter on CPU, benchmarks/RESULTS.md "DEER"). A drafter whose folder records
    ``decode_defaults`` (its recipe's measured best, e.g. SmolLM2's) supplies the defaults of
    ``block_size`` and greedy ``tree_topk`` instead. Stats add ``drafter_calls`` and the
    acceptance-length histogram."""
    acceptance = resolve_acceptance(None, temperature, top_k, top_p, 0.09, 0.3)
    d = load_drafter(model, drafter)
    defaults = d.meta.get("decode_defaults") or {}
    if block_size is None:
        block_size = min(int(defaults.get("block_size", 8)), d.max_block)
    _positive_int("block_size", block_size, d.max_block)
    if tree_topk is None:
        tree_topk = int(defaults.get("tree_topk", 3)) if acceptance == "greedy" else 1
    _positive_int("tree_topk", tree_topk, d.target_vocab_size)
    _positive_int("tree_positions", tree_positions)
    if tree_topk > 1 and acceptance != "greedy":
        raise ValueError("tree_topk > 1 (top-k alternatives) decodes greedily (temperature 0); "
                         "sampling drafts a chain (tree_topk=1)")
    if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size < 1:
        raise ValueError(f"page_size must be a positive int, got {page_size!r}")
    chain = BlockDrafter(d, block_size, tree_topk, tree_positions, acceptance == "sampling", temperature,
                         top_k, top_p, page_size)
    try:
        return speculative_generate(
            model, prompts, chain, method="deer", max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, stop_tokens=stop_tokens, stop_strings=stop_strings,
            tokenizer=tokenizer, stream=stream, acceptance=acceptance, page_size=page_size)
    finally:
        chain.close()
