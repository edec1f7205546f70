"""Draft trees for tree speculative decoding (host side, plain torch).

The ops (``leapdec.ops.build_tree`` / ``verify_tree_*``) take a tree as ``parents [B, T]``:
node 0 is the root (the last accepted token), ``parents[i] < i``, -2 pads absent nodes. This
module makes those trees:

- **static trees** from Medusa-style choice lists: a node is a path of top-k ranks, one per
  level (``(0, 1)`` = rank 1 under rank 0 of the root). :func:`tree_from_choices` sorts the
  paths by (length, values) as Medusa does, so parents come before children; the tree gives
  each node its head (= depth - 1) and rank, fills candidates from per-head top-k tables
  (Medusa) or level by level from per-node top-k tables (EAGLE-1 / Falcon static trees).
  :data:`MC_SIM_7B_63` is Medusa's 63-choice tree; :func:`medusa_tree` takes its prefixes
  (the list is in greedy expected-acceptance order, so each prefix is a good smaller tree),
  :func:`greedy_tree` builds the best tree of a size for a head-accuracy table, and
  :func:`chain_tree` is a plain chain.
- **dynamic trees** (EAGLE-2): :class:`DynamicTree` grows a tree one drafter call at a time,
  expanding the top-k frontier by cumulative log-probability, then keeps the best N nodes.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch

ROOT_PARENT = -1
ABSENT_PARENT = -2

# Medusa's tree for Vicuna-7B, found by simulation (FasterDecoding/Medusa,
# medusa/model/medusa_choices.py, ``mc_sim_7b_63``): 63 draft nodes plus the root. The paths
# are listed in the order the greedy search added them, so every prefix is itself a tree.
MC_SIM_7B_63: tuple[tuple[int, ...], ...] = (
    (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3), (4,), (0, 4),
    (2, 0), (0, 5), (0, 0, 1), (5,), (0, 6), (6,), (0, 7), (0, 1, 0), (1, 1), (7,), (0, 8),
    (0, 0, 2), (3, 0), (0, 9), (8,), (9,), (1, 0, 0), (0, 2, 0), (1, 2), (0, 0, 3), (4, 0),
    (2, 1), (0, 0, 4), (0, 0, 5), (0, 0, 0, 0), (0, 1, 1), (0, 0, 6), (0, 3, 0), (5, 0),
    (1, 3), (0, 0, 7), (0, 0, 8), (0, 0, 9), (6, 0), (0, 4, 0), (1, 4), (7, 0), (0, 1, 2),
    (2, 0, 0), (3, 1), (2, 2), (8, 0), (0, 5, 0), (1, 5), (1, 0, 1), (0, 2, 1), (9, 0),
    (0, 6, 0), (0, 0, 0, 1), (1, 6), (0, 7, 0),
)


@dataclass(frozen=True)
class StaticTree:
    """A fixed draft tree. Node 0 is the root; node i > 0 is ``choices[i - 1]``."""

    choices: tuple[tuple[int, ...], ...]  # sorted by (length, values)
    parents: torch.Tensor                 # [T] int32, parents[0] = -1
    depth: torch.Tensor                   # [T] int32, root 0
    head: torch.Tensor                    # [T] int32: the Medusa head proposing the node (depth - 1); root -1
    rank: torch.Tensor                    # [T] int32: its top-k rank among its parent's proposals; root -1

    @property
    def num_nodes(self) -> int:
        return int(self.parents.shape[0])

    @property
    def max_depth(self) -> int:
        return int(self.depth.max())

    @property
    def topk(self) -> int:
        """Top-k entries each level must provide (max rank + 1)."""
        return int(self.rank.max()) + 1 if self.num_nodes > 1 else 0

    def batch_parents(self, batch: int, device=None) -> torch.Tensor:
        """``[batch, T]`` int32 parents for the ops."""
        return self.parents.to(device).expand(batch, -1).contiguous()

    def nodes_at_depth(self, depth: int) -> torch.Tensor:
        """Node ids at ``depth``, ascending."""
        return (self.depth == depth).nonzero().flatten()

    def fill_candidates(self, root_tokens: torch.Tensor, head_topk: torch.Tensor) -> torch.Tensor:
        """Medusa: ``candidates [B, T]`` with the root token and, at node n, rank ``rank[n]`` of
        head ``head[n]``'s top-k: ``head_topk [B, H, K]`` (token ids, best first)."""
        batch, heads, k = head_topk.shape
        if self.num_nodes > 1 and (heads < self.max_depth or k < self.topk):
            raise ValueError(f"head_topk must be [B, >= {self.max_depth}, >= {self.topk}] for this tree, "
                             f"got {tuple(head_topk.shape)}")
        cand = torch.empty(batch, self.num_nodes, dtype=torch.int64, device=head_topk.device)
        cand[:, 0] = root_tokens.reshape(batch)
        if self.num_nodes > 1:
            head, rank = self.head[1:].long().to(head_topk.device), self.rank[1:].long().to(head_topk.device)
            cand[:, 1:] = head_topk[:, head, rank]
        return cand

    def fill_level(self, candidates: torch.Tensor, depth: int, parent_topk: torch.Tensor) -> torch.Tensor:
        """EAGLE-1 / Falcon: fill the nodes at ``depth`` (in place) from the drafter's top-k at
        their parents, ``parent_topk [B, P, K]`` in the order of ``nodes_at_depth(depth - 1)``."""
        if depth < 1:
            raise ValueError(f"depth must be >= 1 (the root is given), got {depth}")
        parent_nodes = self.nodes_at_depth(depth - 1)
        nodes = self.nodes_at_depth(depth)
        if parent_topk.shape[1] != parent_nodes.numel():
            raise ValueError(f"parent_topk must have one row per node at depth {depth - 1} "
                             f"({parent_nodes.numel()}), got {tuple(parent_topk.shape)}")
        slot = torch.full((self.num_nodes,), -1, dtype=torch.long)
        slot[parent_nodes] = torch.arange(parent_nodes.numel())
        rows = slot[self.parents[nodes].long()].to(parent_topk.device)
        ranks = self.rank[nodes].long().to(parent_topk.device)
        candidates[:, nodes.to(candidates.device)] = parent_topk[:, rows, ranks].to(candidates.dtype)
        return candidates

    def leaf_paths(self) -> list[list[int]]:
        """Every root-to-leaf path as node ids (Medusa's ``retrieve_indices``, unpadded)."""
        parents = self.parents.tolist()
        has_child = set(p for p in parents[1:])
        paths = []
        for leaf in range(self.num_nodes):
            if leaf in has_child:
                continue
            path = [leaf]
            while path[-1] != 0:
                path.append(parents[path[-1]])
            paths.append(path[::-1])
        return paths

    def expected_accept_length(self, accuracy) -> float:
        """Expected ``accept_len`` (tokens per step, bonus included) if head h's rank-k token is
        right with probability ``accuracy[h][k]`` independently across heads."""
        acc = torch.as_tensor(accuracy, dtype=torch.float64)
        total = 1.0
        for path in self.choices:
            prob = 1.0
            for h, k in enumerate(path):
                prob *= float(acc[h, k]) if h < acc.shape[0] and k < acc.shape[1] else 0.0
            total += prob
        return total


def tree_from_choices(choices: Sequence[Sequence[int]]) -> StaticTree:
    """A :class:`StaticTree` from Medusa-style paths (any order); every prefix of a path must be
    a path too, ranks are >= 0, no duplicates."""
    paths = [tuple(int(v) for v in c) for c in choices]
    seen = set(paths)
    if len(seen) != len(paths):
        raise ValueError("choices holds a duplicate path")
    for path in paths:
        if not path:
            raise ValueError("choices holds an empty path (the root is implicit)")
        if min(path) < 0:
            raise ValueError(f"choice {path} has a negative rank")
        if len(path) > 1 and path[:-1] not in seen:
            raise ValueError(f"choice {path} has no parent {path[:-1]} in choices")
    paths.sort(key=lambda p: (len(p), p))
    index = {p: i + 1 for i, p in enumerate(paths)}
    parents = [ROOT_PARENT] + [index[p[:-1]] if len(p) > 1 else 0 for p in paths]
    return StaticTree(
        choices=tuple(paths),
        parents=torch.tensor(parents, dtype=torch.int32),
        depth=torch.tensor([0] + [len(p) for p in paths], dtype=torch.int32),
        head=torch.tensor([-1] + [len(p) - 1 for p in paths], dtype=torch.int32),
        rank=torch.tensor([-1] + [p[-1] for p in paths], dtype=torch.int32),
    )


def chain_tree(num_draft: int) -> StaticTree:
    """A chain of ``num_draft`` draft tokens (the top-1 of each level)."""
    if num_draft < 0:
        raise ValueError(f"num_draft must be >= 0, got {num_draft}")
    return tree_from_choices([(0,) * d for d in range(1, num_draft + 1)])


def medusa_tree(num_draft: int = 63) -> StaticTree:
    """The first ``num_draft`` paths of :data:`MC_SIM_7B_63` (e.g. 8, 16, 32 or all 63)."""
    if not 0 <= num_draft <= len(MC_SIM_7B_63):
        raise ValueError(f"num_draft must be in [0, {len(MC_SIM_7B_63)}], got {num_draft}")
    return tree_from_choices(MC_SIM_7B_63[:num_draft])


def greedy_tree(accuracy, num_draft: int) -> StaticTree:
    """The tree of ``num_draft`` nodes with the highest expected acceptance length when head h's
    rank-k token is right with probability ``accuracy[h][k]`` (``[H, K]``, measured on held-out
    data as Medusa does). A node is accepted with the product of the accuracies along its path;
    as that product only shrinks going down, taking the best nodes one at a time from the
    frontier (best-first) is optimal. Ties go to the (length, values)-smaller path."""
    acc = torch.as_tensor(accuracy, dtype=torch.float64)
    if acc.dim() != 2 or not bool(((acc >= 0) & (acc <= 1)).all()):
        raise ValueError("accuracy must be a [heads, topk] table of probabilities")
    heads, k = acc.shape
    frontier = [(-float(acc[0, r]), (r,)) for r in range(k)] if heads else []
    heapq.heapify(frontier)
    chosen: list[tuple[int, ...]] = []
    while frontier and len(chosen) < num_draft:
        neg_value, path = heapq.heappop(frontier)
        chosen.append(path)
        if len(path) < heads:
            for r in range(k):
                heapq.heappush(frontier, (neg_value * float(acc[len(path), r]), path + (r,)))
    return tree_from_choices(chosen)


def pad_parents(trees: Sequence[torch.Tensor | StaticTree], num_nodes: int | None = None) -> torch.Tensor:
    """Stack trees of different sizes into ``[B, T]`` int32 parents, padding with -2 (absent)."""
    rows = [t.parents if isinstance(t, StaticTree) else torch.as_tensor(t, dtype=torch.int32) for t in trees]
    width = max(r.numel() for r in rows) if num_nodes is None else num_nodes
    out = torch.full((len(rows), width), ABSENT_PARENT, dtype=torch.int32)
    for b, r in enumerate(rows):
        if r.numel() > width:
            raise ValueError(f"tree {b} has {r.numel()} nodes, more than num_nodes={width}")
        out[b, : r.numel()] = r.cpu()
    return out


class DraftSelection(NamedTuple):
    parents: torch.Tensor  # [B, N+1] int32 parents for the ops (node 0 = root)
    tokens: torch.Tensor   # [B, N+1] int64 candidates (tokens[:, 0] = root token)
    nodes: torch.Tensor    # [B, N+1] int64 ids of the kept nodes in the grown tree (ascending)
    scores: torch.Tensor   # [B, N+1] float32 cumulative draft log-probabilities (root 0)


class DynamicTree:
    """An EAGLE-2 dynamic draft tree for B requests, grown one drafter call at a time.

    Each call of :meth:`expand` takes the drafter's next-token log-probabilities at the current
    frontier nodes, adds the top-k children of every frontier node (score = parent score +
    child log-prob), and makes the k best new nodes (by cumulative score) the next frontier.
    :meth:`select` keeps the best ``num_draft`` nodes overall; a child never outscores its
    parent, so the kept nodes form a tree. EAGLE-2's defaults (``top_k=10``, ``depth=7``,
    ``total_token=60``) are 8 :meth:`expand` calls (the root's plus 7) and ``select(60)``.

    Nodes are numbered in creation order, so a parent's id is below its children's.
    """

    def __init__(self, root_tokens: torch.Tensor, top_k: int = 10):
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        root_tokens = torch.as_tensor(root_tokens).reshape(-1).long()
        batch, device = root_tokens.shape[0], root_tokens.device
        self.top_k = top_k
        self.tokens = root_tokens[:, None].clone()                                   # [B, N]
        self.parents = torch.full((batch, 1), ROOT_PARENT, dtype=torch.int64, device=device)
        self.depth = torch.zeros(batch, 1, dtype=torch.int64, device=device)
        self.scores = torch.zeros(batch, 1, dtype=torch.float32, device=device)
        self.frontier = torch.zeros(batch, 1, dtype=torch.int64, device=device)     # [B, F] node ids

    @property
    def num_nodes(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def frontier_tokens(self) -> torch.Tensor:
        """``[B, F]`` tokens of the frontier: the drafter's inputs for the next :meth:`expand`."""
        return self.tokens.gather(1, self.frontier)

    @property
    def frontier_depth(self) -> torch.Tensor:
        """``[B, F]`` depth of the frontier nodes (their position offset after the root)."""
        return self.depth.gather(1, self.frontier)

    def expand(self, logprobs: torch.Tensor) -> None:
        """Grow the tree by one level from ``logprobs [B, F, V]`` (log-softmax of the drafter
        at each frontier node, in frontier order)."""
        batch, width = self.frontier.shape
        if logprobs.dim() != 3 or logprobs.shape[:2] != (batch, width):
            raise ValueError(f"logprobs must be [B={batch}, F={width}, V], got {tuple(logprobs.shape)}")
        k = min(self.top_k, logprobs.shape[-1])
        child_lp, child_tok = logprobs.float().topk(k, dim=-1)                        # [B, F, k]
        if bool((child_lp > 1e-4).any()):
            raise ValueError("logprobs must be log-probabilities (<= 0), e.g. the drafter's log_softmax")
        child_lp = child_lp.clamp(max=0.0)
        child_scores = self.scores.gather(1, self.frontier)[..., None] + child_lp      # [B, F, k]
        first = self.num_nodes
        self.tokens = torch.cat([self.tokens, child_tok.flatten(1)], 1)
        self.parents = torch.cat([self.parents, self.frontier[..., None].expand(-1, -1, k).flatten(1)], 1)
        child_depth = (self.frontier_depth + 1)[..., None].expand(-1, -1, k)
        self.depth = torch.cat([self.depth, child_depth.flatten(1)], 1)
        self.scores = torch.cat([self.scores, child_scores.flatten(1)], 1)
        order = torch.sort(-child_scores.flatten(1), dim=1, stable=True).indices[:, : self.top_k]
        self.frontier = first + order.sort(dim=1).values

    def select(self, num_draft: int) -> DraftSelection:
        """Keep the root and the ``num_draft`` best nodes (all of them if fewer exist), ties to
        the older node; returns them in creation order with parents re-indexed for the ops."""
        keep_n = min(num_draft + 1, self.num_nodes)
        scores = self.scores.clone()
        scores[:, 0] = float("inf")
        keep = torch.sort(-scores, dim=1, stable=True).indices[:, :keep_n].sort(dim=1).values  # [B, n]
        new_index = torch.full_like(self.parents, -1)
        new_index.scatter_(1, keep, torch.arange(keep_n, device=keep.device).expand(keep.shape[0], -1))
        old_parents = self.parents.gather(1, keep)
        parents = torch.where(old_parents >= 0, new_index.gather(1, old_parents.clamp(min=0)),
                              torch.full_like(old_parents, ROOT_PARENT))
        if bool((parents[:, 1:] < 0).any()):
            raise RuntimeError("a kept node lost its parent; the scores are not monotone along paths")
        return DraftSelection(parents.to(torch.int32), self.tokens.gather(1, keep), keep,
                              self.scores.gather(1, keep))


def grow_dynamic_tree(root_tokens: torch.Tensor, draft_logprobs: Callable[[DynamicTree], torch.Tensor],
                      num_levels: int = 8, top_k: int = 10, num_draft: int = 60) -> DraftSelection:
    """EAGLE-2's draft step: ``num_levels`` calls of ``draft_logprobs(tree) -> [B, F, V]`` (the
    drafter run on ``tree.frontier_tokens``), then the best ``num_draft`` nodes."""
    tree = DynamicTree(root_tokens, top_k)
    for _ in range(num_levels):
        tree.expand(draft_logprobs(tree))
    return tree.select(num_draft)
