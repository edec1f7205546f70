"""Method "ar": plain autoregressive decoding on the paged KV cache (the baseline every other
method is measured against).

One paged forward prefills all (ragged) prompts, then each decode step feeds one token per live
row (qo_len = 1). Rows finish independently on a stop token or at ``max_new_tokens``. After the
prefill every live row's remaining positions are reserved in the cache, so a decode step needs
no allocation: its metadata (slots, page lists, lengths) is computed on the host from the fixed
page lists and lands in one int32 tensor. On CUDA that tensor is copied into the static buffer
of a captured CUDA graph (one graph per padded batch size and page budget), so a decode step is
one host-to-device copy, one graph replay and one sync for the sampled tokens.
"""

from __future__ import annotations

import threading
import warnings
import weakref

import torch

from leapdec.decoding.base import (GenerationOutput, Stats, check_sampling, make_generator,
                                   register_method, sample_next, stop_token_set)
from leapdec.kv_cache import AttentionPlan, PagedKVCache
from leapdec.models.transformer import StepInput

# model -> _Workspace (the cache and CUDA graphs reused across generate calls)
_WORKSPACES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_WORKSPACES_LOCK = threading.Lock()


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class _Workspace:
    """A KV cache kept between calls (re-zeroing a big cache each call costs more than a step)
    plus the CUDA graphs captured against it."""

    def __init__(self, cache: PagedKVCache):
        self.cache = cache
        self.graphs: dict = {}
        self.lock = threading.Lock()


def _acquire_cache(model, num_pages: int, page_size: int):
    """A cache with at least ``num_pages`` free pages: the model's workspace when it fits (a new,
    larger one replaces it otherwise), or a private cache while another thread holds it.
    Returns (workspace, release callback)."""
    with _WORKSPACES_LOCK:
        ws = _WORKSPACES.get(model)
        if ws is not None:
            if not ws.lock.acquire(blocking=False):
                return _Workspace(model.new_cache(num_pages=num_pages, page_size=page_size)), lambda: None
            cache = ws.cache
            if (cache.page_size == page_size and cache.device == model.device
                    and cache.k_caches[0].dtype == model.dtype and cache.num_free_pages >= num_pages):
                return ws, ws.lock.release
            ws.lock.release()
        ws = _Workspace(model.new_cache(num_pages=_next_pow2(num_pages), page_size=page_size))
        ws.lock.acquire()
        _WORKSPACES[model] = ws
        return ws, ws.lock.release


def free_workspace(model) -> None:
    """Drop the KV cache and CUDA graphs that ``generate(method="ar")`` keeps for ``model``."""
    with _WORKSPACES_LOCK:
        _WORKSPACES.pop(model, None)


class _DecodeMeta:
    """Host-side metadata of a decode step over rows with fixed page lists.

    Layout of the int32 vector (``bp`` rows, padded rows at the end):
    ``ids[bp] | positions[bp] | slots[bp] | qo_indptr[bp+1] | kv_indptr[bp+1] | last_page_len[bp] | kv_indices[...]``.
    A padded row has one query over page 0 with length 1 and slot -1 (writes nothing).
    """

    @staticmethod
    def build(tokens, lengths, pages, page_size, bp=None, kv_capacity=None) -> list[int]:
        n = len(tokens)
        bp = n if bp is None else bp
        pad = bp - n
        ps = page_size
        slots, kv_indptr, last, kv_indices = [], [0], [], []
        for length, pg in zip(lengths, pages):
            slots.append(pg[length // ps] * ps + length % ps)
            used = length // ps + 1
            kv_indices += pg[:used]
            kv_indptr.append(kv_indptr[-1] + used)
            last.append(length % ps + 1)
        for _ in range(pad):
            kv_indices.append(0)
            kv_indptr.append(kv_indptr[-1] + 1)
        if kv_capacity is not None:
            kv_indices += [0] * (kv_capacity - len(kv_indices))
        return (list(tokens) + [0] * pad + list(lengths) + [0] * pad + slots + [-1] * pad
                + list(range(bp + 1)) + kv_indptr + last + [1] * pad + kv_indices)

    @staticmethod
    def step(meta: torch.Tensor, bp: int, max_kv_len: int) -> StepInput:
        """Views of a meta vector (host or device) as a ``StepInput`` of ``bp`` one-token rows."""
        ids, pos, slots = meta[:bp], meta[bp:2 * bp], meta[2 * bp:3 * bp]
        o = 3 * bp
        qo_indptr, kv_indptr = meta[o:o + bp + 1], meta[o + bp + 1:o + 2 * bp + 2]
        o += 2 * bp + 2
        last, kv_indices = meta[o:o + bp], meta[o + bp:]
        plan = AttentionPlan(qo_indptr, kv_indptr, kv_indices, last, 1, max_kv_len)
        return StepInput(ids, pos, slots, plan, mask_mode="causal")


class _GraphStep:
    """A decode step of ``bp`` padded rows over static buffers (meta in, logits out), captured
    in a CUDA graph on CUDA. On CPU the same static step runs eagerly (tests cover the layout)."""

    def __init__(self, model, cache: PagedKVCache, bp: int, max_pages: int, pool=None):
        self.model, self.cache = model, cache
        self.bp, self.max_pages = bp, max_pages
        self.kv_capacity = bp * max_pages
        dummy = _DecodeMeta.build([], [], [], cache.page_size, bp, self.kv_capacity)
        self.host = torch.tensor(dummy, dtype=torch.int32)
        self.graph = None
        if cache.device.type != "cuda":
            self.meta = self.host
            self.step = _DecodeMeta.step(self.meta, bp, max_pages * cache.page_size)
            return
        self.host = self.host.pin_memory()
        self.meta = self.host.to(cache.device)
        self.step = _DecodeMeta.step(self.meta, bp, max_pages * cache.page_size)
        stream = torch.cuda.Stream(device=cache.device)
        stream.wait_stream(torch.cuda.current_stream(cache.device))
        with torch.cuda.stream(stream):              # warm up: workspaces, RoPE table, kernels
            for _ in range(2):
                model.forward_paged(self.step, cache)
        torch.cuda.current_stream(cache.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.logits = model.forward_paged(self.step, cache)

    def run(self, tokens, lengths, pages) -> torch.Tensor:
        """Logits ``[len(tokens), V]`` of one decode step of these rows (``len(tokens) <= bp``)."""
        values = _DecodeMeta.build(tokens, lengths, pages, self.cache.page_size, self.bp, self.kv_capacity)
        self.host.copy_(torch.tensor(values, dtype=torch.int32))
        if self.graph is None:
            return self.model.forward_paged(self.step, self.cache)[:len(tokens)]
        self.meta.copy_(self.host, non_blocking=True)
        self.graph.replay()
        return self.logits[:len(tokens)]


class _GraphSteps:
    """CUDA-graph decode steps keyed by (padded batch size, pages per row), captured on demand."""

    def __init__(self, model, ws: _Workspace):
        self.model, self.ws = model, ws
        key = "pool"
        if key not in ws.graphs:
            ws.graphs[key] = torch.cuda.graph_pool_handle()
        self.pool = ws.graphs[key]

    def get(self, n_rows: int, pages_per_row: int) -> _GraphStep:
        key = (_next_pow2(n_rows), _next_pow2(pages_per_row))
        g = self.ws.graphs.get(key)
        if g is None:
            g = _GraphStep(self.model, self.ws.cache, key[0], key[1], self.pool)
            self.ws.graphs[key] = g
        return g


def _eager_step(model, cache, tokens, lengths, pages) -> torch.Tensor:
    values = _DecodeMeta.build(tokens, lengths, pages, cache.page_size)
    meta = torch.tensor(values, dtype=torch.int32)
    if cache.device.type != "cpu":
        meta = meta.pin_memory().to(cache.device, non_blocking=True)
    step = _DecodeMeta.step(meta, len(tokens), max(lengths) + 1)
    return model.forward_paged(step, cache)


@register_method("ar")
def autoregressive(model, prompts: list[list[int]], *, max_new_tokens: int = 128,
                   temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = None, stop_tokens=None, stream=None,
                   cuda_graph: bool | None = None, page_size: int = 16) -> GenerationOutput:
    """Autoregressive decoding: greedy (``temperature=0``) or sampling (``temperature``,
    ``top_k``, ``top_p``, ``seed``). ``stop_tokens`` (default: the model's eos) end a row and
    are not returned. ``stream(new_tokens)`` is called after every model call. ``cuda_graph``
    (default: on for CUDA models) replays decode steps from captured CUDA graphs."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    check_sampling(temperature, top_k, top_p)
    if not model.config.causal:
        raise ValueError("method 'ar' needs a causal model; this one is a masked diffusion LM "
                         "(config.causal is False): use a diffusion method such as 'llada'")
    if not isinstance(page_size, int) or page_size <= 0:
        raise ValueError(f"page_size must be a positive int, got {page_size!r}")
    if cuda_graph is None:
        cuda_graph = model.device.type == "cuda"
    elif cuda_graph and model.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a model on a CUDA device, the model is on {model.device}")
    stops = stop_token_set(model, stop_tokens)
    stats = Stats()
    outputs: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens == 0:
        return GenerationOutput(outputs, stats.finish(outputs))

    gen = make_generator(seed, model.device)
    ps = page_size
    # every row may feed its prompt plus max_new_tokens - 1 generated tokens
    need = sum(-(-(len(p) + max_new_tokens - 1) // ps) for p in prompts)
    ws, release = _acquire_cache(model, need, ps)
    cache = ws.cache
    seqs = [cache.new_sequence() for _ in prompts]
    graphs = None
    try:
        with torch.no_grad():
            # ---- prefill: all prompts in one paged forward, logits of each prompt's last token
            step = StepInput.extend(cache, seqs, prompts, logits="last")
            next_tokens = sample_next(model.forward_paged(step, cache), temperature, top_k, top_p, gen).tolist()
            stats.call(len(prompts), len(prompts))

            live, tokens, lengths = [], [], []
            for i, t in enumerate(next_tokens):
                if t not in stops:
                    outputs[i].append(t)
                    if len(outputs[i]) < max_new_tokens:
                        live.append(i)
                        tokens.append(t)
                        lengths.append(len(prompts[i]))
            if stream is not None:
                stream([list(o) for o in outputs])
            if live:
                cache.append([seqs[i] for i in live], [max_new_tokens - 1] * len(live))
            pages = [cache.pages(seqs[i]) for i in live]
            if cuda_graph and live:
                graphs = _GraphSteps(model, ws)

            # ---- decode: one token per live row per call
            while live:
                logits = None
                if graphs is not None:
                    try:
                        logits = graphs.get(len(live), max(map(len, pages))).run(tokens, lengths, pages)
                    except RuntimeError as e:      # capture unsupported here: stay eager
                        warnings.warn(f"CUDA graph capture failed, decoding eagerly: {e}")
                        graphs = None
                if logits is None:
                    logits = _eager_step(model, cache, tokens, lengths, pages)
                next_tokens = sample_next(logits, temperature, top_k, top_p, gen).tolist()
                stats.call(len(live), len(live))
                new = [[] for _ in prompts] if stream is not None else None
                keep = []
                for j, (i, t) in enumerate(zip(live, next_tokens)):
                    lengths[j] += 1
                    if t in stops:
                        continue
                    outputs[i].append(t)
                    if new is not None:
                        new[i].append(t)
                    if len(outputs[i]) < max_new_tokens:
                        keep.append(j)
                        tokens[j] = t
                if stream is not None:
                    stream(new)
                if len(keep) != len(live):
                    live = [live[j] for j in keep]
                    tokens = [tokens[j] for j in keep]
                    lengths = [lengths[j] for j in keep]
                    pages = [pages[j] for j in keep]
    finally:
        for s in seqs:
            cache.free(s)
        release()
    return GenerationOutput(outputs, stats.finish(outputs, cuda_graph=graphs is not None))
