"""The speculative core: one draft-verify-commit loop for every drafter (SGLang's speculative
worker in miniature).

A method is a ``Drafter`` plus its spec. Each step the drafter proposes a token tree per live
row (``Proposal``: node 0 is the row's last emitted token, the root, not yet in the cache;
``parents[i] < i``, -2 pads absent nodes, nodes ordered by depth). ``verify_and_commit`` cuts
each tree to the depth the row can still use, runs ONE target forward over every row's tree
(``build_tree`` ancestor mask, positions ``prefix_len + depth``), accepts a root path per row
(greedy: identical to greedy AR; ``typical``: Medusa's typical acceptance; ``sampling``:
lossless speculative sampling, seeded), moves the path's K/V into place
(``PagedKVCache.compact``), commits the gained tokens under the rows' stop rules and tells the
drafter what was accepted (with the target's hidden states of the accepted nodes).

Drafters: ``decoding.medusa`` (heads), ``decoding.falcon`` (semi-AR drafter), ``decoding.lookup``
(prompt n-grams).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Protocol

import torch

from leapdec.decoding.base import (check_sampling, make_generator, sample_next, stop_token_set,
                                   warp_logits)
from leapdec.engine.rows import Row, Rows, check_logits, model_tokenizer
from leapdec.engine.runner import Session, StaticSteps, pages_for, plan_extend
from leapdec.ops import build_tree, verify_tree_greedy, verify_tree_sampling, verify_tree_typical
from leapdec.trees import ABSENT_PARENT

ACCEPTANCE = ("greedy", "typical", "sampling")


@dataclass
class Proposal:
    """Draft trees of ``n`` live rows, ``T`` nodes each (absent nodes at the end of a row).

    ``candidates [n, T]`` int64 tokens (node 0: the row's last token), ``parents [n, T]`` int32,
    ``depth [n, T]`` int64, optional ``mask [n, T, T]`` bool ancestor mask (built with
    ``build_tree`` when None), optional ``draft_probs [n, T, V]`` (the drafter's distribution at
    each node for lossless sampling with sampled drafts; None: drafts are deterministic),
    optional ``sizes`` (present nodes per row, saves a count on the device)."""

    candidates: torch.Tensor
    parents: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor | None = None
    draft_probs: torch.Tensor | None = None
    sizes: list[int] | None = None       # present nodes per row (None: counted from parents)
    draft_rule: str = "iid"              # how sampled siblings were drawn (verify_tree_sampling)


@dataclass
class Verified:
    """What one verification step accepted, handed to ``Drafter.accepted``: per live row the
    accepted node ids from the root (``paths``), the gained tokens, and the target's final
    hidden states of every node that ran (``hidden [N, h]``; row j's node c is row
    ``offsets[j] + c``)."""

    paths: list[list[int]]
    gained: list[list[int]]
    hidden: torch.Tensor | None
    offsets: list[int]


class Drafter(Protocol):
    """What a speculative method implements. ``needs_hidden``: the target's hidden states are
    passed to ``start`` and ``accepted``. ``max_nodes``: the largest tree (root included) it
    proposes, for cache sizing. ``fixed_nodes``: every proposal has exactly this many nodes
    (fixed-shape verify steps, CUDA graphs), or None."""

    needs_hidden: bool
    max_nodes: int
    fixed_nodes: int | None

    def start(self, ctx: "SpecContext", rows: list[Row], hidden: torch.Tensor | None,
              offsets: list[int]) -> None:
        """After the prefill: ``hidden [sum prompt lens, h]``, row i's prompt from ``offsets[i]``."""

    def propose(self, ctx: "SpecContext", live: list[Row]) -> Proposal:
        """Draft trees for the live rows (each row's last token ``row.out[-1]`` is the root)."""

    def accepted(self, ctx: "SpecContext", live: list[Row], verified: Verified) -> None:
        """Update the drafter's state with the accepted paths."""

    def stats(self) -> dict:
        """Extra statistics of the drafter."""


@dataclass
class SpecContext:
    """The state the core shares with a drafter: the model, the session (cache), each row's cache
    sequence (by row index), the sampling settings and the generator."""

    model: object
    session: Session
    seqs: list[int]
    temperature: float
    top_k: int | None
    top_p: float | None
    generator: torch.Generator | None
    acceptance: str
    posterior_threshold: float = 0.09
    posterior_alpha: float = 0.3
    static: StaticSteps | None = None
    steps: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def cache(self):
        return self.session.cache


def resolve_acceptance(acceptance, temperature, top_k, top_p, posterior_threshold, posterior_alpha,
                       allowed=ACCEPTANCE) -> str:
    """Check the sampling options and pick the acceptance rule (greedy at temperature 0,
    lossless sampling above)."""
    check_sampling(temperature, top_k, top_p)
    if acceptance is None:
        acceptance = "greedy" if temperature == 0 else "sampling"
    if acceptance not in allowed:
        raise ValueError(f"acceptance must be one of {allowed}, got {acceptance!r}")
    if acceptance == "greedy" and temperature != 0:
        raise ValueError("acceptance='greedy' decodes at temperature 0; use acceptance='sampling' "
                         "or 'typical' with temperature > 0")
    if acceptance in ("typical", "sampling") and temperature == 0:
        raise ValueError(f"acceptance={acceptance!r} needs temperature > 0 (temperature 0 is greedy)")
    if acceptance == "typical":
        if top_k is not None or top_p is not None:
            raise ValueError("top_k / top_p apply to acceptance='sampling', not 'typical'")
        if not 0 < posterior_threshold <= 1:
            raise ValueError(f"posterior_threshold must be in (0, 1], got {posterior_threshold}")
        if not posterior_alpha > 0:
            raise ValueError(f"posterior_alpha must be > 0, got {posterior_alpha}")
    return acceptance


def _tree_step(ctx: SpecContext, live: list[Row], prop: Proposal, parents_cut: torch.Tensor,
               sizes: list[int], cand_rows: list[list[int]], depth_rows: list[list[int]],
               starts: list[int], need_hidden: bool):
    """One target forward over the live rows' trees; returns logits, hidden, per-row offsets."""
    model, cache = ctx.model, ctx.cache
    n, T = prop.candidates.shape
    seqs = [ctx.seqs[r.index] for r in live]
    if ctx.static is not None and T == ctx.static.q:
        # fixed shape: every row runs all T nodes (cut or absent nodes are computed, never accepted)
        mask = prop.mask if prop.mask is not None else build_tree(prop.parents.to(torch.int32))[0]
        cache.append(seqs, [T] * n)
        pages = [cache.pages(s) for s in seqs]
        tokens = [t for row in cand_rows for t in row]
        positions = [st + d for st, row in zip(starts, depth_rows) for d in row]
        step = ctx.static.get(n, max(map(len, pages)))
        out = step.run(tokens, positions, starts, pages, mask)
        logits, hidden = out if step.return_hidden else (out, None)
        return logits, hidden, [j * T for j in range(n)]
    mask = prop.mask if prop.mask is not None else build_tree(parents_cut)[0]
    if all(s == T for s in sizes):
        custom = mask.reshape(-1)
        tokens = cand_rows
        positions = [[st + d for d in row] for st, row in zip(starts, depth_rows)]
    else:
        custom = torch.cat([mask[j, :s, :s].reshape(-1) for j, s in enumerate(sizes)])
        tokens = [row[:s] for row, s in zip(cand_rows, sizes)]
        positions = [[st + d for d in row[:s]] for st, row, s in zip(starts, depth_rows, sizes)]
    step = plan_extend(cache, seqs, tokens, positions=positions, custom_mask=custom)
    out = model.forward_paged(step, cache, return_hidden=need_hidden)
    logits, hidden = out if need_hidden else (out, None)
    offsets = [0]
    for s in sizes[:-1]:
        offsets.append(offsets[-1] + s)
    return logits, hidden, offsets


def cut_to_room(live: list[Row], prop: Proposal, device) -> tuple[list[int], list[int], torch.Tensor,
                                                                     list[list[int]], list[list[int]]]:
    """Each row's present nodes, cut to the depth the row can still use (a row with r tokens of
    room keeps the nodes of depth <= r - 1, a prefix: nodes are ordered by depth). Returns the
    full and cut sizes, the cut parents (int32 on ``device``) and the candidates / depths as lists."""
    T = prop.candidates.shape[1]
    cand_rows, depth_rows = prop.candidates.tolist(), prop.depth.tolist()
    full = prop.sizes if prop.sizes is not None else (prop.parents != ABSENT_PARENT).sum(1).tolist()
    sizes = [size if d[size - 1] < r.room else bisect.bisect_right(d, r.room - 1, 0, size)
             for r, d, size in zip(live, depth_rows, full)]
    parents = prop.parents.to(device=device, dtype=torch.int32)
    if sizes != full:
        keep = torch.arange(T, device=device)[None, :] < torch.tensor(sizes, device=device)[:, None]
        parents = torch.where(keep, parents, torch.full_like(parents, ABSENT_PARENT))
    return full, sizes, parents, cand_rows, depth_rows


def accept_paths(ctx: SpecContext, candidates: torch.Tensor, parents: torch.Tensor,
                 node_logits: torch.Tensor, draft_probs: torch.Tensor | None = None,
                 draft_rule: str = "iid") -> list[list[int]]:
    """The acceptance rule of ``ctx`` over trees ``[n, T]`` with the target's logits at each node
    ``[n, T, V]``: per row ``[accept_len, bonus, node ids of the accepted path...]`` (one host
    sync). Greedy, Medusa's typical acceptance, or lossless speculative sampling."""
    if ctx.acceptance == "greedy":
        result = verify_tree_greedy(candidates, parents, node_logits.argmax(dim=-1))
    elif ctx.acceptance == "typical":
        result = verify_tree_typical(candidates, parents, node_logits, ctx.posterior_threshold,
                                     ctx.posterior_alpha, ctx.temperature)
    else:
        probs = warp_logits(node_logits, ctx.temperature, ctx.top_k, ctx.top_p).softmax(dim=-1)
        rule = "deterministic" if draft_probs is None else draft_rule
        result = verify_tree_sampling(candidates, parents, draft_probs, probs,
                                      draft_rule=rule, generator=ctx.generator)
    return torch.cat([result.accept_len[:, None].long(), result.bonus[:, None].long(),
                      result.accept_index.long()], 1).tolist()


def commit_paths(ctx: SpecContext, rows: Rows, live: list[Row], packed: list[list[int]],
                 cand_rows: list[list[int]], starts: list[int], ran: list[int] | None = None):
    """Move each accepted path's K/V into place and commit its tokens plus the bonus token.
    ``ran[j]``: how many of row j's nodes the target ran (default: all); nodes from there on are
    verified with their parent's logits but hold no K/V, and a path that ends on one gains no
    bonus (its logits were never computed). Returns (paths, gained)."""
    paths, gained = [], []
    cache = ctx.cache
    for j, row in enumerate(live):
        acc_len, bonus = packed[j][0], packed[j][1]
        path = packed[j][2:2 + acc_len]
        limit = len(cand_rows[j]) if ran is None else ran[j]
        seq = ctx.seqs[row.index]
        cache.compact(seq, starts[j], [starts[j] + c for c in path if c < limit])
        paths.append(path)
        gained.append([cand_rows[j][c] for c in path[1:]] + ([bonus] if path[-1] < limit else []))
    rows.commit_call(live, gained, speculative=True)
    ctx.steps += 1
    return paths, gained


def gather_node_logits(logits: torch.Tensor, n: int, T: int, sizes: list[int], offsets: list[int]):
    """Flat logits of the rows' nodes ``[sum sizes, V]`` as ``[n, T, V]`` (absent nodes repeat a
    row's last present node)."""
    if logits.shape[0] == n * T:                       # every row ran all T nodes: a plain view
        return logits.view(n, T, -1)
    device = logits.device
    offs_t = torch.tensor(offsets, device=device)
    node = torch.arange(T, device=device)
    size_t = torch.tensor(sizes, device=device)
    return logits[offs_t[:, None] + torch.minimum(node[None, :], size_t[:, None] - 1)]


def verify_and_commit(ctx: SpecContext, rows: Rows, live: list[Row], prop: Proposal,
                      need_hidden: bool, method: str) -> Verified:
    """Verify the proposal with one target forward, compact the cache, commit the gained tokens."""
    device = ctx.model.device
    n, T = prop.candidates.shape
    full, sizes, parents, cand_rows, depth_rows = cut_to_room(live, prop, device)
    seqs = [ctx.seqs[r.index] for r in live]
    starts = [ctx.cache.seq_len(s) for s in seqs]
    logits, hidden, offsets = _tree_step(ctx, live, prop, parents, sizes, cand_rows, depth_rows, starts,
                                         need_hidden)
    check_logits(logits, method, ctx.steps + 1)
    node_logits = gather_node_logits(logits, n, T, sizes, offsets)
    packed = accept_paths(ctx, prop.candidates.to(device), parents, node_logits, prop.draft_probs,
                          prop.draft_rule)
    paths, gained = commit_paths(ctx, rows, live, packed, cand_rows, starts)
    return Verified(paths, gained, hidden, offsets)


def prefill(ctx: SpecContext, rows: Rows, prompts: list[list[int]], need_hidden: bool, method: str):
    """Every prompt in one target forward; commits each row's first token (greedy, or sampled
    under ``acceptance="sampling"``). Returns the hidden states (or None) and each prompt's
    offset in them."""
    step = plan_extend(ctx.cache, ctx.seqs, prompts, logits="last")
    out = ctx.model.forward_paged(step, ctx.cache, return_hidden=need_hidden)
    logits, hidden = out if need_hidden else (out, None)
    check_logits(logits, method, 0)
    if ctx.acceptance == "sampling":
        first = sample_next(logits, ctx.temperature, ctx.top_k, ctx.top_p, ctx.generator).tolist()
    else:
        first = logits.argmax(dim=-1).tolist()
    rows.commit_call(rows.rows, [[t] for t in first])
    offsets = [0]
    for p in prompts[:-1]:
        offsets.append(offsets[-1] + len(p))
    return hidden, offsets


def speculative_generate(model, prompts: list[list[int]], drafter: Drafter, *, method: str,
                         max_new_tokens: int = 128, temperature: float = 0.0, top_k=None, top_p=None,
                         seed=None, stop_tokens=None, stop_strings=None, tokenizer=None, stream=None,
                         acceptance: str = "greedy", posterior_threshold: float = 0.09,
                         posterior_alpha: float = 0.3, page_size: int = 16,
                         static_steps: bool | None = None, extra_stats: dict | None = None):
    """Prefill, then draft / verify / commit until every row is done. ``static_steps``
    (default: on CUDA when the drafter's trees have a fixed size) runs verification as a
    fixed-shape step, captured in a CUDA graph on CUDA."""
    if not model.config.causal:
        raise ValueError(f"method {method!r} needs a causal model; this one is a masked diffusion LM "
                         f"(config.causal is False)")
    if tokenizer is None and stop_strings:
        tokenizer = model_tokenizer(model)
    rows = Rows(prompts, max_new_tokens, stop_token_set(model, stop_tokens), stop_strings,
                tokenizer if tokenizer is not None else model_tokenizer(model), stream)

    def finish():
        return rows.output(acceptance=acceptance, **rows.acceptance_stats(), **drafter.stats(),
                           **(extra_stats or {}))

    if max_new_tokens == 0:
        return finish()
    device = model.device
    if static_steps is None:
        static_steps = device.type == "cuda" and drafter.fixed_nodes is not None
    elif static_steps and drafter.fixed_nodes is None:
        raise ValueError(f"static_steps=True needs a drafter with a fixed tree size ({method})")
    ps = page_size
    extra = drafter.max_nodes + 1
    need = sum(pages_for(len(p) + max_new_tokens + extra, ps) + 1 for p in prompts)
    gen = make_generator(seed, device)
    with Session(model, need, ps) as session, torch.no_grad():
        cache = session.cache
        seqs = [session.new_sequence() for _ in prompts]
        ctx = SpecContext(model, session, seqs, temperature, top_k, top_p, gen, acceptance,
                          posterior_threshold, posterior_alpha)
        if static_steps:
            ctx.static = StaticSteps(session, f"tree-{method}", drafter.fixed_nodes, custom=True,
                                     return_hidden=drafter.needs_hidden)
        hidden, offsets = prefill(ctx, rows, prompts, drafter.needs_hidden, method)
        drafter.start(ctx, rows.rows, hidden, offsets)
        # ---- speculative steps
        live = rows.live
        while live:
            prop = drafter.propose(ctx, live)
            verified = verify_and_commit(ctx, rows, live, prop, drafter.needs_hidden, method)
            drafter.accepted(ctx, live, verified)
            live = rows.live
        return finish()
