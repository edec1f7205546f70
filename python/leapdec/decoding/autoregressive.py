"""Method "ar": plain autoregressive decoding on the paged KV cache (the baseline every other
method is measured against).

One paged forward prefills all (ragged) prompts, then each decode step feeds one token per live
row. Rows finish independently (``engine.rows``: stop tokens, stop strings, ``max_new_tokens``).
After the prefill every live row's remaining positions are reserved in the cache, so a decode
step needs no allocation: it is a fixed-shape step (``engine.runner.StaticStep`` with q = 1)
whose metadata lands in one int32 tensor. On CUDA that step is a captured CUDA graph (one per
padded batch size and page budget): one host-to-device copy, one replay and one sync for the
sampled tokens.
"""

from __future__ import annotations

import warnings

import torch

from leapdec.engine.rows import Rows, check_logits, model_tokenizer
from leapdec.engine.runner import Session, StaticSteps, free_workspace, pages_for, plan_extend  # noqa: F401
from leapdec.engine.sampling import check_sampling, make_generator, sample_next, stop_token_set
from leapdec.engine.spec import register_method


@register_method("ar", lossless=True)
def autoregressive(model, prompts: list[list[int]], *, max_new_tokens: int = 128,
                   temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = None, stop_tokens=None, stop_strings=None, tokenizer=None,
                   stream=None, cuda_graph: bool | None = None, page_size: int = 16):
    """Autoregressive decoding: greedy (``temperature=0``) or sampling (``temperature``,
    ``top_k``, ``top_p``, ``seed``). ``stop_tokens`` (default: the model's eos) end a row and
    are not returned; ``stop_strings`` end it after the token that completes one (needs a
    tokenizer: ``tokenizer=`` or the model's checkpoint). ``stream(new_tokens)`` is called after
    every model call. ``cuda_graph`` (default: on for CUDA models) replays decode steps from
    captured CUDA graphs."""
    check_sampling(temperature, top_k, top_p)
    if not model.config.causal:
        raise ValueError("method 'ar' needs a causal model; this one is a masked diffusion LM "
                         "(config.causal is False): use a diffusion method such as 'llada'")
    if cuda_graph is None:
        cuda_graph = model.device.type == "cuda"
    elif cuda_graph and model.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a model on a CUDA device, the model is on {model.device}")
    if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size <= 0:
        raise ValueError(f"page_size must be a positive int, got {page_size!r}")
    rows = Rows(prompts, max_new_tokens, stop_token_set(model, stop_tokens), stop_strings,
                tokenizer if tokenizer is not None else model_tokenizer(model), stream)
    if max_new_tokens == 0:
        return rows.output(cuda_graph=False)
    gen = make_generator(seed, model.device)
    ps = page_size
    # every row may feed its prompt plus max_new_tokens - 1 generated tokens
    need = sum(pages_for(len(p) + max_new_tokens - 1, ps) for p in prompts)
    graphs_used = False
    with Session(model, need, ps) as session, torch.no_grad():
        cache = session.cache
        seqs = [session.new_sequence() for _ in prompts]
        # ---- prefill: all prompts in one paged forward, logits of each prompt's last token
        step = plan_extend(cache, seqs, prompts, logits="last")
        logits = model.forward_paged(step, cache)
        check_logits(logits, "ar", 0)
        rows.commit_call(rows.rows, [[t] for t in sample_next(logits, temperature, top_k, top_p, gen).tolist()])
        live = rows.live
        if live:
            cache.append([seqs[r.index] for r in live], [max_new_tokens - 1] * len(live))
        pages = {r.index: cache.pages(seqs[r.index]) for r in live}
        steps = StaticSteps(session, "decode", 1, graph=cuda_graph) if live else None
        calls = 1
        # ---- decode: one token per live row per call, a fixed-shape step
        while live:
            tokens = [r.out[-1] for r in live]
            starts = [len(r.prompt) + len(r.out) - 1 for r in live]
            row_pages = [pages[r.index] for r in live]
            try:
                static = steps.get(len(live), max(map(len, row_pages)))
            except RuntimeError as e:                # capture unsupported here: stay eager
                warnings.warn(f"CUDA graph capture failed, decoding eagerly: {e}")
                steps = StaticSteps(session, "decode-eager", 1, graph=False)
                static = steps.get(len(live), max(map(len, row_pages)))
            graphs_used = graphs_used or static.graph is not None
            logits = static.run(tokens, starts, starts, row_pages)
            check_logits(logits, "ar", calls)
            calls += 1
            next_tokens = sample_next(logits, temperature, top_k, top_p, gen).tolist()
            rows.commit_call(live, [[t] for t in next_tokens])
            live = rows.live
    return rows.output(cuda_graph=graphs_used)
