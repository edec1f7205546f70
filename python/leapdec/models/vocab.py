"""Reduced draft vocabularies (FR-Spec): a drafter (Medusa heads, a Falcon drafter) that projects
onto a frequency-ranked subset of the base's vocabulary, with the rows of the base's frozen LM head
for those ids. The companion stores only the id list; a token outside it is never drafted, and
verification by the base stays exact."""

from __future__ import annotations

import torch

from leapdec import ops


def check_vocab_ids(vocab_ids, vocab_size: int, device, what: str = "vocab_ids") -> torch.Tensor:
    """A 1-D int64 tensor of distinct token ids in ``[0, vocab_size)`` (an int: that many
    zero ids, overwritten when a saved file is loaded)."""
    if isinstance(vocab_ids, int) and not isinstance(vocab_ids, bool):
        if not 1 <= vocab_ids <= vocab_size:
            raise ValueError(f"vocab_ids: a reduced vocabulary of {vocab_ids} tokens is not in [1, {vocab_size}]")
        return torch.zeros(vocab_ids, dtype=torch.long, device=device)
    ids = torch.as_tensor(vocab_ids)
    if ids.dim() != 1 or ids.numel() == 0 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"{what}: vocab_ids must be a non-empty 1-D list of token ids, got shape "
                         f"{tuple(ids.shape)} / {ids.dtype}")
    ids = ids.to(device=device if str(device) != "meta" else "cpu", dtype=torch.long)
    if bool((ids < 0).any() or (ids >= vocab_size).any()):
        raise ValueError(f"{what}: vocab_ids must lie in [0, {vocab_size}), got {int(ids.min())}..{int(ids.max())}")
    if ids.unique().numel() != ids.numel():
        raise ValueError(f"{what}: vocab_ids must not repeat a token id")
    return ids


def draft_index(owner, tokens: torch.Tensor) -> torch.Tensor:
    """Position of each full-vocabulary token id of ``tokens`` in ``owner``'s draft vocabulary
    (``owner.vocab_ids``, ``owner.vocab_size``): ``-1`` outside it and for negative ids; the
    identity when ``owner.vocab_ids`` is None. The lookup table is kept on ``owner``."""
    if owner.vocab_ids is None:
        return torch.where(tokens >= 0, tokens, torch.full_like(tokens, -1))
    table = getattr(owner, "_draft_index_table", None)
    if table is None or table.device != tokens.device or table.numel() != owner.vocab_size:
        table = torch.full((owner.vocab_size,), -1, dtype=torch.long, device=tokens.device)
        table[owner.vocab_ids.to(tokens.device)] = torch.arange(owner.vocab_ids.numel(), device=tokens.device)
        owner._draft_index_table = table
    safe = tokens.clamp(0, owner.vocab_size - 1)
    return torch.where(tokens >= 0, table[safe], torch.full_like(tokens, -1))


def gathered_rows(owner, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (the base's LM head, ``[V, h]``) restricted to ``owner.vocab_ids``' rows, in
    their order (gathered once per weight and kept on ``owner``); ``weight`` itself without a
    subset."""
    if owner.vocab_ids is None:
        return weight
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, owner.vocab_ids.data_ptr())
    if getattr(owner, "_gathered_key", None) != key:
        owner._gathered = weight.detach().index_select(0, owner.vocab_ids.to(weight.device))
        owner._gathered_key = key
    return owner._gathered


def packed_draft_rows(owner, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`gathered_rows` and, for a reduced vocabulary on CPU, the rows packed for the
    few-row ``ops.linear`` path (``ops.pack_linear_weight``, kept on ``owner``): a draft step's
    2-8 rows then stream the subset once instead of per padded tile (SmolLM2's 8192-row subset,
    four Medusa heads: 1.06 -> 0.56 ms per top-k). None without a subset: the full LM head is
    the base's, and a second copy of it would cost its size again."""
    rows = gathered_rows(owner, weight)
    if owner.vocab_ids is None or not rows.is_cpu:
        return rows, None
    key = (rows.data_ptr(), rows._version, rows.dtype)
    if getattr(owner, "_packed_rows_key", None) != key:
        owner._packed_rows = ops.pack_linear_weight(rows)
        owner._packed_rows_key = key
    return rows, owner._packed_rows
