"""Falcon's semi-autoregressive drafter (Bestpay-inc/Falcon, ``models/cnets.py``).

A few decoder layers (``DecoderLayer``, the base's hidden size, heads and head_dim) over
``x_j = fc(concat(embed(t_{j+1}), f_j))``: the base's final-norm hidden state ``f_j`` at
position j and the embedding of the token after it (the base's frozen embedding). The output
at position j regresses ``f_{j+k}``; the base's frozen LM head turns it into the token
``t_{j+k+1}``. Attention is **block-causal** with blocks of ``k = block_size`` positions: the
positions of a block see each other and every earlier block, so the last block of a context
(inputs up to ``t_n``) emits the next k tokens ``t_{n+1} .. t_{n+k}`` in one forward, and a
drafted block (the drafter's own features and tokens as inputs) emits the k after it.

``forward`` is the plain training forward (SDPA with a dense block-causal mask);
``forward_paged`` runs over the drafter's own ``PagedKVCache`` with ``paged_attention``'s
custom mask (decoding builds the block-causal and block-tree masks). The embedding and LM head
are not part of the drafter: callers pass the base's. A trained drafter is a folder holding
``config.json`` (the layer config, ``block_size``, the base's shape, provenance) and
``model.safetensors`` (``fc.*`` and ``layers.*``).

With ``vocab_ids`` (FR-Spec's frequency-ranked vocabulary, ``leapdec.models.vocab``) the drafter's
tokens come from the base LM head's rows for those ids only (:meth:`FalconDrafter.draft_logits`);
the file stores the id list, never the rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from leapdec.kv_cache import PagedKVCache
from leapdec.models.config import ModelConfig
from leapdec.models.linear import Linear, linear
from leapdec.models.loading import read_safetensors
from leapdec.models.transformer import MASK_MODES, DecoderLayer, RMSNorm, StepInput
from leapdec.models.rope import rope_cos_sin_cache
from leapdec.models.vocab import check_vocab_ids, draft_index, packed_draft_rows

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
KIND = "falcon"


def block_causal_mask(length: int, block_size: int, offset: int = 0, device=None) -> torch.Tensor:
    """``[length, length]`` bool: row i may see column j when ``block(j) <= block(i)``, with
    ``block(i) = (i + offset) // block_size``. ``offset = (-length) % block_size`` aligns the
    blocks to the end (the last ``block_size`` rows form one block)."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    block = (torch.arange(length, device=device) + offset) // block_size
    return block[None, :] <= block[:, None]


class FalconDrafter(nn.Module):
    """``num_hidden_layers`` decoder layers of ``config`` plus the input projection ``fc``.

    ``config`` is the layers' ``ModelConfig`` (its hidden size is the base's); ``block_size`` is
    Falcon's ``k_mask`` (tokens per drafter forward). ``meta`` carries what the companion
    config records besides the shape (provenance, default tree settings).
    """

    def __init__(self, config: ModelConfig, block_size: int = 2, device=None, dtype=None,
                 meta: dict | None = None, init_std: float = 0.02, vocab_ids=None):
        super().__init__()
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.config = config
        self.block_size = block_size
        self.meta = dict(meta or {})
        h = config.hidden_size
        kw = dict(device=device, dtype=dtype)
        self.fc = Linear(2 * h, h, bias=True, **kw)
        self.layers = nn.ModuleList(DecoderLayer(config, device, dtype) for _ in range(config.num_hidden_layers))
        self._rope: dict = {}
        self.vocab_size = config.vocab_size
        # the reduced draft vocabulary's token ids (a buffer, saved with the drafter), or None
        self.register_buffer("vocab_ids", None if vocab_ids is None else
                             check_vocab_ids(vocab_ids, config.vocab_size, device))
        if device is None or torch.device(device).type != "meta":
            self.reset_parameters(init_std)

    def reset_parameters(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Normal(0, std) matrices, zero biases, unit norms; ``fc`` starts by passing the
        feature half through (the output starts as ``f_j`` plus noise, a sane first guess)."""
        h = self.config.hidden_size
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, std, generator=generator)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, RMSNorm):
                    module.weight.fill_(1.0)
            self.fc.weight[:, h:] += torch.eye(h, dtype=self.fc.weight.dtype, device=self.fc.weight.device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_base(cls, base, num_layers: int = 2, block_size: int = 2, intermediate_size: int | None = None,
                 device=None, dtype=None, meta: dict | None = None, vocab_ids=None) -> "FalconDrafter":
        """A fresh drafter for the ``Transformer`` ``base``: its hidden size, heads, head_dim,
        RoPE and norm settings, ``num_layers`` layers (``intermediate_size`` defaults to the base's);
        ``vocab_ids``: a reduced draft vocabulary (token ids), None for the whole vocabulary."""
        c = base.config
        config = ModelConfig(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size,
            intermediate_size=intermediate_size or c.intermediate_size, num_hidden_layers=num_layers,
            num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
            head_dim=c.head_dim, model_type=c.model_type, rms_norm_eps=c.rms_norm_eps,
            rope_theta=c.rope_theta, rope_scaling=c.rope_scaling,
            max_position_embeddings=c.max_position_embeddings, attention_bias=c.attention_bias,
            mlp_bias=c.mlp_bias)
        return cls(config, block_size, device=device if device is not None else base.device,
                   dtype=dtype if dtype is not None else base.dtype, meta=meta, vocab_ids=vocab_ids)

    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    @property
    def draft_vocab_size(self) -> int:
        return self.vocab_size if self.vocab_ids is None else self.vocab_ids.numel()

    def draft_logits(self, features: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """The base LM head ``lm_head`` applied to predicted ``features [..., h]``: logits
        ``[..., draft_vocab_size]`` (over ``vocab_ids`` when the drafter has a reduced vocabulary;
        position i is token ``vocab_ids[i]``: :meth:`token_ids` maps them back)."""
        if self.vocab_ids is None:
            return lm_head(features)
        weight, packed = packed_draft_rows(self, lm_head.weight)
        return linear(features, weight, None, packed)

    def token_ids(self, draft_positions: torch.Tensor) -> torch.Tensor:
        """Token ids of positions in :meth:`draft_logits`' last dimension."""
        return draft_positions if self.vocab_ids is None else self.vocab_ids[draft_positions]

    def draft_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of each token id in :meth:`draft_logits` (-1 outside the draft vocabulary)."""
        return draft_index(self, tokens)

    def check_base(self, model) -> None:
        """Raise when ``model`` is not a base this drafter can read (hidden size, vocabulary)."""
        c = model.config
        if c.hidden_size != self.config.hidden_size or c.vocab_size != self.config.vocab_size:
            raise ValueError(f"drafter: built for hidden_size {self.config.hidden_size} and vocab_size "
                             f"{self.config.vocab_size}, the model has {c.hidden_size} and {c.vocab_size}")

    def cos_sin(self, num_positions: int, device=None) -> torch.Tensor:
        """The float32 RoPE table covering ``num_positions`` (kept, growing by doubling)."""
        device = torch.device(device) if device is not None else self.device
        need = max(num_positions, self.config.max_position_embeddings)
        table = self._rope.get(device)
        if table is None or table.shape[0] < need:
            rows = max(need, 2 * table.shape[0]) if table is not None else need
            table = rope_cos_sin_cache(rows, self.config.head_dim, self.config.rope_theta,
                                       self.config.rope_scaling).to(device)
            self._rope[device] = table
        return table

    def new_cache(self, num_pages: int, page_size: int = 16) -> PagedKVCache:
        """A ``PagedKVCache`` for the drafter's layers (its own, beside the base's)."""
        c = self.config
        return PagedKVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, num_pages,
                            page_size, dtype=self.dtype, device=self.device)

    def _inputs(self, features: torch.Tensor, input_ids: torch.Tensor, embed: nn.Embedding) -> torch.Tensor:
        if features.shape[:-1] != input_ids.shape or features.shape[-1] != self.config.hidden_size:
            raise ValueError(f"features must be [..., {self.config.hidden_size}] over the shape of input_ids "
                             f"{tuple(input_ids.shape)}, got {tuple(features.shape)}")
        return self.fc(torch.cat([embed(input_ids).to(features.dtype), features], dim=-1))

    # ------------------------------------------------------------------ forwards
    def forward(self, features: torch.Tensor, input_ids: torch.Tensor, embed: nn.Embedding,
                block_offset: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Plain training forward: ``features [B, T, h]`` (the base's final-norm hidden states
        ``f_j``), ``input_ids [B, T]`` (``t_{j+1}``) -> predicted ``f_{j+k}`` ``[B, T, h]``,
        block-causal with blocks starting where ``(j + block_offset) % k == 0``."""
        x = self._inputs(features, input_ids, embed)
        b, t, _ = x.shape
        if positions is None:
            positions = torch.arange(t, device=x.device).expand(b, t)
        table = self.cos_sin(int(positions.max()) + 1 if positions.numel() else 0, x.device)
        cos, sin = table[positions.long()].to(x.dtype).unsqueeze(2).chunk(2, dim=-1)
        mask = block_causal_mask(t, self.block_size, block_offset, x.device)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, False)
        return x

    def forward_paged(self, features: torch.Tensor, step: StepInput, cache: PagedKVCache,
                      embed: nn.Embedding) -> torch.Tensor:
        """Run ``step``'s N tokens (``step.input_ids`` = ``t_{j+1}``) with ``features [N, h]``
        over the drafter's ``cache``; returns the predicted features ``[N, h]``. The mask comes
        from ``step`` (``custom``: block-causal context chunks, block-tree drafts)."""
        mask_mode = step.mask_mode or "causal"
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        if len(cache.k_caches) != len(self.layers):
            raise ValueError(f"cache has {len(cache.k_caches)} layers, the drafter {len(self.layers)}: "
                             f"use drafter.new_cache()")
        x = self._inputs(features, step.input_ids, embed)
        cos_sin = self.cos_sin(step.plan.max_kv_len, x.device)
        for layer, k_cache, v_cache in zip(self.layers, cache.k_caches, cache.v_caches):
            x = layer.forward_paged(x, step, mask_mode, cos_sin, k_cache, v_cache)
        return x

    # ------------------------------------------------------------------ files
    def save(self, directory, base=None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (float32 unless the
        drafter is bfloat16); returns the folder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = {"kind": KIND, "block_size": self.block_size, "layers": self.config.to_hf_dict(),
               "meta": self.meta}
        if self.vocab_ids is not None:
            cfg["draft_vocab_size"] = self.draft_vocab_size
        (directory / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        return directory

    @classmethod
    def load(cls, directory, device="cpu", dtype=None) -> "FalconDrafter":
        """A drafter saved by :meth:`save` (missing files and mismatched tensors raise)."""
        directory = Path(directory)
        cfg_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not cfg_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f"directory: {directory} needs {CONFIG_FILE} and {WEIGHTS_FILE} "
                                    f"(a Falcon drafter folder)")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("kind") != KIND:
            raise ValueError(f"directory: {cfg_path} is not a Falcon drafter config (kind {cfg.get('kind')!r})")
        state = read_safetensors(weights)
        dtype = dtype if dtype is not None else next(v.dtype for v in state.values() if v.dtype.is_floating_point)
        layers = ModelConfig.from_hf_dict(cfg["layers"])
        draft = cfg.get("draft_vocab_size")
        if draft is not None and (not isinstance(draft, int) or not 1 <= draft <= layers.vocab_size):
            raise ValueError(f"directory: {cfg_path} has draft_vocab_size {draft!r}, not an int in [1, vocab_size]")
        drafter = cls(layers, int(cfg["block_size"]), device="meta", dtype=dtype, meta=cfg.get("meta"),
                      vocab_ids=draft)
        drafter = drafter.to_empty(device=device)
        missing, unexpected = drafter.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"directory: {weights} does not fit its config (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]})")
        if drafter.vocab_ids is not None:
            drafter.vocab_ids = check_vocab_ids(drafter.vocab_ids, layers.vocab_size, device, what=str(weights))
        return drafter.eval()
