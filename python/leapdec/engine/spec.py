"""One spec per decoding method: the registry, ``evaluate``, the CLI and ``train`` all read it.

``register_method(name, model_kind=..., base_model=..., companion=..., recipe=..., lossless=...)``
decorates the method's function ``fn(model, prompts, **options) -> GenerationOutput``. A method
listed anywhere in the package is one registered here: there is no other list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# The kinds of model a method decodes:
#   causal            an AR LM (config.causal True)
#   masked            a bidirectional masked diffusion LM (config.causal False, a mask token)
#   causal-diffusion  a causal LM fine-tuned for WeDLM's causal diffusion (causal, a mask token)
MODEL_KINDS = ("causal", "masked", "causal-diffusion")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable
    model_kind: str = "causal"
    base_model: str = "stdlib-ar"      # the zoo model the demo and benchmarks decode with
    companion: str | None = None       # folder beside the model holding its weights (heads, drafter, ...)
    recipe: str | None = None          # `python -m leapdec.train RECIPE` makes the companion / model
    lossless: bool = False             # greedy output identical to greedy AR on the same model
    summary: str = ""


_SPECS: dict[str, MethodSpec] = {}


def register_method(name: str, *, model_kind: str = "causal", base_model: str = "stdlib-ar",
                    companion: str | None = None, recipe: str | None = None, lossless: bool = False,
                    summary: str = ""):
    """Decorator: make ``fn(model, prompts, **options) -> GenerationOutput`` the method ``name``."""
    if model_kind not in MODEL_KINDS:
        raise ValueError(f"model_kind must be one of {MODEL_KINDS}, got {model_kind!r}")

    def deco(fn):
        old = _SPECS.get(name)
        if old is not None and old.fn is not fn:
            raise ValueError(f"decoding method {name!r} is already registered by {old.fn.__module__}")
        doc = (fn.__doc__ or "").strip().split("\n")[0]
        _SPECS[name] = MethodSpec(name, fn, model_kind, base_model, companion, recipe, lossless,
                                  summary or doc)
        return fn
    return deco


def method_spec(name: str) -> MethodSpec:
    """The spec of method ``name``; a clear error lists the available ones otherwise."""
    if name not in _SPECS:
        raise ValueError(f"unknown decoding method {name!r}; available: {', '.join(available_methods())}")
    return _SPECS[name]


def get_method(name: str) -> Callable:
    return method_spec(name).fn


def available_methods() -> list[str]:
    return sorted(_SPECS)


def specs() -> list[MethodSpec]:
    return [_SPECS[n] for n in available_methods()]


def model_kind_of(model) -> str:
    cfg = model.config
    if not cfg.causal:
        return "masked"
    return "causal-diffusion" if getattr(cfg, "mask_token_id", None) is not None else "causal"


def check_model_kind(spec: MethodSpec, model) -> None:
    """A method only decodes the kind of model it is made for (a causal WeDLM model is also an
    AR model, so AR methods accept it)."""
    kind = model_kind_of(model)
    ok = kind == spec.model_kind or (spec.model_kind == "causal" and kind == "causal-diffusion")
    if not ok:
        what = {"causal": "a causal (autoregressive) model",
                "masked": "a bidirectional masked diffusion LM (config.causal False with a mask_token_id)",
                "causal-diffusion": "a causal diffusion LM (a causal model with a mask_token_id, e.g. stdlib-wedlm)"}
        raise ValueError(f"method {spec.name!r} decodes {what[spec.model_kind]}; this model is "
                         f"{what[kind]}: use one of "
                         f"{', '.join(s.name for s in specs() if s.model_kind == kind or (s.model_kind == 'causal' and kind == 'causal-diffusion'))}")
