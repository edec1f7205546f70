"""Decoding methods, one module each, behind one entry point:

    generate(model, input_ids, method="ar", max_new_tokens=..., **options) -> GenerationOutput

A method module registers itself and its spec with ``@register_method(name, ...)``
(``leapdec.engine.spec``); adding a method is adding its module to ``_METHOD_MODULES``.
"""

from __future__ import annotations

import importlib
import inspect
import queue
import threading

from leapdec.decoding.base import (GenerationOutput, available_methods, get_method, normalize_prompts,
                                   register_method, sample_next)
from leapdec.engine.rows import FINISH_LENGTH, FINISH_STOP, check_stop_strings, model_tokenizer
from leapdec.engine.spec import check_model_kind, method_spec

_METHOD_MODULES = ["autoregressive", "medusa", "falcon", "lookup", "sd", "pearl", "llada", "learn2pd", "rediff", "wedlm", "recap", "deer"]

for _name in _METHOD_MODULES:
    importlib.import_module(f"{__name__}.{_name}")


def methods() -> list[str]:
    """Names of the available decoding methods."""
    return available_methods()


def generate(model, input_ids, method: str = "ar", attention_mask=None, **options) -> GenerationOutput:
    """Decode new tokens for each prompt with ``method``.

    ``input_ids``: a LongTensor ``[B, T]`` (with ``attention_mask`` for padded rows) or a list of
    token lists. ``options`` go to the method (``max_new_tokens``, ``temperature``, ``top_k``,
    ``top_p``, ``seed``, ``stop_tokens``, ``stream``, and the method's own). Returns the new
    tokens of each row (stop token excluded) and statistics.
    """
    fn, prompts = _prepare(model, input_ids, method, attention_mask)
    return _finalize(model, fn(model, prompts, **_method_options(fn, options)), options)


def _method_options(fn, options: dict) -> dict:
    """``stop_strings`` / ``tokenizer`` go to methods that take them; for the others they are
    applied to the output (``_finalize``)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in options.items() if k not in ("stop_strings", "tokenizer") or k in params}


def _prepare(model, input_ids, method, attention_mask):
    if not hasattr(model, "forward_paged") or not hasattr(model, "config"):
        hint = ""
        if type(model).__module__.startswith("transformers"):
            hint = (": leapdec decodes its own models; load the same checkpoint with "
                    "leapdec.load_model(path) (a Hugging Face folder or a .gguf file)")
        raise TypeError(f"model must be a leapdec model (leapdec.load_model), got {type(model).__name__}{hint}")
    spec = method_spec(method)
    check_model_kind(spec, model)
    prompts = normalize_prompts(input_ids, attention_mask, model.config.vocab_size)
    context = getattr(model.config, "max_position_embeddings", None)
    for i, p in enumerate(prompts):
        if context is not None and len(p) > context:
            raise ValueError(f"prompt {i} holds {len(p)} tokens, more than the model's context "
                             f"(max_position_embeddings = {context})")
    return spec.fn, prompts


def _finalize(model, out: GenerationOutput, options: dict) -> GenerationOutput:
    """Every method's output carries a finish reason per row and, where a tokenizer is known, the
    text; methods that do not apply stop strings while decoding have them applied here."""
    if out.finish_reason is not None:          # a method on the engine's rows did it all
        return out
    tok = options.get("tokenizer") or model_tokenizer(model)
    stops = check_stop_strings(options.get("stop_strings"))
    limit = options.get("max_new_tokens", 128)
    reasons, texts = [], []
    for i, toks in enumerate(out.tokens):
        reason = FINISH_LENGTH if len(toks) >= limit else FINISH_STOP
        if stops and tok is not None:
            for j in range(len(toks)):
                if any(s in tok.decode(toks[:j + 1]) for s in stops):
                    out.tokens[i] = toks = toks[:j + 1]
                    reason = FINISH_STOP
                    break
        reasons.append(reason)
        if tok is not None:
            texts.append(_cut(tok.decode(toks), stops))
    out.finish_reason = reasons
    out.text = texts if tok is not None else None
    return out


def _cut(text: str, stops) -> str:
    for s in stops:
        at = text.find(s)
        if at >= 0:
            text = text[:at]
    return text


class _Cancelled(Exception):
    """Raised inside a method's stream callback when the consumer closed the generator."""


def stream_generate(model, input_ids, method: str = "ar", attention_mask=None, **options):
    """Like ``generate`` but a generator: yields, after each model call, the list of tokens each
    row gained in that call (empty lists for rows with nothing new); the final
    ``GenerationOutput`` is the generator's return value. The method runs in a worker thread;
    closing the generator early stops it at its next model call."""
    if "stream" in options:
        raise ValueError("stream_generate yields the tokens itself; do not pass stream=")
    fn, prompts = _prepare(model, input_ids, method, attention_mask)
    items: queue.Queue = queue.Queue(maxsize=1)
    closed = threading.Event()

    def callback(new_tokens):
        if closed.is_set():
            raise _Cancelled()
        items.put(("tokens", new_tokens))

    def worker():
        try:
            out = fn(model, prompts, stream=callback, **_method_options(fn, options))
            items.put(("end", _finalize(model, out, options)))
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001  (handed to the consumer)
            items.put(("error", e))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "tokens":
                yield value
            elif kind == "error":
                raise value
            else:
                return value                  # the GenerationOutput (StopIteration.value)
    finally:
        closed.set()
        while thread.is_alive():               # unblock a worker waiting on a full queue
            try:
                items.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


__all__ = ["GenerationOutput", "generate", "get_method", "methods", "normalize_prompts",
           "register_method", "sample_next", "stream_generate"]
