"""DEER's drafter (arXiv 2512.15176): a small masked-diffusion Transformer that fills a whole
block of draft tokens in ONE denoising step given the prefix.

It is a leapdec ``Transformer`` (a few layers of the target's shape) whose vocabulary is the
target's plus two tokens: ``[MASK]`` and a boundary marker ``[BND]``. Attention is
**block-causal**: the prefix is causal (so its K/V is cached in the drafter's own paged cache
and reused step after step), the block's queries see the whole prefix and each other
(bidirectional inside the block). Predictions are shifted as in an AR model initialised from
the target (Dream-style): the output at position p predicts the token at p + 1. With a prefix
``x_0 .. x_{c-1}`` (the last one is the root, the last emitted token) the block is
``[BND, MASK, ..., MASK]`` at positions ``c .. c+b-1``; the root's output predicts ``x_c`` and
block query j predicts ``x_{c+j+1}``: ``b + 1`` draft tokens from one forward.

``forward`` is the plain training forward (SDPA with a dense block-causal mask built by
``block_mask``); ``forward_paged`` runs a step over the drafter's cache (decoding builds the
mask: causal rows for the new prefix tokens, full rows for the block). Logits cover only the
target's vocabulary, so a draft is never ``[MASK]`` or ``[BND]``. The drafter is saved as a
Hugging Face checkpoint folder (``config.json`` + ``model.safetensors``) whose ``leapdec.deer``
entry records the target vocabulary, the special ids and the largest block.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from leapdec.kv_cache import PagedKVCache
from leapdec.models.config import ModelConfig
from leapdec.models.loading import load_checkpoint, save_checkpoint
from leapdec.models.transformer import StepInput, Transformer

KIND = "deer"
MAX_BLOCK = 32          # draft tokens per drafter step at most (the root's + 31 block queries)


def block_mask(prefix_len: int, cuts: list[int], block_len: int, device=None) -> torch.Tensor:
    """``[T, T]`` bool attention mask of a training sequence: ``prefix_len`` causal tokens
    followed by one block of ``block_len`` queries per cut ``c`` (prefix length c). Block rows
    see the prefix columns ``< c`` and their own block; prefix rows never see a block."""
    t = prefix_len + len(cuts) * block_len
    mask = torch.zeros(t, t, dtype=torch.bool, device=device)
    mask[:prefix_len, :prefix_len] = torch.ones(prefix_len, prefix_len, dtype=torch.bool,
                                                device=device).tril()
    for i, c in enumerate(cuts):
        if not 0 < c <= prefix_len:
            raise ValueError(f"cuts: {c} is outside (0, {prefix_len}]")
        s = prefix_len + i * block_len
        mask[s:s + block_len, :c] = True
        mask[s:s + block_len, s:s + block_len] = True
    return mask


class DeerDrafter(nn.Module):
    """The block drafter: ``self.lm`` is a ``Transformer`` over the target's vocabulary plus
    ``[MASK]`` (id ``target_vocab_size``) and ``[BND]`` (``target_vocab_size + 1``)."""

    def __init__(self, lm: Transformer):
        super().__init__()
        info = lm.config.extra.get(KIND)
        if not isinstance(info, dict):
            raise ValueError("lm: its config has no leapdec.deer entry (not a DEER drafter)")
        self.lm = lm
        self.target_vocab_size = int(info["target_vocab_size"])
        self.boundary_token_id = int(info["boundary_token_id"])
        self.max_block = int(info.get("max_block", MAX_BLOCK))
        self.mask_token_id = lm.config.mask_token_id
        if self.mask_token_id is None or not (self.target_vocab_size <= self.mask_token_id < lm.config.vocab_size):
            raise ValueError(f"lm: mask_token_id {self.mask_token_id} must be an added token "
                             f"(>= target_vocab_size {self.target_vocab_size})")
        self.meta = dict(info.get("meta") or {})

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_target(cls, target: Transformer, num_layers: int = 2, copy_layers: list[int] | None = None,
                   max_block: int = MAX_BLOCK, meta: dict | None = None) -> "DeerDrafter":
        """A drafter of ``num_layers`` layers of ``target``'s shape, initialised from its weights:
        embeddings and LM head, final norm, and the layers ``copy_layers`` (default: evenly
        spread, first and last included). ``[MASK]`` and ``[BND]`` start as the mean embedding."""
        c = target.config
        if not 1 <= max_block <= MAX_BLOCK:
            raise ValueError(f"max_block must be in [1, {MAX_BLOCK}], got {max_block}")
        if copy_layers is None:
            n = c.num_hidden_layers
            copy_layers = [round(i * (n - 1) / max(1, num_layers - 1)) for i in range(num_layers)]
        if len(copy_layers) != num_layers or not all(0 <= i < c.num_hidden_layers for i in copy_layers):
            raise ValueError(f"copy_layers must name {num_layers} layers of the target's "
                             f"{c.num_hidden_layers}, got {copy_layers}")
        v = c.vocab_size
        info = {"target_vocab_size": v, "boundary_token_id": v + 1, "max_block": max_block,
                "copied_layers": list(copy_layers), "meta": dict(meta or {})}
        shape = {k: getattr(c, k) for k in (
            "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
            "model_type", "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings",
            "tie_word_embeddings", "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id",
            "pad_token_id")}
        config = ModelConfig(**shape, vocab_size=v + 2, num_hidden_layers=num_layers, causal=True, mask_token_id=v,
            extra={KIND: info})
        lm = Transformer(config, device=target.device, dtype=target.dtype, init_std=None)
        with torch.no_grad():
            emb = target.embed_tokens.weight
            lm.embed_tokens.weight[:v] = emb
            lm.embed_tokens.weight[v:] = emb.mean(0)
            if not c.tie_word_embeddings:
                lm.lm_head.weight[:v] = target.lm_head.weight
                lm.lm_head.weight[v:] = 0
            lm.norm.load_state_dict(target.norm.state_dict())
            for mine, theirs in zip(lm.layers, copy_layers):
                mine.load_state_dict(target.layers[theirs].state_dict())
        return cls(lm.eval())

    @classmethod
    def load(cls, directory, device="cpu", dtype=None) -> "DeerDrafter":
        """A drafter saved by :meth:`save` (a checkpoint folder with a ``leapdec.deer`` entry)."""
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"drafter: {directory} has no config.json (a DEER drafter folder)")
        lm = load_checkpoint(directory, device=device, dtype=dtype)
        if KIND not in lm.config.extra:
            raise ValueError(f"drafter: {directory} is a checkpoint but not a DEER drafter "
                             f"(its config.json has no leapdec.deer entry)")
        return cls(lm)

    def save(self, directory) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
        self.lm.config.extra[KIND]["meta"] = self.meta
        return save_checkpoint(self.lm, directory)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> ModelConfig:
        return self.lm.config

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.dtype

    def check_target(self, model) -> None:
        """Raise when ``model`` does not share this drafter's vocabulary."""
        if model.config.vocab_size != self.target_vocab_size:
            raise ValueError(f"drafter: built for a vocabulary of {self.target_vocab_size} tokens, the "
                             f"target has {model.config.vocab_size}")

    def new_cache(self, num_pages: int, page_size: int = 16) -> PagedKVCache:
        return self.lm.new_cache(num_pages=num_pages, page_size=page_size)

    # ------------------------------------------------------------------ forwards
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """Training forward: ``input_ids, positions [B, T]``, ``attn_mask [B, 1, T, T]`` or
        ``[T, T]`` bool (``block_mask``) -> logits ``[B, T, target_vocab_size]``."""
        lm = self.lm
        x = lm.embed_tokens(input_ids)
        table = lm.cos_sin(int(positions.max()) + 1, x.device)
        cos, sin = table[positions.long()].to(x.dtype).unsqueeze(2).chunk(2, dim=-1)
        for layer in lm.layers:
            x = layer(x, cos, sin, attn_mask, False)
        return lm.lm_head(lm.norm(x))[..., :self.target_vocab_size]

    def forward_paged(self, step: StepInput, cache: PagedKVCache) -> torch.Tensor:
        """One step over the drafter's cache; logits ``[N_sel, target_vocab_size]``."""
        return self.lm.forward_paged(step, cache)[:, :self.target_vocab_size]
