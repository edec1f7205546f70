"""Method "wedlm": WeDLM streaming parallel decoding of a causal diffusion LM (Tencent/WeDLM).

The model is an ordinary causal Transformer fine-tuned so that a ``<|mask|>`` token predicts the
token at its OWN logical position (``leapdec.train.wedlm``). Each row keeps a window of ``window``
logical positions right after its committed prefix; a position is either filled (a token) or a
mask. One decoding step per model call:

1. Reorder each window (``ops.topological_reorder``): filled tokens first, masks after, each group
   in logical order. RoPE positions stay logical (``prefix_len + index``), attention is plain
   causal over this physical order, so every mask sees the whole prefix and every filled token.
2. One causal ``forward_paged`` over all rows' windows. The window's K/V land in scratch slots
   right after the committed prefix (cache positions ``prefix_len ..``, one per window position
   in physical order), overwritten by the next step.
3. Commit the leading run of filled tokens. They were observed inputs of this forward and, being
   the leading filled tokens, sat at physical slots ``0..r-1`` of the window: their K/V were
   computed from the real tokens, over exactly their causal prefix, at their logical positions,
   in the cache slots of those positions. So after the commit the prefix cache holds the exact
   causal K/V of the committed tokens and nothing is recomputed (the property that makes WeDLM
   cache-friendly; ``tests/decoding/test_wedlm.py`` checks it).
4. Fill masks (``ops.unmask_and_filter`` policy ``"entropy"``): per mask, entropy of its
   prediction + ``position_penalty * (index - index of the first mask)``; every mask under
   ``threshold`` is filled, at least the lowest. A token filled in step s is observed in step
   s+1 and committed after it.
5. Slide: the window now starts after the new prefix. Before the next forward it is refilled
   with masks so that ``min(window, tokens left to generate)`` positions follow its leading
   filled run (the run that forward commits): every call predicts ``window`` positions past
   what it commits, a constant workload, and fresh masks can be filled in the same call that
   commits the run before them.

The first call runs each prompt and its first window of masks together (the prompt is the
window's leading filled run, committed after that call). A row ends on a stop token or at
``max_new_tokens``; once its leading filled run reaches either, those tokens are emitted right
after the fill without another forward, since their K/V are never read.

``temperature == 0`` fills each chosen mask with its argmax. With ``temperature > 0`` the same
entropy rule (on the raw logits) chooses the masks, and each chosen mask's token is sampled from
its temperature / ``top_k`` / ``top_p`` warped distribution (``decoding.base.warp_logits``) with a
generator seeded by ``seed``. Stats: ``model_calls``, ``tokens_per_call`` (committed tokens per
forward and row), ``wall_s``, plus ``window``, ``threshold``, ``position_penalty``,
``window_tokens`` (query tokens the forwards ran), ``accepted_lengths`` (per row, the tokens each
call gave it; 0 for the first call, which commits the prompt) and ``accept_length_histogram``.
"""

from __future__ import annotations

from collections import Counter

import torch

from leapdec.engine.runner import Session, StaticSteps
from leapdec.decoding.base import (GenerationOutput, Stats, check_sampling, make_generator,
                                   register_method, sample_next, stop_token_set)
from leapdec.kv_cache import PagedKVCache
from leapdec.models.transformer import StepInput
from leapdec.ops import topological_reorder, unmask_and_filter

DEFAULT_WINDOW = 16
DEFAULT_THRESHOLD = 0.4
DEFAULT_POSITION_PENALTY = 0.02


class _Row:
    """One sequence: its cache id, committed prefix length and window.

    ``window[i]`` is the token at logical position ``cached + i`` (the mask id while
    ``filled[i]`` is False). ``cached`` counts the leading positions whose K/V in the cache are
    exact; the prompt starts in the window (filled) and is committed by the first call."""

    __slots__ = ("index", "seq", "prompt_len", "cached", "window", "filled", "out", "done", "gained")

    def __init__(self, index: int, seq: int, prompt: list[int]):
        self.index, self.seq, self.prompt_len = index, seq, len(prompt)
        self.cached = 0
        self.window = list(prompt)
        self.filled = [True] * len(prompt)
        self.out: list[int] = []
        self.gained: list[int] = []       # tokens gained per call the row took part in
        self.done = False

    def leading_filled(self) -> int:
        """Length of the run of filled positions at the start of the window."""
        r = 0
        while r < len(self.filled) and self.filled[r]:
            r += 1
        return r


class WeDLMDecoder:
    """Streaming WeDLM decoding of a batch of prompts over a ``PagedKVCache``.

    ``step()`` runs one model call over every live row and returns the tokens each row gained;
    ``rows`` and ``cache`` are exposed so that tests can check the cache after each commit."""

    def __init__(self, model, prompts: list[list[int]], cache: PagedKVCache, *, mask_id: int,
                 stops: set[int], max_new_tokens: int, window: int = DEFAULT_WINDOW,
                 threshold: float = DEFAULT_THRESHOLD,
                 position_penalty: float = DEFAULT_POSITION_PENALTY, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, static: StaticSteps | None = None):
        self.model, self.cache = model, cache
        # static: fixed-shape window steps (q = 2 * window tokens per row, padded; a CUDA graph
        # on CUDA); the cache then needs 2 * window scratch positions after each row's prefix
        self.static = static
        self.mask_id, self.stops = mask_id, stops
        self.max_new_tokens, self.window = max_new_tokens, window
        self.threshold, self.position_penalty = threshold, position_penalty
        self.temperature, self.top_k, self.top_p, self.generator = temperature, top_k, top_p, generator
        self.rows = [_Row(i, cache.new_sequence(), p) for i, p in enumerate(prompts)]
        self.window_tokens = 0
        if max_new_tokens == 0:
            for row in self.rows:
                row.done = True

    @property
    def live(self) -> list[_Row]:
        return [r for r in self.rows if not r.done]

    def free(self) -> None:
        """Return every row's pages to the cache."""
        for row in self.rows:
            self.cache.free(row.seq)

    # ------------------------------------------------------------------ one model call
    def step(self) -> tuple[list[list[int]], int]:
        """One forward over every live row's window, then commit, fill and slide.
        Returns (new tokens per row (all rows, empty for idle ones), rows in the call)."""
        live = self.live
        new: list[list[int]] = [[] for _ in self.rows]
        if not live:
            return new, 0
        for row in live:
            self._refill(row)
        logits = self._forward(live)
        # commit: the leading filled run was observed in this forward
        for row in live:
            r = row.leading_filled()
            generated = row.window[:r][max(0, row.prompt_len - row.cached):]
            self._emit(row, generated, new)
            row.cached += r
            del row.window[:r], row.filled[:r]
        self._fill(live, logits)
        for row in live:
            if row.done:
                continue
            r = row.leading_filled()
            run = row.window[:r]
            if r and (any(t in self.stops for t in run) or len(row.out) + r >= self.max_new_tokens):
                self._emit(row, run, new)          # ends the row: these K/V are never needed
        for row in live:
            row.gained.append(len(new[row.index]))
        return new, len(live)

    def _refill(self, row: _Row) -> None:
        """Append masks so that ``min(window, tokens the row may still generate)`` positions
        follow the leading filled run (which the coming forward commits)."""
        r = row.leading_filled()
        run_generated = r - min(r, max(0, row.prompt_len - row.cached))
        want = r + min(self.window, self.max_new_tokens - len(row.out) - run_generated)
        grow = want - len(row.window)
        row.window += [self.mask_id] * grow
        row.filled += [False] * grow

    def _emit(self, row: _Row, tokens: list[int], new: list[list[int]]) -> None:
        """Append committed tokens to the row's output; a stop token (excluded) or the token
        budget ends the row."""
        for t in tokens:
            if t in self.stops:
                row.done = True
                return
            row.out.append(t)
            new[row.index].append(t)
            if len(row.out) >= self.max_new_tokens:
                row.done = True
                return

    def _forward(self, live: list[_Row]) -> torch.Tensor:
        """Run the live rows' reordered windows; returns the logits of their masks, row by row
        in logical order (``[total masks, V]``)."""
        cache, device = self.cache, self.model.device
        ps = cache.page_size
        widths = [len(r.window) for r in live]
        if self.static is not None and max(widths) <= self.static.q:
            return self._forward_static(live, widths)
        wmax = max(widths)
        tokens = torch.full((len(live), wmax), self.mask_id, dtype=torch.long)
        masked = torch.ones(len(live), wmax, dtype=torch.bool)      # padding sorts after the masks
        slots, mask_rows = [], []
        offset = 0
        for b, row in enumerate(live):
            w = widths[b]
            tokens[b, :w] = torch.tensor(row.window)
            masked[b, :w] = torch.tensor([not f for f in row.filled])
            length = cache.seq_len(row.seq)
            target = row.cached + w                                 # scratch slots after the prefix
            if length < target:
                cache.append([row.seq], [target - length])
            elif length > target:
                cache.truncate(row.seq, target)
            pages = cache.pages(row.seq)
            slots += [pages[p // ps] * ps + p % ps for p in range(row.cached, target)]
            observed = sum(row.filled)
            mask_rows += range(offset + observed, offset + w)         # masks come after, in order
            offset += w
        positions = torch.tensor([[r.cached] for r in live]) + torch.arange(wmax)
        tok_r, pos_r, _, _ = topological_reorder(tokens.to(device), masked.to(device), positions.to(device))
        valid = (torch.arange(wmax) < torch.tensor(widths)[:, None]).to(device)
        step = StepInput(
            input_ids=tok_r[valid], positions=pos_r[valid],
            slot_mapping=torch.tensor(slots, dtype=torch.int32, device=device),
            plan=cache.plan([r.seq for r in live], widths), mask_mode="causal",
            logits_indices=torch.tensor(mask_rows, dtype=torch.long, device=device))
        self.window_tokens += offset
        return self.model.forward_paged(step, cache)

    def _forward_static(self, live: list[_Row], widths: list[int]) -> torch.Tensor:
        """``_forward`` as a fixed-shape step: every row runs ``q`` tokens, its window reordered
        then padding (masks after the window, sorted last; their K/V land in scratch slots past
        the window and their outputs are never read)."""
        cache, device, q = self.cache, self.model.device, self.static.q
        n = len(live)
        tokens = torch.full((n, q), self.mask_id, dtype=torch.long)
        masked = torch.ones(n, q, dtype=torch.bool)
        pages, mask_rows = [], []
        for b, row in enumerate(live):
            w = widths[b]
            tokens[b, :w] = torch.tensor(row.window)
            masked[b, :w] = torch.tensor([not f for f in row.filled])
            length, target = cache.seq_len(row.seq), row.cached + q
            if length < target:
                cache.append([row.seq], [target - length])
            elif length > target:
                cache.truncate(row.seq, target)
            pages.append(cache.pages(row.seq))
            observed = sum(row.filled)
            mask_rows += range(b * q + observed, b * q + w)
        positions = torch.tensor([[r.cached] for r in live]) + torch.arange(q)
        tok_r, pos_r, _, _ = topological_reorder(tokens.to(device), masked.to(device), positions.to(device))
        step = self.static.get(n, max(map(len, pages)))
        logits = step.run(tok_r.flatten().tolist(), pos_r.flatten().tolist(), [r.cached for r in live], pages)
        self.window_tokens += sum(widths)
        return logits.index_select(0, torch.tensor(mask_rows, dtype=torch.long, device=logits.device))

    def _fill(self, live: list[_Row], logits: torch.Tensor) -> None:
        """Fill masks of the live rows by the entropy rule. ``logits`` holds the masks of
        ``live`` in order, as run by ``_forward``; the commit in between removed only filled
        positions, so each row's masks are still its window's masks."""
        rows, firsts, src = [], [], []
        offset = 0
        for row in live:
            n_masks = len(row.filled) - sum(row.filled)
            if n_masks and not row.done:
                rows.append(row)
                firsts.append(row.filled.index(False))
                src += range(offset, offset + n_masks)
            offset += n_masks
        if not rows:
            return
        # compact op input: row b covers window indices [first_b, len(window)), so the op's
        # "distance from the first mask" is the distance in the window
        width = max(len(r.window) - f for r, f in zip(rows, firsts))
        vocab, device = logits.shape[-1], logits.device
        tokens = torch.full((len(rows), width), self.mask_id, dtype=torch.long)
        masked = torch.zeros(len(rows), width, dtype=torch.bool)
        dst = []
        for b, (row, first) in enumerate(zip(rows, firsts)):
            tail = row.window[first:]
            tokens[b, :len(tail)] = torch.tensor(tail)
            idx = [i for i, f in enumerate(row.filled[first:]) if not f]
            masked[b, idx] = True
            dst += [b * width + i for i in idx]
        buf = torch.zeros(len(rows) * width, vocab, dtype=torch.float32, device=device)
        buf[torch.tensor(dst, device=device)] = logits[torch.tensor(src, device=device)].float()
        buf = buf.view(len(rows), width, vocab)
        ends = torch.tensor([len(r.window) - f for r, f in zip(rows, firsts)], dtype=torch.int32)
        tokens, masked = tokens.to(device), masked.to(device)
        before = masked.clone()
        unmask_and_filter(buf, tokens, masked, "entropy", block_end=ends.to(device),
                          threshold=self.threshold, position_penalty=self.position_penalty)
        chosen = before & ~masked
        if self.temperature > 0:
            picks = chosen.nonzero(as_tuple=True)
            tokens[picks] = sample_next(buf[picks], self.temperature, self.top_k, self.top_p,
                                        self.generator)
        tokens, chosen = tokens.tolist(), chosen.tolist()
        for b, (row, first) in enumerate(zip(rows, firsts)):
            for i, c in enumerate(chosen[b]):
                if c:
                    row.window[first + i] = tokens[b][i]
                    row.filled[first + i] = True


@register_method("wedlm", model_kind="causal-diffusion", base_model="stdlib-wedlm", recipe="wedlm")
def wedlm(model, prompts: list[list[int]], *, max_new_tokens: int = 128, window: int = DEFAULT_WINDOW,
          threshold: float = DEFAULT_THRESHOLD, position_penalty: float = DEFAULT_POSITION_PENALTY,
          temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
          seed: int | None = None, stop_tokens=None, stream=None, mask_token_id: int | None = None,
          page_size: int = 16, static_steps: bool | None = None) -> GenerationOutput:
    """WeDLM streaming parallel decoding (see the module docstring).

    ``window``: positions decoded in parallel after the committed prefix (default 16);
    ``threshold``: fill every mask whose entropy + ``position_penalty`` * distance from the
    first mask is below it (default 0.4; at least one per call); ``temperature`` 0 = argmax,
    else seeded sampling (``seed``, ``top_k``, ``top_p``) of the chosen masks. ``mask_token_id``
    defaults to the model's ``config.mask_token_id``. ``static_steps`` (default: on CUDA): every
    window step has one shape (2 * window tokens per row), captured as a CUDA graph on CUDA."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    if not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    if not isinstance(position_penalty, (int, float)) or position_penalty < 0:
        raise ValueError(f"position_penalty must be a number >= 0, got {position_penalty!r}")
    if not isinstance(page_size, int) or page_size <= 0:
        raise ValueError(f"page_size must be a positive int, got {page_size!r}")
    check_sampling(temperature, top_k, top_p)
    if not model.config.causal:
        raise ValueError("method 'wedlm' needs a causal model (a WeDLM causal diffusion LM such as "
                         "stdlib-wedlm); this one is bidirectional (config.causal is False)")
    mask_id = model.config.mask_token_id if mask_token_id is None else mask_token_id
    if mask_id is None:
        raise ValueError("mask_token_id: the model's config has no mask_token_id; method 'wedlm' needs "
                         "a causal diffusion LM trained with <|mask|> (e.g. stdlib-wedlm, "
                         "python -m leapdec.train wedlm) or an explicit mask_token_id=")
    if not isinstance(mask_id, int) or not 0 <= mask_id < model.config.vocab_size:
        raise ValueError(f"mask_token_id must be a token id in [0, {model.config.vocab_size}), got {mask_id!r}")
    stops = stop_token_set(model, stop_tokens)
    stats = Stats()
    if max_new_tokens == 0:
        outputs = [[] for _ in prompts]
        return GenerationOutput(outputs, stats.finish(outputs, window=window))

    if static_steps is None:
        static_steps = model.device.type == "cuda"
    scratch = 2 * window if static_steps else 0
    need = sum(-(-(len(p) + max_new_tokens + scratch) // page_size) for p in prompts)
    decoder = None
    with Session(model, need, page_size) as session:
        static = StaticSteps(session, "wedlm", 2 * window, mask_mode="causal") if static_steps else None
        decoder = WeDLMDecoder(model, prompts, session.cache, mask_id=mask_id, stops=stops,
                               max_new_tokens=max_new_tokens, window=window, threshold=threshold,
                               position_penalty=position_penalty, temperature=temperature,
                               top_k=top_k, top_p=top_p, generator=make_generator(seed, model.device),
                               static=static)
        with torch.no_grad():
            while decoder.live:
                new, rows = decoder.step()
                stats.call(rows, sum(map(len, new)))
                if stream is not None:
                    stream(new)
    outputs = [row.out for row in decoder.rows]
    gained = [row.gained for row in decoder.rows]
    hist = Counter(g for row in gained for g in row)
    return GenerationOutput(outputs, stats.finish(
        outputs, window=window, threshold=threshold, position_penalty=position_penalty,
        window_tokens=decoder.window_tokens, accepted_lengths=gained,
        accept_length_histogram={int(k): hist[k] for k in sorted(hist)}))
