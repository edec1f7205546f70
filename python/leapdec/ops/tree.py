"""Tree speculative decoding: ``build_tree`` and ``verify_tree_{greedy,typical,sampling}``.

A batch of draft trees is ``parents [B, T]`` (int32): node 0 is the root (the last accepted
token, ``parents[b, 0] = -1``), node ``i > 0`` hangs under ``0 <= parents[b, i] < i``, and
``parents[b, i] = -2`` marks an absent node (padding of a smaller tree). A chain of n draft
tokens is ``parents = [-1, 0, 1, ..., n-1]``. ``candidates [B, T]`` holds each node's token
(the root's entry is the last accepted token and is not verified).

Every verify op returns a :class:`TreeVerification`: ``accept_len [B]`` counts the accepted
nodes *including the root*, which equals the tokens gained this step (the accepted draft tokens
plus the bonus token); ``accept_index [B, T]`` lists the accepted nodes from the root (-1
padded), so the new tokens are ``candidates[b, accept_index[b, 1:accept_len[b]]]`` followed by
``bonus[b]``, the target's token after the last accepted node.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from leapdec.ops._lib import OPS, as_int32, should_check_cuda_values

ROOT_PARENT = -1
ABSENT_PARENT = -2
DRAFT_RULES = ("iid", "without_replacement", "deterministic")


class TreeVerification(NamedTuple):
    accept_len: torch.Tensor    # [B] int32: accepted nodes incl. the root = tokens gained this step
    accept_index: torch.Tensor  # [B, T] int32: accepted nodes from the root, -1 padded
    bonus: torch.Tensor         # [B] int64: the target's token after the last accepted node


def _parents_arg(parents) -> torch.Tensor:
    parents = as_int32(parents, "parents")
    if parents.dim() != 2 or parents.shape[1] < 1:
        raise ValueError(f"parents must be a 2-D [B, T] tree tensor with T >= 1, "
                         f"got shape {tuple(parents.shape)}")
    return parents


def _tokens_arg(t, name: str, parents: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype == torch.int32:
        t = t.to(torch.int64)
    elif t.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 (or int32) token tensor, got {t.dtype}")
    if t.shape != parents.shape:
        raise ValueError(f"{name} must have the shape of parents {tuple(parents.shape)}, "
                         f"got {tuple(t.shape)}")
    return t.contiguous()


def check_tree_parents(parents: torch.Tensor) -> None:
    """Raise if ``parents [B, T]`` is not a valid batch of trees (the rules above).

    The CPU ops run the same check in C++; the wrappers call this one for CUDA tensors (it
    reads the values on the host, so it is skipped during graph capture and compilation)."""
    p = parents.detach().to("cpu", torch.int64)
    bad_root = (p[:, 0] != ROOT_PARENT).nonzero()
    if bad_root.numel():
        b = int(bad_root[0, 0])
        raise RuntimeError(f"parents[{b}][0] must be -1 (node 0 is the root), got {int(p[b, 0])}")
    node = torch.arange(p.shape[1])
    ok = (p == ABSENT_PARENT) | ((p >= 0) & (p < node))
    ok[:, 0] = True
    bad = (~ok).nonzero()
    if bad.numel():
        b, i = (int(v) for v in bad[0])
        raise RuntimeError(f"parents[{b}][{i}] = {int(p[b, i])} is invalid: a node's parent must be an "
                           f"earlier node (0 <= parent < {i}), or -2 for an absent node; "
                           f"only node 0 is the root")
    present = p != ABSENT_PARENT
    parent_present = torch.gather(present, 1, p.clamp(min=0))
    bad = (present & ~parent_present).nonzero()
    if bad.numel():
        b, i = (int(v) for v in bad[0])
        v = int(p[b, i])
        raise RuntimeError(f"parents[{b}][{i}] = {v} names an absent node (parents[{b}][{v}] = -2)")


def _check_candidates_on_host(candidates, parents, vocab: int) -> None:
    c, p = candidates.cpu(), parents.cpu()
    node = torch.arange(p.shape[1])
    bad = ((node > 0) & (p != ABSENT_PARENT) & ((c < 0) | (c >= vocab))).nonzero()
    if bad.numel():
        b, i = (int(v) for v in bad[0])
        raise RuntimeError(f"candidates[{b}][{i}] = {int(c[b, i])} is out of the vocabulary [0, {vocab})")


def _outputs(parents: torch.Tensor):
    batch, num_nodes = parents.shape
    return (torch.empty(batch, dtype=torch.int32, device=parents.device),
            torch.empty(batch, num_nodes, dtype=torch.int32, device=parents.device),
            torch.empty(batch, dtype=torch.int64, device=parents.device))


def build_tree(parents) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestor mask ``[B, T, T]`` bool and depth ``[B, T]`` int32 of the trees ``parents [B, T]``.

    ``mask[b, i, j]`` is true iff node j is node i or one of its ancestors: the tree-attention
    mask among the draft nodes (``paged_attention(mask_mode="custom")``). ``depth`` is the
    root distance (position offset); absent nodes get an all-false row and column and depth -1.
    """
    parents = _parents_arg(parents)
    if should_check_cuda_values(parents):
        check_tree_parents(parents)
    batch, num_nodes = parents.shape
    mask = torch.empty(batch, num_nodes, num_nodes, dtype=torch.bool, device=parents.device)
    depth = torch.empty(batch, num_nodes, dtype=torch.int32, device=parents.device)
    OPS.build_tree(mask, depth, parents)
    return mask, depth


def verify_tree_greedy(candidates, parents, target_tokens) -> TreeVerification:
    """Greedy (lossless at temperature 0) tree verification.

    ``target_tokens[b, u]`` is the target's argmax after node u. From the root, child c of the
    current node u is accepted when ``candidates[b, c] == target_tokens[b, u]`` (the first such
    child in index order); ``bonus = target_tokens[b, last accepted node]``.
    """
    parents = _parents_arg(parents)
    candidates = _tokens_arg(candidates, "candidates", parents)
    target_tokens = _tokens_arg(target_tokens, "target_tokens", parents)
    if should_check_cuda_values(parents):
        check_tree_parents(parents)
    accept_len, accept_index, bonus = _outputs(parents)
    OPS.verify_tree_greedy(accept_len, accept_index, bonus, candidates, parents, target_tokens)
    return TreeVerification(accept_len, accept_index, bonus)


def verify_tree_typical(candidates, parents, target_logits, posterior_threshold: float = 0.09,
                        posterior_alpha: float = 0.3, temperature: float = 1.0,
                        return_node_logprob: bool = False):
    """Medusa typical acceptance over a tree.

    With ``p = softmax(target_logits[b, u] / temperature)`` at the parent u of node c, node c
    passes when ``p(candidates[b, c]) > min(posterior_threshold, posterior_alpha * exp(-H(p)))``
    (Medusa's entropy ``H = -sum p log(p + 1e-5)``). The accepted path is the deepest root path
    whose nodes all pass; ties go to the higher summed log-probability, then the lower node
    index. ``bonus`` is the argmax of ``target_logits`` at the last accepted node (Medusa takes
    the greedy token there). ``return_node_logprob`` also returns ``[B, T]`` float32: each
    node's ``log p(candidate | parent)`` where it passes, -inf where it fails, 0 at the root.
    """
    parents = _parents_arg(parents)
    candidates = _tokens_arg(candidates, "candidates", parents)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for typical acceptance (use verify_tree_greedy "
                         f"at temperature 0), got {temperature}")
    if should_check_cuda_values(parents):
        check_tree_parents(parents)
        if target_logits.dim() == 3:
            _check_candidates_on_host(candidates, parents, target_logits.shape[-1])
    accept_len, accept_index, bonus = _outputs(parents)
    node_logprob = torch.empty(parents.shape, dtype=torch.float32, device=parents.device)
    OPS.verify_tree_typical(accept_len, accept_index, bonus, node_logprob, candidates, parents,
                            target_logits, float(posterior_threshold), float(posterior_alpha),
                            float(temperature))
    result = TreeVerification(accept_len, accept_index, bonus)
    return (result, node_logprob) if return_node_logprob else result


def verify_tree_sampling(candidates, parents, draft_probs, target_probs, coins=None, *,
                         draft_rule: str = "without_replacement",
                         generator: torch.Generator | None = None) -> TreeVerification:
    """Lossless tree speculative sampling (multi-draft recursive rejection sampling).

    ``target_probs[b, u]`` / ``draft_probs[b, u]`` are the target's and the drafter's next-token
    distributions after node u (``[B, T, V]``). At node u (p = target at u, q = draft at u) the
    children are tried in index order: child c with token x is accepted with probability
    ``min(1, p(x) / q(x))`` using ``coins[b, c]``; on rejection ``p <- norm(max(0, p - q))``
    and, by ``draft_rule`` (how the siblings were drafted from q):

    - ``"iid"``: independent draws (SpecInfer); q is unchanged.
    - ``"without_replacement"``: draws without replacement (recursive rejection sampling); x is
      removed from q, which is renormalised.
    - ``"deterministic"``: fixed choices such as top-k (EAGLE, Medusa); q = one-hot(x), so x is
      accepted with probability p(x) and rejecting it removes x from p. ``draft_probs`` is
      unused and may be None.

    An accepted child becomes the current node. When every child of the current node is
    rejected (or it has none), the bonus token is drawn from the current p by inverse CDF with
    ``coins[b, 0]``. Each rule is lossless (the emitted tokens follow the target) when the
    drafts were produced that way; on a chain, ``iid`` and ``without_replacement`` are both
    ordinary speculative sampling. ``coins [B, T]`` float32 uniform in [0, 1) carry all the
    randomness (drawn here with ``generator`` when None), so results are reproducible.
    """
    if draft_rule not in DRAFT_RULES:
        raise ValueError(f"draft_rule must be one of {DRAFT_RULES}, got {draft_rule!r}")
    parents = _parents_arg(parents)
    candidates = _tokens_arg(candidates, "candidates", parents)
    if draft_rule == "deterministic":
        draft_probs = None
    elif draft_probs is None:
        raise ValueError(f"draft_probs is required for draft_rule {draft_rule!r}")
    if coins is None:
        coins = torch.rand(parents.shape, generator=generator, device=parents.device)
    if should_check_cuda_values(parents):
        check_tree_parents(parents)
        if target_probs.dim() == 3:
            _check_candidates_on_host(candidates, parents, target_probs.shape[-1])
        c = coins.detach().cpu()
        if c.numel() and not bool(((c >= 0) & (c < 1)).all()):
            raise RuntimeError("coins must be uniform in [0, 1)")
    accept_len, accept_index, bonus = _outputs(parents)
    workspace = None
    if parents.is_cuda and target_probs.dim() == 3:
        workspace = torch.empty(2 * parents.shape[0] * target_probs.shape[-1], dtype=torch.float32,
                                device=parents.device)
    OPS.verify_tree_sampling(accept_len, accept_index, bonus, candidates, parents, draft_probs,
                             target_probs, coins, draft_rule, workspace)
    return TreeVerification(accept_len, accept_index, bonus)


@torch.library.register_fake("leapdec::build_tree")
def _build_tree_fake(mask, depth, parents):
    return None


@torch.library.register_fake("leapdec::verify_tree_greedy")
def _verify_tree_greedy_fake(accept_len, accept_index, bonus, candidates, parents, target_tokens):
    return None


@torch.library.register_fake("leapdec::verify_tree_typical")
def _verify_tree_typical_fake(accept_len, accept_index, bonus, node_logprob, candidates, parents,
                              target_logits, posterior_threshold, posterior_alpha, temperature):
    return None


@torch.library.register_fake("leapdec::verify_tree_sampling")
def _verify_tree_sampling_fake(accept_len, accept_index, bonus, candidates, parents, draft_probs,
                               target_probs, coins, draft_rule, workspace):
    return None
