"""Method "learn2pd": Learn2PD's learned parallel decoding with End-of-Text Prediction.

LLaDA decoding (``decoding.llada``) where each step commits, besides LLaDA's transfer count,
every masked position of the block that a small filter accepts: the filter reads the block's
32 top-1 confidences and gives 32 logits (an MLP ``Linear(32, H) -> ReLU -> Linear(H, 32)``,
about 2K parameters), accepted where ``sigmoid > accept_threshold`` (0.96). The filter runs
inside ``unmask_and_filter(policy="learned")``, its weights passed as op arguments. It is
trained (``python -m leapdec.train learn2pd``) to predict which positions already hold their
final token, from the "extremely greedy" oracle decode of the same model.

``eotp=True`` (End-of-Text Prediction): once an EOS is committed, or a masked position
predicts EOS confidently (``eot_threshold``, default 0.9; Learn2PD's code takes any such
prediction, 0), everything after it is padding and is never decoded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from leapdec.decoding.base import GenerationOutput, register_method, stop_token_set
from leapdec.decoding.llada import EOT_THRESHOLD, DiffusionDecoder, DiffusionSettings
from leapdec.ops.diffusion import filter_weights_of

FILTER_FILE = "filter.safetensors"
COMPANION = "learn2pd"
INPUT_SIZE = 32        # confidences per block: the filter's input and output size
HIDDEN_SIZE = 32       # 32*32 + 32 + 32*32 + 32 = 2112 parameters
ACCEPT_THRESHOLD = 0.96


def make_filter(input_size: int = INPUT_SIZE, hidden_size: int = HIDDEN_SIZE) -> nn.Sequential:
    """A fresh Learn2PD filter: ``Linear(F, H) -> ReLU -> Linear(H, F)``."""
    return nn.Sequential(nn.Linear(input_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, input_size))


def save_filter(filter_model: nn.Sequential, path, metadata: dict | None = None) -> Path:
    """Write a filter as ``w1, b1, w2, b2`` (float32 safetensors) with string ``metadata``."""
    from safetensors.torch import save_file

    w1, b1, w2, b2 = (t.detach().float().cpu().contiguous() for t in filter_weights_of(filter_model))
    path = Path(path)
    save_file({"w1": w1, "b1": b1, "w2": w2, "b2": b2}, str(path),
              metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path


def load_filter(model=None, filter=None) -> tuple[tuple, dict]:
    """``((w1, b1, w2, b2), metadata)`` of a Learn2PD filter: ``filter`` given as a module or the
    four tensors, a ``filter.safetensors`` file or a folder holding one; by default the
    ``learn2pd/`` companion of the model's checkpoint."""
    if isinstance(filter, nn.Module) or isinstance(filter, (tuple, list)):
        return tuple(t.detach() for t in filter_weights_of(filter)), {}
    from leapdec.models.loading import open_safetensors

    from leapdec.zoo import companion_dir

    path = companion_dir(model, COMPANION, filter,
                         hint=" (filter=PATH; train one with `python -m leapdec.train learn2pd`)")
    if path.is_dir():
        path = path / FILTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"filter: no Learn2PD filter at {path}")
    with open_safetensors(path, error=ValueError) as f:     # a bad file is an error naming it
        names = set(f.keys())
        if names != {"w1", "b1", "w2", "b2"}:
            raise ValueError(f"filter: {path} must hold tensors w1, b1, w2, b2, has {sorted(names)}")
        weights = tuple(f.get_tensor(n) for n in ("w1", "b1", "w2", "b2"))
        metadata = dict(f.metadata() or {})
    return weights, metadata


@register_method("learn2pd", model_kind="masked", base_model="stdlib-mdm", companion="learn2pd", recipe="learn2pd")
def learn2pd(model, prompts: list[list[int]], *, max_new_tokens: int = 128, gen_length: int | None = None,
             block_length: int | None = None, steps: int | None = None, filter=None,
             accept_threshold: float | None = None, eotp: bool = False,
             eot_threshold: float = EOT_THRESHOLD,
             temperature: float = 0.0, seed: int | None = None, cache: str = "none",
             early_exit: bool = True, stop_tokens=None, stream=None, page_size: int = 16) -> GenerationOutput:
    """Learn2PD decoding: LLaDA's quota per step (``steps``, default gen_length: one token) union
    the masked block positions the filter accepts (``sigmoid > accept_threshold``, default the
    filter's own or 0.96). ``filter``: a path, a module or ``(w1, b1, w2, b2)``; default the
    model's ``learn2pd/`` companion. ``eotp``: End-of-Text Prediction (``eot_threshold``: the
    confidence a predicted EOS needs, default 0.9). Other options as ``llada``; the block (default 32) must
    fit the filter's input. Stats add ``decoded_positions`` and ``eot_rows``."""
    weights, meta = load_filter(model, filter)
    w1 = weights[0]
    if w1.dim() != 2:
        raise ValueError(f"filter: w1 must be [H, F], got shape {tuple(w1.shape)}")
    if accept_threshold is None:
        accept_threshold = float(meta.get("accept_threshold", ACCEPT_THRESHOLD))
    if block_length is None:
        block_length = min(INPUT_SIZE, w1.shape[1])     # the filter reads one block's confidences
        if gen_length is None and max_new_tokens > 0:
            # LLaDA needs gen_length % block_length == 0: the canvas is rounded up, the output
            # still stops at max_new_tokens
            gen_length = -(-max_new_tokens // block_length) * block_length
    settings = DiffusionSettings(model, max_new_tokens, gen_length, block_length, steps, "learned",
                                 filter_weights=weights, accept_threshold=accept_threshold,
                                 temperature=temperature, seed=seed, eotp=eotp, eot_threshold=eot_threshold,
                                 cache=cache, early_exit=early_exit, page_size=page_size)
    if settings.block_length > w1.shape[1]:
        raise ValueError(f"block_length ({settings.block_length}) must not exceed the filter's input "
                         f"size ({w1.shape[1]} confidences)")
    weights = tuple(t.to(model.device, torch.float32) for t in weights)
    settings.filter_weights = weights
    out = DiffusionDecoder(model, prompts, settings, stop_token_set(model, stop_tokens), stream).run()
    out.stats["accept_threshold"] = accept_threshold
    return out
