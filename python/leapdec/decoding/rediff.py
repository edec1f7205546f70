"""Method "rediff": ReDiff's refining decode: LLaDA steps that also revise.

Each step commits masked positions as LLaDA does (``decoding.llada``) and, from step
``revise_start`` of each block on, rewrites already-unmasked positions of the current block
(EOS included) where the model now predicts another token with a higher probability than the one there
(optionally only the most confident ``revise_topk`` share of them), all in the same
``unmask_and_filter(revise=True)`` call. It runs on the ReDiff-refined weights (trained by
``python -m leapdec.train rediff`` to restore corrupted tokens and to revise its own drafts
into an expert's corrections), found in the base model's ``rediff/`` companion folder.
"""

from __future__ import annotations

import json
import threading
import weakref
from pathlib import Path

from leapdec.decoding.base import GenerationOutput, register_method, stop_token_set
from leapdec.decoding.llada import DiffusionDecoder, DiffusionSettings

COMPANION = "rediff"

_REFINED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # base model -> {path: model}
_LOCK = threading.Lock()


def _is_refined(model) -> bool:
    """True when ``model`` was itself loaded from a ReDiff-refined checkpoint (its card says so)."""
    base = getattr(model, "checkpoint_dir", None)
    card = Path(base) / "card.json" if base is not None else None
    if card is None or not card.is_file():
        return False
    try:
        return json.loads(card.read_text()).get("method") == "rediff"
    except (OSError, ValueError):
        return False


def refined_model(model, refined=None):
    """The model that decodes: ``refined`` given as a model or a checkpoint folder; by default
    the ``rediff/`` companion of ``model``'s checkpoint (loaded once, on the model's device and
    dtype), or ``model`` itself when it is a refined checkpoint."""
    from leapdec.models import Transformer, load_checkpoint
    from leapdec.zoo import companion_dir

    if isinstance(refined, Transformer):
        return refined
    if refined is None and _is_refined(model):
        return model
    path = companion_dir(model, COMPANION, refined,
                         hint=" (refined=PATH or a model; train one with `python -m leapdec.train rediff`)")
    key = str(Path(path).resolve())
    with _LOCK:
        cache = _REFINED.setdefault(model, {})
        if key not in cache:
            cache[key] = load_checkpoint(path, device=model.device, dtype=model.dtype).eval()
        return cache[key]


@register_method("rediff", model_kind="masked", base_model="stdlib-mdm", companion="rediff", recipe="rediff")
def rediff(model, prompts: list[list[int]], *, max_new_tokens: int = 128, gen_length: int | None = None,
           block_length: int | None = None, steps: int | None = None, refined=None, revise: bool = True,
           revise_start: int = 1, revise_topk: float = 1.0, policy: str = "topk",
           threshold: float | None = None, factor: float = 1.0, temperature: float = 0.0,
           seed: int | None = None, cache: str = "none", early_exit: bool = True, stop_tokens=None,
           stream=None, page_size: int = 16) -> GenerationOutput:
    """ReDiff decoding: LLaDA's commit rule (``policy``, ``steps``, ``block_length``, ``cache``
    ... as ``llada``) plus revision of the current block's unmasked tokens from step
    ``revise_start`` of each block on (``revise_topk``: the share of eligible revisions applied,
    most confident first). ``refined``: the refined model or its folder (default the model's
    ``rediff/`` companion); ``revise=False`` decodes the refined model without revising.
    Stats add ``revisions`` (tokens rewritten)."""
    decoder_model = refined_model(model, refined)
    if decoder_model.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"refined: vocabulary {decoder_model.config.vocab_size} differs from the "
                         f"model's {model.config.vocab_size}")
    # every unmasked block token may be revised, EOS included (a premature EOS is the typical
    # few-step error): no token is padding here (pad_id -1)
    settings = DiffusionSettings(decoder_model, max_new_tokens, gen_length, block_length, steps, policy,
                                 threshold, factor, temperature=temperature, seed=seed, revise=revise,
                                 revise_start=revise_start, revise_topk=revise_topk, cache=cache,
                                 early_exit=early_exit, page_size=page_size, pad_id=-1)
    return DiffusionDecoder(decoder_model, prompts, settings, stop_token_set(model, stop_tokens), stream).run()
