"""The class-conditional MaskGIT generator: a bidirectional ``leapdec.models.Transformer``
(``causal=False``, attention = ``paged_attention`` with mask ``"none"`` in the paged forward)
over ``[class token] + 256 grey-level tokens``, plus a learned absolute position embedding
(MaskGIT's) added to the token embeddings on top of the Transformer's 1D RoPE.

A checkpoint folder holds ``config.json`` (the Transformer's Hugging Face config; the image
layout under ``leapdec.image``), ``model.safetensors`` (the Transformer's tensors under their
usual names plus ``pos_embed``) and ``tokenizer.json`` (a word-level vocabulary naming the 27
tokens, so the folder reads like every other zoo checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from leapdec.images import data
from leapdec.kv_cache import PagedKVCache
from leapdec.models import ModelConfig, StepInput, Transformer

KIND = "maskgit-image"
SEQ_LEN = 1 + data.NUM_PIXELS      # class token + pixels


def image_config(hidden_size: int = 96, num_layers: int = 4, num_heads: int = 4,
                 intermediate_size: int = 256) -> ModelConfig:
    """The Transformer config of a digits MaskGIT of the given size."""
    return ModelConfig(
        vocab_size=data.VOCAB_SIZE, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, max_position_embeddings=SEQ_LEN,
        causal=False, mask_token_id=data.MASK_ID,
        extra={"image": {"kind": KIND, "side": data.SIDE, "levels": data.LEVELS,
                         "num_classes": data.NUM_CLASSES, "class_offset": data.CLASS_OFFSET,
                         "max_value": data.MAX_VALUE,
                         "layout": "[class token] + 16x16 grey levels row-major; positions 0..256",
                         "data": "sklearn.datasets.load_digits 8x8 -> 16x16 bilinear -> 16 levels"}})


class MaskGIT(nn.Module):
    """Transformer + learned position embedding; ``forward`` for training, ``forward_paged``
    over a ``PagedKVCache`` for sampling."""

    def __init__(self, config: ModelConfig, device=None, dtype=None):
        super().__init__()
        info = config.extra.get("image") or {}
        if info.get("kind") != KIND:
            raise ValueError(f"config: not a {KIND} config (its leapdec.image.kind is {info.get('kind')!r})")
        if config.causal:
            raise ValueError("config: a MaskGIT generator is bidirectional (causal must be false)")
        self.config = config
        self.transformer = Transformer(config, device=device, dtype=dtype)
        self.pos_embed = nn.Parameter(torch.randn(SEQ_LEN, config.hidden_size, device=device, dtype=dtype) * 0.02)
        self.checkpoint_dir: Path | None = None

    @property
    def device(self) -> torch.device:
        return self.pos_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pos_embed.dtype

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.transformer.embed_tokens(ids) + self.pos_embed[positions]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids [B, 257]`` (class token first) -> logits ``[B, 257, V]``; plain SDPA forward."""
        if ids.dim() != 2 or ids.shape[1] != SEQ_LEN:
            raise ValueError(f"ids must be [B, {SEQ_LEN}], got {tuple(ids.shape)}")
        pos = torch.arange(SEQ_LEN, device=ids.device)
        return self.transformer(None, inputs_embeds=self.embed(ids, pos))

    def new_cache(self, num_images: int, page_size: int = 16) -> PagedKVCache:
        pages = num_images * -(-SEQ_LEN // page_size)
        return self.transformer.new_cache(num_pages=pages, page_size=page_size)

    def forward_paged(self, step: StepInput, cache: PagedKVCache) -> torch.Tensor:
        """Run ``step`` (positions 0..256 of each image) over ``cache``; logits of its selected rows."""
        x = self.embed(step.input_ids, step.positions)
        return self.transformer.forward_paged(dataclasses.replace(step, inputs_embeds=x), cache)


def vocabulary_tokenizer():
    """A word-level ``tokenizers.Tokenizer`` naming the 27 ids: ``<g0>``..``<g15>``, ``<mask>``,
    ``<class0>``..``<class9>``."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {f"<g{i}>": i for i in range(data.LEVELS)}
    vocab["<mask>"] = data.MASK_ID
    vocab.update({f"<class{c}>": data.CLASS_OFFSET + c for c in range(data.NUM_CLASSES)})
    tok = Tokenizer(WordLevel(vocab, unk_token="<mask>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return tok


def save(model: MaskGIT, directory) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``tokenizer.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_json(directory / "config.json", dtype=str(model.dtype).replace("torch.", ""))
    state = {k: v.detach().contiguous().cpu() for k, v in model.transformer.state_dict().items()}
    state["pos_embed"] = model.pos_embed.detach().contiguous().cpu()
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt", "kind": KIND})
    vocabulary_tokenizer().save(str(directory / "tokenizer.json"))
    return directory


def load(directory, device="cpu", dtype=torch.float32) -> MaskGIT:
    """A ``MaskGIT`` from a checkpoint folder written by ``save``."""
    directory = Path(directory)
    config = ModelConfig.from_json(directory / "config.json")
    if (config.extra.get("image") or {}).get("kind") != KIND:
        raise ValueError(f"{directory} is not an image generator checkpoint (config.json has no "
                         f"leapdec.image.kind = {KIND!r})")
    state = load_file(str(directory / "model.safetensors"))
    model = MaskGIT(config, device="meta")
    pos = state.pop("pos_embed", None)
    if pos is None:
        raise ValueError(f"{directory}/model.safetensors has no pos_embed tensor")
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    missing, unexpected = model.transformer.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{directory}/model.safetensors does not match its config: missing {missing}, "
                         f"unexpected {unexpected}")
    model.pos_embed = nn.Parameter(pos.to(device=device, dtype=dtype))
    model.transformer._rope = {}
    model.checkpoint_dir = directory
    return model.eval()


def describe(directory) -> dict:
    """The image section of a checkpoint's config (what ``load`` checks)."""
    try:
        d = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    ext = d.get("leapdec") if isinstance(d, dict) else None
    info = ext.get("image") if isinstance(ext, dict) else None
    return info if isinstance(info, dict) else {}
