"""The draft model of the draft-model methods (``sd``, ``pearl``): a small causal Transformer that
reads and writes the target's vocabulary and shares the target's frozen token embedding and LM
head, so its companion file holds only its own layers (a 2-layer drafter of SmolLM2 is 7 M
parameters; its embedding would be 28 M).

Optionally it projects onto a reduced, frequency-ranked vocabulary (FR-Spec, ``vocab_ids``):
its logits are the target LM head's rows for those ids, scattered into the full vocabulary with
``-inf`` elsewhere, so a token outside the subset is never drafted and verification stays exact.

Companion folder ``<target>/drafter/``: ``config.json`` (the draft's Llama config plus a
``leapdec.draft`` entry), ``model.safetensors`` (its layers and final norm, the ``vocab_ids``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from leapdec.models.config import ModelConfig
from leapdec.models.linear import linear
from leapdec.models.loading import hf_name, our_name, read_safetensors
from leapdec.models.transformer import Transformer
from leapdec.models.vocab import check_vocab_ids, packed_draft_rows

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_SHARED = ("embed_tokens.weight", "lm_head.weight")


class SharedHead(nn.Module):
    """The target's LM head (``weight [V, h]``, not owned), optionally restricted to
    ``vocab_ids``: logits over the full vocabulary, ``-inf`` outside the subset."""

    def __init__(self, weight: torch.Tensor, vocab_ids: torch.Tensor | None):
        super().__init__()
        self.weight_ref = [weight]                  # a list: not a parameter or buffer of the drafter
        self.vocab_size = weight.shape[0]
        self.register_buffer("vocab_ids", vocab_ids, persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_ref[0]

    def _apply(self, fn, recurse=True):          # .to() / .cuda() move the referenced weight too
        self.weight_ref[0] = fn(self.weight_ref[0])
        return super()._apply(fn, recurse)

    def subset_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary only ``[..., len(vocab_ids)]`` (training and the
        draft steps; the packed copy serves the few-row steps on CPU)."""
        rows, packed = packed_draft_rows(self, self.weight)
        return linear(h, rows, None, packed)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.vocab_ids is None:
            return linear(h, self.weight)
        out = h.new_full((*h.shape[:-1], self.vocab_size), float("-inf"))
        out[..., self.vocab_ids] = self.subset_logits(h)
        return out


def save_own_weights(path, named_parameters, vocab_ids: torch.Tensor | None, dtype: torch.dtype | None = None) -> None:
    """Write a companion's own parameters (checkpoint names, in ``dtype`` when given) and its
    draft vocabulary (``draft.vocab_ids``) to the safetensors file ``path``."""
    tensors = {hf_name(n): p.detach().to("cpu", dtype or p.dtype).contiguous() for n, p in named_parameters}
    if vocab_ids is not None:
        tensors["draft.vocab_ids"] = vocab_ids.to("cpu", torch.int64).contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})


def load_own_weights(module: nn.Module, state: dict, weights, own=lambda name: True) -> None:
    """Copy ``state`` (our parameter names) into ``module``'s parameters for which ``own(name)``;
    a clear error names what is missing or unexpected (``weights``: the file, for the message)."""
    expected = {n for n, _ in module.named_parameters() if own(n)}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"drafter: {weights} does not match its config (missing {missing[:4]}, "
                         f"unexpected {extra[:4]})")
    with torch.no_grad():
        for n, p in module.named_parameters():
            if n in state:
                p.copy_(state[n].to(p.dtype))


class DraftModel(Transformer):
    """A causal Transformer drafting for ``base`` with ``base``'s embedding and LM head."""

    def __init__(self, config: ModelConfig, base: Transformer, vocab_ids=None):
        if config.vocab_size != base.config.vocab_size or config.hidden_size != base.config.hidden_size:
            raise ValueError(f"drafter: vocabulary / hidden size {config.vocab_size} / {config.hidden_size} "
                             f"differ from the target's {base.config.vocab_size} / {base.config.hidden_size}")
        super().__init__(config, device="meta", init_std=None)
        device, dtype = base.device, base.dtype
        for name, module in list(self.named_children()):
            if name not in ("embed_tokens", "lm_head"):
                module.to_empty(device=device)
                module.to(dtype)
        ids = None if vocab_ids is None else check_vocab_ids(vocab_ids, config.vocab_size, device)
        self.embed_tokens = base.embed_tokens                     # shared, frozen
        self.lm_head = SharedHead(base.lm_head.weight, ids)
        self.base_name = getattr(base, "checkpoint_dir", None)

    @classmethod
    def from_base(cls, base: Transformer, num_layers: int = 2, vocab_ids=None) -> "DraftModel":
        """A drafter of ``num_layers`` layers initialised from the base's first layers and final
        norm (then trained by ``python -m leapdec.train drafter``)."""
        if not 1 <= num_layers <= base.config.num_hidden_layers:
            raise ValueError(f"num_layers must be in [1, {base.config.num_hidden_layers}], got {num_layers}")
        cfg = ModelConfig.from_hf_dict({**base.config.to_hf_dict(), "num_hidden_layers": num_layers})
        draft = cls(cfg, base, vocab_ids)
        with torch.no_grad():
            for mine, theirs in zip(draft.layers, base.layers):
                mine.load_state_dict(theirs.state_dict())
            draft.norm.load_state_dict(base.norm.state_dict())
        return draft

    @property
    def vocab_ids(self) -> torch.Tensor | None:
        return self.lm_head.vocab_ids

    def own_parameters(self):
        """The drafter's trainable parameters (everything but the shared embedding / LM head)."""
        return [p for n, p in self.named_parameters() if not n.startswith("embed_tokens.")]

    def save(self, directory, meta: dict | None = None, dtype: torch.dtype | None = None) -> Path:
        """Write the drafter's own weights (in ``dtype``, default its own) and config."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_own_weights(directory / WEIGHTS_FILE, [(n, p) for n, p in self.named_parameters()
                                                    if not n.startswith("embed_tokens.")], self.vocab_ids, dtype)
        self.config.save_json(directory / CONFIG_FILE, dtype=str(self.dtype).replace("torch.", ""))
        cfg = json.loads((directory / CONFIG_FILE).read_text())
        cfg.setdefault("leapdec", {})["draft"] = {"shares_base_embeddings": True,
                                                  "vocab_ids": None if self.vocab_ids is None else int(self.vocab_ids.numel()),
                                                  **(meta or {})}
        (directory / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory, base: Transformer) -> "DraftModel":
        directory = Path(directory)
        cfg_file, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not cfg_file.is_file() or not weights.is_file():
            raise FileNotFoundError(f"drafter: {directory} needs {CONFIG_FILE} and {WEIGHTS_FILE}")
        raw = json.loads(cfg_file.read_text())
        if "draft" not in raw.get("leapdec", {}):
            raise ValueError(f"drafter: {cfg_file} is not a leapdec draft model (no leapdec.draft entry); "
                             f"a full checkpoint folder is loaded with leapdec.load_model")
        config = ModelConfig.from_hf_dict(raw)
        tensors = read_safetensors(weights, error=ValueError)
        ids = tensors.pop("draft.vocab_ids", None)
        draft = cls(config, base, ids)
        load_own_weights(draft, {our_name(k): v for k, v in tensors.items()}, weights,
                         own=lambda n: not n.startswith("embed_tokens."))
        draft.meta = raw["leapdec"]["draft"]
        draft.eval()
        return draft
