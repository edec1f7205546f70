"""The model runner: owns a model's KV-cache workspace, plans steps and replays captured graphs
(nano-vllm's ``ModelRunner``).

* ``Session``: the cache a generation decodes in. A model keeps one workspace (a cache reused
  across calls: re-zeroing a large cache costs more than a step, and captured CUDA graphs hold
  pointers into it); a session takes it when it is free and large enough (a new, larger one
  replaces it otherwise, a private cache serves a second thread meanwhile), and on exit — also
  on an error or an early-closed stream — frees every sequence it started and releases it.
* ``plan_extend``: the one planner of a step that appends tokens to cache sequences (prefill,
  extend, decode, tree verify, drafter blocks): ids, positions, slots, attention plan, mask.
* ``StaticStep``: a step of ``bp`` rows with exactly ``q`` new tokens each, over static index
  buffers (one int32 vector, one bool mask): AR decode (q = 1), tree verification with a fixed
  tree size, any fixed-shape step. On CUDA it is captured in a CUDA graph and replayed (one
  host-to-device copy, one replay); on CPU the same static step runs eagerly.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch

from leapdec.kv_cache import AttentionPlan, PagedKVCache
from leapdec.models.transformer import StepInput

_WORKSPACES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_WORKSPACES_LOCK = threading.Lock()


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def pages_for(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size)


class Workspace:
    """A KV cache kept between generations plus the graphs captured against it."""

    def __init__(self, cache: PagedKVCache):
        self.cache = cache
        self.graphs: dict = {}
        self.lock = threading.Lock()


def _fits(cache: PagedKVCache, model, num_pages: int, page_size: int) -> bool:
    return (cache.page_size == page_size and cache.device == model.device
            and cache.k_caches[0].dtype == model.dtype and cache.num_free_pages >= num_pages)


def acquire_workspace(model, num_pages: int, page_size: int, make_cache=None):
    """A workspace with at least ``num_pages`` free pages of ``page_size`` for ``model`` (any
    module with ``new_cache(num_pages=, page_size=)``, or ``make_cache(num_pages, page_size)``).
    Returns (workspace, release callback)."""
    make = make_cache or (lambda n, ps: model.new_cache(num_pages=n, page_size=ps))
    with _WORKSPACES_LOCK:
        ws = _WORKSPACES.get(model)
        if ws is not None:
            if not ws.lock.acquire(blocking=False):          # another thread decodes: private cache
                return Workspace(make(num_pages, page_size)), lambda: None
            if _fits(ws.cache, model, num_pages, page_size):
                return ws, ws.lock.release
            ws.lock.release()
        ws = Workspace(make(next_pow2(num_pages), page_size))
        ws.lock.acquire()
        _WORKSPACES[model] = ws
        return ws, ws.lock.release


def free_workspace(model) -> None:
    """Drop the KV cache and graphs kept for ``model`` (they are rebuilt on the next call)."""
    with _WORKSPACES_LOCK:
        _WORKSPACES.pop(model, None)


class Session:
    """``with Session(model, num_pages, page_size) as s:`` — ``s.cache`` and ``s.new_sequence()``;
    every sequence started here is freed and the workspace released on exit, whatever happens."""

    def __init__(self, model, num_pages: int, page_size: int = 16, make_cache=None):
        if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size <= 0:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        self.model, self.num_pages, self.page_size, self.make_cache = model, num_pages, page_size, make_cache
        self.workspace: Workspace | None = None
        self._release = None
        self._seqs: list[int] = []

    @property
    def cache(self) -> PagedKVCache:
        return self.workspace.cache

    @property
    def graphs(self) -> dict:
        return self.workspace.graphs

    def __enter__(self) -> "Session":
        self.workspace, self._release = acquire_workspace(self.model, max(1, self.num_pages),
                                                          self.page_size, self.make_cache)
        return self

    def new_sequence(self) -> int:
        seq = self.cache.new_sequence()
        self._seqs.append(seq)
        return seq

    def __exit__(self, *exc) -> None:
        try:
            for s in self._seqs:
                try:
                    self.cache.free(s)
                except KeyError:
                    pass
        finally:
            self._seqs.clear()
            self._release()


def open_sequences(model, lengths: list[int], page_size: int) -> tuple[Session, list[int]]:
    """A drafter's own cache (sd, pearl, deer): an entered ``Session`` on ``model`` with one
    sequence per row, row i able to hold ``lengths[i]`` tokens. Close it with ``close_session``."""
    session = Session(model, sum(pages_for(n, page_size) + 1 for n in lengths), page_size).__enter__()
    return session, [session.new_sequence() for _ in lengths]


def close_session(session: Session | None) -> None:
    """Exit ``session`` (frees its sequences, releases the workspace); None is a no-op. Returns
    None, so ``self.session = close_session(self.session)`` closes at most once."""
    if session is not None:
        session.__exit__(None, None, None)


# --------------------------------------------------------------------------- planning

def plan_extend(cache: PagedKVCache, seqs: list[int], tokens: list[list[int]], positions=None,
                mask_mode: str | None = None, custom_mask: torch.Tensor | None = None,
                logits="all") -> StepInput:
    """Append ``tokens[i]`` to ``seqs[i]`` and describe the step that runs them (see
    ``StepInput.extend``): the planner of every variable-shape step."""
    return StepInput.extend(cache, seqs, tokens, positions=positions, mask_mode=mask_mode,
                            custom_mask=custom_mask, logits=logits)


# --------------------------------------------------------------------------- fixed-shape steps

@dataclass
class StaticLayout:
    """Offsets of the int32 metadata vector of ``bp`` rows with ``q`` tokens each:
    ``ids | positions | slots | qo_indptr | kv_indptr | last_page_len | kv_indices[capacity]``."""

    bp: int
    q: int
    capacity: int

    def views(self, meta: torch.Tensor, max_kv_len: int, mask_mode: str, custom_mask=None,
              mask_indptr=None) -> StepInput:
        n = self.bp * self.q
        ids, pos, slots = meta[:n], meta[n:2 * n], meta[2 * n:3 * n]
        o = 3 * n
        qo_indptr, kv_indptr = meta[o:o + self.bp + 1], meta[o + self.bp + 1:o + 2 * self.bp + 2]
        o += 2 * self.bp + 2
        last, kv_indices = meta[o:o + self.bp], meta[o + self.bp:]
        plan = AttentionPlan(qo_indptr, kv_indptr, kv_indices, last, self.q, max_kv_len)
        return StepInput(ids, pos, slots, plan, mask_mode=mask_mode, custom_mask=custom_mask,
                         mask_indptr=mask_indptr)

    def build(self, tokens, positions, starts, pages, page_size: int, kv_lens=None) -> list[int]:
        """Values for rows whose ``q`` tokens (flat ``tokens``, ``positions``) occupy cache
        positions ``starts[i] .. starts[i] + q - 1`` of page list ``pages[i]`` (reserved already).
        Each row attends to its first ``kv_lens[i]`` positions (default ``starts[i] + q``: the
        queries are the last positions; a larger length for bidirectional steps whose queries
        sit inside the sequence). Padded rows read page 0 and write nothing (slot -1)."""
        n, q, ps = len(starts), self.q, page_size
        pad = self.bp - n
        slots, kv_indptr, last, kv_indices = [], [0], [], []
        for i, (start, pg) in enumerate(zip(starts, pages)):
            for p in range(start, start + q):
                slots.append(pg[p // ps] * ps + p % ps)
            kv_len = start + q if kv_lens is None else kv_lens[i]
            used = -(-kv_len // ps)
            kv_indices += pg[:used]
            kv_indptr.append(kv_indptr[-1] + used)
            last.append(kv_len - (used - 1) * ps)
        pad_pages = -(-q // ps)
        for _ in range(pad):
            kv_indices += [0] * pad_pages
            kv_indptr.append(kv_indptr[-1] + pad_pages)
            last.append(q - (pad_pages - 1) * ps)
        if len(kv_indices) > self.capacity:
            raise ValueError(f"static step: {len(kv_indices)} pages exceed its capacity {self.capacity}")
        kv_indices += [0] * (self.capacity - len(kv_indices))
        qpad = [0] * (pad * q)
        return (list(tokens) + qpad + list(positions) + qpad + slots + [-1] * (pad * q)
                + [i * q for i in range(self.bp + 1)] + kv_indptr + last + kv_indices)


class StaticStep:
    """A step of up to ``bp`` rows with ``q`` new tokens each over static buffers, captured in a
    CUDA graph on CUDA (``graph=False`` or a CPU model: the same static step runs eagerly).
    ``mask``: a custom mask per row (``q x q``, e.g. a tree's ancestor mask) given each run;
    None: ``mask_mode`` ("causal" for decode)."""

    def __init__(self, model, cache: PagedKVCache, bp: int, q: int, max_pages: int,
                 mask_mode: str = "causal", custom: bool = False, return_hidden: bool = False,
                 graph: bool = True, pool=None):
        self.model, self.cache = model, cache
        self.layout = StaticLayout(bp, q, bp * max_pages)
        self.bp, self.q, self.max_pages = bp, q, max_pages
        self.return_hidden = return_hidden
        dummy = self.layout.build([], [], [], [], cache.page_size)
        device = cache.device
        self.host = torch.tensor(dummy, dtype=torch.int32)
        self.mask_host = None
        if custom:
            self.mask_host = torch.eye(q, dtype=torch.bool).repeat(bp, 1, 1).reshape(-1)
            mask_mode = "custom"
        use_graph = graph and device.type == "cuda"
        if use_graph:
            self.host = self.host.pin_memory()
            if self.mask_host is not None:
                self.mask_host = self.mask_host.pin_memory()
        self.meta = self.host if device.type == "cpu" else self.host.to(device)
        self.mask = None
        mask_indptr = None
        if custom:
            self.mask = self.mask_host if device.type == "cpu" else self.mask_host.to(device)
            mask_indptr = torch.arange(0, (bp + 1) * q * q, q * q, dtype=torch.int32, device=device)
        self.step = self.layout.views(self.meta, max_pages * cache.page_size, mask_mode, self.mask, mask_indptr)
        self.graph = None
        if not use_graph:
            return
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):                          # warm up: workspaces, RoPE table
            for _ in range(2):
                model.forward_paged(self.step, cache, return_hidden=return_hidden)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.out = model.forward_paged(self.step, cache, return_hidden=return_hidden)

    def run(self, tokens, positions, starts, pages, mask: torch.Tensor | None = None, kv_lens=None):
        """Logits ``[n*q, V]`` (and hidden ``[n*q, h]`` with ``return_hidden``) of ``n = len(starts)``
        rows; ``mask``: bool ``[n, q, q]`` when the step has a custom mask; ``kv_lens``: see
        ``StaticLayout.build``."""
        n = len(starts)
        values = self.layout.build(tokens, positions, starts, pages, self.cache.page_size, kv_lens)
        self.host.copy_(torch.tensor(values, dtype=torch.int32))
        if self.mask_host is not None:
            if mask is None:
                raise ValueError("this static step needs a custom mask per row")
            self.mask_host[:n * self.q * self.q].copy_(mask.reshape(-1))
        rows = n * self.q
        if self.graph is None:
            if self.mask is not None and self.mask is not self.mask_host:
                self.mask.copy_(self.mask_host, non_blocking=True)
            if self.meta is not self.host:
                self.meta.copy_(self.host, non_blocking=True)
            out = self.model.forward_paged(self.step, self.cache, return_hidden=self.return_hidden)
        else:
            self.meta.copy_(self.host, non_blocking=True)
            if self.mask is not None:
                self.mask.copy_(self.mask_host, non_blocking=True)
            self.graph.replay()
            out = self.out
        if self.return_hidden:
            return out[0][:rows], out[1][:rows]
        return out[:rows]


class StaticSteps:
    """Static steps of one kind keyed by (padded rows, pages per row), made on demand and kept in
    the session's workspace (CUDA graphs are captured once per key)."""

    def __init__(self, session: Session, kind: str, q: int, graph: bool = True, **options):
        self.session, self.kind, self.q, self.graph, self.options = session, kind, q, graph, options
        graphs = session.graphs
        if graph and session.cache.device.type == "cuda" and "pool" not in graphs:
            graphs["pool"] = torch.cuda.graph_pool_handle()
        self.pool = graphs.get("pool")

    def get(self, n_rows: int, pages_per_row: int) -> StaticStep:
        key = (self.kind, self.q, next_pow2(n_rows), next_pow2(pages_per_row))
        graphs = self.session.graphs
        step = graphs.get(key)
        if step is None:
            step = StaticStep(self.session.model, self.session.cache, key[2], self.q, key[3],
                              graph=self.graph, pool=self.pool, **self.options)
            graphs[key] = step
        return step
