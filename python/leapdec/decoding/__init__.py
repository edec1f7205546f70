"""Decoding methods, one module each, behind one entry point:

    generate(model, input_ids, method="ar", max_new_tokens=..., **options) -> GenerationOutput

A method module registers itself with ``@register_method(name)`` (``decoding.base``); adding a
method is adding its module name to ``_METHOD_MODULES`` (modules not present are skipped).
"""

from __future__ import annotations

import importlib
import queue
import threading

from leapdec.decoding.base import (GenerationOutput, available_methods, get_method, normalize_prompts,
                                   register_method, sample_next)

_METHOD_MODULES = [
    "autoregressive",
    "medusa",
    "falcon",
    "pearl",
    "deer",
    "llada",
    "learn2pd",
    "rediff",
    "wedlm",
    "recap",
    "ctc_attention",
]

for _name in _METHOD_MODULES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:       # only a method module that is not there is skipped
        if _e.name != f"{__name__}.{_name}":
            raise


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
    fn = get_method(method)
    prompts = normalize_prompts(input_ids, attention_mask, model.config.vocab_size)
    return fn(model, prompts, **options)


class _Cancelled(Exception):
    """Raised inside a method's stream callback when the consumer closed the generator."""


def stream_generate(model, input_ids, method: str = "ar", attention_mask=None, **options):
    """Like ``generate`` but a generator: yields, after each model call, the list of tokens each
    row gained in that call (empty lists for rows with nothing new); the final
    ``GenerationOutput`` is the generator's return value. The method runs in a worker thread;
    closing the generator early stops it at its next model call."""
    if "stream" in options:
        raise ValueError("stream_generate yields the tokens itself; do not pass stream=")
    fn = get_method(method)
    prompts = normalize_prompts(input_ids, attention_mask, model.config.vocab_size)
    items: queue.Queue = queue.Queue(maxsize=1)
    closed = threading.Event()

    def callback(new_tokens):
        if closed.is_set():
            raise _Cancelled()
        items.put(("tokens", new_tokens))

    def worker():
        try:
            items.put(("end", fn(model, prompts, stream=callback, **options)))
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
