"""Medusa heads: K extra LM heads that read the base model's last hidden state and propose the
tokens after the next one (FasterDecoding/Medusa, ``medusa/model/medusa_model.py``).

Head i is ``ResBlock x num_layers`` then ``Linear(hidden, vocab)``; ``ResBlock(x) = x +
SiLU(Linear(h, h)(x))`` with the weight zero-initialised, so a fresh head starts as the base LM
head (``from_base`` copies its weights) applied to a slightly shifted hidden state. Given the
final-norm hidden state at position t, head i predicts the token at position ``t + i + 2`` (the
base LM head predicts ``t + 1``).

With ``shared_lm_head`` (the default of the recipe) a head is its ResBlocks only and projects
with the base model's own frozen LM head: the heads then cost one GEMM over the LM head for all
heads together instead of one vocabulary projection each, and their file holds only the
ResBlocks (Medusa copies the LM head into every head at initialisation; sharing it keeps it
frozen). Such heads are bound to their base with ``attach(model)`` before use.

With ``vocab_ids`` (FR-Spec's frequency-ranked vocabulary) the heads project onto those tokens
only: the rows of the LM head (the base's, when shared; a copy of them otherwise) for the ids in
the list, which the heads' file stores as an int tensor (the rows themselves are not stored).
``forward`` then returns logits over the subset (position i is token ``vocab_ids[i]``), ``topk``
returns full-vocabulary token ids, and a token outside the subset is never drafted; verification
by the base model stays exact.

A trained set of heads is a folder: ``medusa_heads.safetensors`` plus a ``config.json`` holding
the shape and, optionally, measured head accuracies and a default draft tree.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from leapdec import ops
from leapdec.models.linear import Linear, linear
from leapdec.models.loading import read_safetensors
from leapdec.models.vocab import check_vocab_ids as _check_vocab_ids, draft_index, packed_draft_rows

WEIGHTS_FILE = "medusa_heads.safetensors"
CONFIG_FILE = "config.json"
_SHAPE_KEYS = ("num_heads", "num_layers", "hidden_size", "vocab_size")
_OPTIONAL_SHAPE_KEYS = ("shared_lm_head", "draft_vocab_size")


class ResBlock(nn.Module):
    """``x + SiLU(Linear(h, h)(x))``, the weight zero-initialised (Medusa's ResBlock)."""

    def __init__(self, hidden_size: int, device=None, dtype=None):
        super().__init__()
        self.linear = Linear(hidden_size, hidden_size, device=device, dtype=dtype)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


class MedusaHeads(nn.Module):
    """``num_heads`` Medusa heads over hidden states of size ``hidden_size``.

    ``forward(hidden [..., h]) -> logits [..., num_heads, draft_vocab_size]`` (the whole
    vocabulary unless ``vocab_ids`` names a subset: a list of token ids, or for loading, its
    length). ``meta`` carries what the
    companion config records besides the shape (head accuracies, the default tree, provenance).
    """

    def __init__(self, num_heads: int, hidden_size: int, vocab_size: int, num_layers: int = 1,
                 device=None, dtype=None, meta: dict | None = None, shared_lm_head: bool = False,
                 vocab_ids=None):
        super().__init__()
        for name, value in (("num_heads", num_heads), ("hidden_size", hidden_size),
                            ("vocab_size", vocab_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 0:
            raise ValueError(f"num_layers must be an int >= 0, got {num_layers!r}")
        self.num_heads, self.hidden_size, self.vocab_size, self.num_layers = (
            num_heads, hidden_size, vocab_size, num_layers)
        self.shared_lm_head = bool(shared_lm_head)
        if self.shared_lm_head and num_layers < 1:
            raise ValueError("shared_lm_head heads need num_layers >= 1 (else every head is the LM head)")
        # the reduced vocabulary's token ids (a buffer, saved with the heads), or None
        self.register_buffer("vocab_ids", None if vocab_ids is None else _check_vocab_ids(vocab_ids, vocab_size, device))
        self.draft_vocab_size = vocab_size if self.vocab_ids is None else self.vocab_ids.numel()

        def output():                       # each head its own projection unless the LM head is shared
            if self.shared_lm_head:
                return []
            return [Linear(hidden_size, self.draft_vocab_size, bias=False, device=device, dtype=dtype)]

        self.heads = nn.ModuleList(
            nn.Sequential(*[ResBlock(hidden_size, device, dtype) for _ in range(num_layers)], *output())
            for _ in range(num_heads))
        self.meta = dict(meta or {})
        self._stacked, self._stacked_key = None, None
        self._lm_head: tuple = ()            # (rows, packed rows, base Linear) of the LM head when shared

    @property
    def reduced_vocab(self) -> bool:
        return self.vocab_ids is not None

    def attach(self, model) -> "MedusaHeads":
        """Bind shared-LM-head heads to ``model``'s LM head (no-op for heads with their own)."""
        if self.shared_lm_head:
            self.check_base(model)
            rows, packed = packed_draft_rows(self, model.lm_head.weight)     # the subset's rows, kept
            # the full LM head: the base layer's own packed copy, looked up at each use (fresh)
            base = model.lm_head if self.vocab_ids is None and isinstance(model.lm_head, Linear) else None
            self._lm_head = (rows, packed, base)
        return self

    def draft_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of each full-vocabulary token id in the heads' output (``-1`` for a token outside
        ``vocab_ids``, and for negative ids; the identity without a subset)."""
        return draft_index(self, tokens)

    def _shared_weight(self) -> torch.Tensor:
        return self._shared()[0]

    def _shared(self) -> tuple:
        """(the shared LM head's rows, their packed copy or None)."""
        if not self._lm_head:
            raise RuntimeError("these Medusa heads share the base model's LM head: call heads.attach(model) "
                               "first (generate(..., method='medusa') does it)")
        rows, packed, base = self._lm_head
        return rows, (base.packed_weight() if base is not None else packed)

    def _trunk(self, head: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """The head's ResBlocks applied to ``x`` (slicing a Sequential would build a module)."""
        for i in range(self.num_layers):
            x = head[i](x)
        return x

    @classmethod
    def from_base(cls, model, num_heads: int = 4, num_layers: int = 1,
                  shared_lm_head: bool = False, vocab_ids=None) -> "MedusaHeads":
        """Fresh heads for ``model`` (a ``Transformer``): each output layer a copy of its LM head,
        or (``shared_lm_head``) the LM head itself, frozen; with ``vocab_ids`` only those rows."""
        cfg = model.config
        heads = cls(num_heads, cfg.hidden_size, cfg.vocab_size, num_layers,
                    device=model.device, dtype=model.dtype, shared_lm_head=shared_lm_head, vocab_ids=vocab_ids)
        if shared_lm_head:
            return heads.attach(model)
        rows = model.lm_head.weight
        if heads.vocab_ids is not None:
            rows = rows.index_select(0, heads.vocab_ids.to(rows.device))
        with torch.no_grad():
            for head in heads.heads:
                head[-1].weight.copy_(rows)
        return heads

    @property
    def config(self) -> dict:
        shape = {"num_heads": self.num_heads, "num_layers": self.num_layers,
                 "hidden_size": self.hidden_size, "vocab_size": self.vocab_size,
                 "shared_lm_head": self.shared_lm_head}
        if self.vocab_ids is not None:
            shape["draft_vocab_size"] = self.draft_vocab_size
        return {**shape, **self.meta}

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [..., h]`` -> logits ``[..., num_heads, draft_vocab_size]`` (over ``vocab_ids``
        when the heads have a reduced vocabulary: map targets with :meth:`draft_index`)."""
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden must end in hidden_size={self.hidden_size}, got shape "
                             f"{tuple(hidden.shape)}")
        if self.shared_lm_head:
            w = self._shared_weight()
            return torch.stack([linear(head(hidden), w) for head in self.heads], dim=-2)
        return torch.stack([head(hidden) for head in self.heads], dim=-2)

    def _stacked_output(self) -> torch.Tensor:
        """The output layers as one ``[H, h, V]`` tensor for a batched matmul (rebuilt when a
        weight changes): on a CPU one bmm reads the K weight matrices far faster than K linears."""
        weights = [head[-1].weight for head in self.heads]
        key = tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in weights)
        if key != self._stacked_key:
            self._stacked = torch.stack([w.detach() for w in weights]).transpose(1, 2).contiguous()
            self._stacked_key = key
        return self._stacked

    def _stacked_resblocks(self) -> tuple[tuple, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The heads' ResBlock weights for inference, rebuilt when a weight changes. The first
        layer, which every head applies to the same hidden state, as ONE linear: weight
        ``[H * h, h]`` (head j's rows at ``j * h``), bias ``[H * h]`` and, on CPU, its packed copy
        (4 heads of SmolLM2: one 1.3 MB stream instead of a batched matmul). Each later layer as
        ``[H, h, h]`` (transposed) and biases ``[H, 1, h]`` for one batched matmul."""
        blocks = [[head[i].linear for head in self.heads] for i in range(self.num_layers)]
        key = tuple((m.weight.data_ptr(), m.weight._version, m.bias.data_ptr(), m.bias._version)
                    for layer in blocks for m in layer)
        if key != getattr(self, "_blocks_key", None):
            w1 = torch.cat([m.weight.detach() for m in blocks[0]]).contiguous()
            b1 = torch.cat([m.bias.detach() for m in blocks[0]]).contiguous()
            first = (w1, b1, ops.pack_linear_weight(w1) if w1.is_cpu else None)
            rest = [(torch.stack([m.weight.detach() for m in layer]).transpose(1, 2).contiguous(),
                     torch.stack([m.bias.detach() for m in layer])[:, None, :].contiguous())
                    for layer in blocks[1:]]
            self._blocks, self._blocks_key = (first, rest), key
        return self._blocks

    @torch.no_grad()
    def topk(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        """Token ids ``[N, num_heads, k]`` (best first) of each head at ``hidden [N, h]``."""
        if not 1 <= k <= self.draft_vocab_size:
            raise ValueError(f"k must be in [1, {self.draft_vocab_size}], got {k}")
        if hidden.dim() != 2 or hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden must be [N, {self.hidden_size}], got shape {tuple(hidden.shape)}")
        H, (n, h) = self.num_heads, hidden.shape
        (w1, b1, packed1), rest = self._stacked_resblocks()
        y = linear(hidden, w1, b1, packed1).view(n, H, h).transpose(0, 1)       # every head at once
        x = hidden.unsqueeze(0) + F.silu(y)                                      # [H, N, h]
        for w, b in rest:
            x = x + F.silu(torch.baddbmm(b, x, w))
        if self.shared_lm_head:                                                  # one linear, all heads
            weight, packed = self._shared()
            logits = linear(x.reshape(H * n, h), weight, None, packed).view(H, n, -1)   # [H, N, V]
        else:
            logits = torch.bmm(x, self._stacked_output())                        # [H, N, V]
        top = logits.topk(k, dim=-1).indices.transpose(0, 1)
        if self.vocab_ids is not None:                                           # subset -> token ids
            top = self.vocab_ids[top]
        return top

    def check_base(self, model) -> None:
        """Raise if these heads do not fit ``model`` (hidden size, vocabulary, device, dtype)."""
        cfg = model.config
        if (cfg.hidden_size, cfg.vocab_size) != (self.hidden_size, self.vocab_size):
            raise ValueError(f"heads: Medusa heads for hidden {self.hidden_size} / vocab {self.vocab_size} "
                             f"do not fit a model with hidden {cfg.hidden_size} / vocab {cfg.vocab_size}")
        if self.vocab_ids is not None and self.vocab_ids.device != model.device:
            raise ValueError(f"heads: vocab_ids on {self.vocab_ids.device}, the model on {model.device}: "
                             f"move the heads with heads.to(device)")
        weight = next(self.parameters())
        if weight.device != model.device or weight.dtype != model.dtype:
            raise ValueError(f"heads: Medusa heads on {weight.device} / {weight.dtype}, the model on "
                             f"{model.device} / {model.dtype}: move them with heads.to(device, dtype)")

    # ------------------------------------------------------------------ files
    def save(self, directory) -> Path:
        """Write ``medusa_heads.safetensors`` and ``config.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        (directory / CONFIG_FILE).write_text(json.dumps(self.config, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory, device="cpu", dtype=None) -> "MedusaHeads":
        """Heads saved by :meth:`save` (``dtype`` None keeps the stored one)."""
        directory = Path(directory)
        cfg_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not cfg_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f"heads: {directory} must hold {CONFIG_FILE} and {WEIGHTS_FILE}")
        cfg = json.loads(cfg_path.read_text())
        missing = [k for k in _SHAPE_KEYS if k not in cfg]
        if missing:
            raise ValueError(f"heads: {cfg_path} lacks {missing}")
        state = read_safetensors(weights, device=str(device))
        if dtype is None:
            dtype = next(v.dtype for v in state.values() if v.dtype.is_floating_point)
        meta = {k: v for k, v in cfg.items() if k not in _SHAPE_KEYS + _OPTIONAL_SHAPE_KEYS}
        draft = cfg.get("draft_vocab_size")
        if draft is not None and (not isinstance(draft, int) or not 1 <= draft <= cfg["vocab_size"]):
            raise ValueError(f"heads: {cfg_path} has draft_vocab_size {draft!r}, not an int in [1, vocab_size]")
        heads = cls(cfg["num_heads"], cfg["hidden_size"], cfg["vocab_size"], cfg["num_layers"],
                    device="meta", meta=meta, shared_lm_head=bool(cfg.get("shared_lm_head", False)),
                    vocab_ids=draft)
        try:
            heads.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise ValueError(f"heads: {weights} does not match {cfg_path}: {e}") from None
        heads = heads.to(device=device, dtype=dtype).eval()
        if heads.vocab_ids is not None:
            heads.vocab_ids = _check_vocab_ids(heads.vocab_ids, heads.vocab_size, device, what=str(weights))
        return heads

