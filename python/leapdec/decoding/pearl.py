"""Method "pearl": PEARL, parallel speculative decoding with an adaptive draft length (Liu et al.,
smart-lty/ParallelSpeculativeDecoding).

The draft model and the target run AT THE SAME TIME every round, on the same context:

* the draft model drafts ``gamma`` tokens continuing the row's context *including* the drafts
  still waiting for verification (it assumes they will be accepted);
* the target runs one forward over the root (the last emitted token) and those waiting drafts.

Then the waiting drafts are verified with the target's logits, and the FIRST new draft token is
checked against the target's distribution after the last waiting draft. A row with no waiting
drafts is in PEARL's *pre-verify* mode (the target checks the first draft token while the draft
model drafts the rest); a row with waiting drafts is in *post-verify* mode (the draft model keeps
drafting while the target verifies). If every waiting draft and the first new token are
accepted, the row commits them and the other ``gamma - 1`` new drafts wait for the next round;
otherwise it commits the accepted part plus the target's own token and both caches roll back.
So the number of drafts verified per target call adapts to how well the draft model does.

Acceptance is the speculative core's (``engine.speculative.accept_paths`` over a chain):
greedy (output identical to greedy AR) or lossless speculative sampling (seeded). Where the
draft model runs: ``parallel="thread"`` (one process, the draft in a second thread; on CUDA on
its own stream), ``"process"`` (a second process holding the draft model, talking to this one
over a ``torch.distributed`` gloo process group: PEARL's own two-device layout; the draft's
device is ``draft_device``), or ``"none"`` (draft then verify, sequentially: same output,
for debugging and as the zero-overlap reference).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import Future

import torch

from leapdec.decoding.base import make_generator, stop_token_set
from leapdec.decoding.pearl_workers import ChainDraft, InlineWorker, ThreadWorker, process_worker
from leapdec.decoding.sd import load_draft_model
from leapdec.engine.rows import Rows, check_logits, model_tokenizer
from leapdec.engine.runner import Session, pages_for, plan_extend
from leapdec.engine.spec import register_method
from leapdec.engine.speculative import (Proposal, SpecContext, accept_paths, commit_paths,
                                        cut_to_room, gather_node_logits, prefill,
                                        resolve_acceptance)

PARALLEL = ("thread", "process", "none")


def _check_options(gamma, parallel):
    if not isinstance(gamma, int) or isinstance(gamma, bool) or gamma < 1:
        raise ValueError(f"gamma must be an int >= 1, got {gamma!r}")
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")


def _common_prefix(a: list[int], b: list[int], start: int) -> int:
    n = min(len(a), len(b))
    i = min(start, n)
    while i < n and a[i] == b[i]:
        i += 1
    return i


@register_method("pearl", lossless=True, companion="drafter", recipe="drafter")
def pearl(model, prompts: list[list[int]], *, drafter=None, gamma: int = 4, parallel: str = "thread",
          max_new_tokens: int = 128, temperature: float = 0.0, top_k: int | None = None,
          top_p: float | None = None, seed: int | None = None, stop_tokens=None, stop_strings=None,
          tokenizer=None, stream=None, page_size: int = 16, draft_device=None, draft_threads: int = 1):
    """PEARL: the draft model (``drafter``: a smaller causal leapdec model with the target's
    vocabulary, its checkpoint folder, or None for the target's zoo drafter) drafts ``gamma``
    tokens while the target verifies the previous drafts (``parallel`` = "thread" | "process" |
    "none"). Greedy at temperature 0 (identical to greedy AR), lossless speculative sampling
    above. Stats add PEARL's per-round modes, accepted run lengths and the time each side waits."""
    _check_options(gamma, parallel)
    acceptance = resolve_acceptance(None, temperature, top_k, top_p, 0.09, 0.3, allowed=("greedy", "sampling"))
    if parallel != "process" and draft_device is not None:
        raise ValueError("draft_device applies to parallel='process' (the draft model's own process)")
    draft = load_draft_model(model, drafter, method="pearl", same_device=parallel != "process")
    if tokenizer is None and stop_strings:
        tokenizer = model_tokenizer(model)
    rows = Rows(prompts, max_new_tokens, stop_token_set(model, stop_tokens), stop_strings,
                tokenizer if tokenizer is not None else model_tokenizer(model), stream)
    device = model.device
    gen = make_generator(seed, device)
    # the draft model samples from its own stream of random numbers (it runs beside the target)
    draft_seed = None if seed is None else (int(seed) * 1_000_003 + 7) % (2 ** 63)
    sampling = acceptance == "sampling"
    options = dict(gamma=gamma, sampling=sampling, temperature=temperature, top_k=top_k, top_p=top_p,
                   page_size=page_size, seed=draft_seed)
    if parallel == "process":
        worker = process_worker(draft, draft_device or str(device), draft_threads, device)
    else:
        chain = ChainDraft(draft, **options)
        worker = ThreadWorker(chain) if parallel == "thread" else InlineWorker(chain)
    clock = {"target_busy_s": 0.0, "draft_busy_s": 0.0, "target_wait_s": 0.0, "draft_wait_s": 0.0}
    modes = Counter()
    runs: list[int] = []

    def finish():
        hist = Counter(runs)
        return rows.output(acceptance=acceptance, parallel=parallel, gamma=gamma,
                           **rows.acceptance_stats(), drafter_calls=worker.calls,
                           pre_verify_rounds=modes["pre"], post_verify_rounds=modes["post"],
                           accepted_run_lengths=dict(sorted(hist.items())),
                           mean_accepted_run=sum(runs) / len(runs) if runs else 0.0,
                           **{k: round(v, 6) for k, v in clock.items()})

    if max_new_tokens == 0:
        return finish()
    ps = page_size
    need = sum(pages_for(len(p) + max_new_tokens + gamma + 2, ps) + 1 for p in prompts)
    try:
        worker.start([len(p) + max_new_tokens + 2 * gamma + 2 for p in prompts], options)
        with Session(model, need, ps) as session, torch.no_grad():
            ctx = SpecContext(model, session, [session.new_sequence() for _ in prompts], temperature,
                              top_k, top_p, gen, acceptance)
            prefill(ctx, rows, prompts, False, "pearl")
            pending: list[list[int]] = [[] for _ in prompts]          # drafts waiting for the target
            pending_q: list[list[torch.Tensor]] = [[] for _ in prompts]
            held: list[list[int]] = [[] for _ in prompts]             # what the draft cache holds
            run = [0] * len(prompts)
            live = rows.live
            while live:
                # ---- the draft model: gamma tokens after the row's context + its waiting drafts
                requests = []
                for r in live:
                    view = r.tokens + pending[r.index]
                    keep = min(_common_prefix(held[r.index], view, len(r.prompt) - 1), len(view) - 1)
                    requests.append((r.index, keep, view[keep:]))
                    held[r.index] = view
                t0 = time.perf_counter()
                future: Future = worker.submit(requests)
                # ---- meanwhile the target: one forward over [root, waiting drafts] per row
                chains = [[r.out[-1]] + pending[r.index] for r in live]
                seqs = [ctx.seqs[r.index] for r in live]
                starts = [ctx.cache.seq_len(s) for s in seqs]
                logits = model.forward_paged(plan_extend(ctx.cache, seqs, chains), ctx.cache)
                check_logits(logits, "pearl", ctx.steps + 1)
                if device.type == "cuda":
                    torch.cuda.current_stream(device).synchronize()       # the target's own time
                t1 = time.perf_counter()
                drafts, q, busy = future.result()
                t2 = time.perf_counter()
                clock["target_busy_s"] += t1 - t0
                clock["target_wait_s"] += t2 - t1
                clock["draft_busy_s"] += busy
                clock["draft_wait_s"] += max(0.0, (t2 - t0) - busy)
                for r, d in zip(live, drafts):
                    held[r.index] = held[r.index] + d[:-1]
                    modes["post" if pending[r.index] else "pre"] += 1
                # ---- verify the chain [root, waiting drafts, first new draft]
                n = len(live)
                lens = [len(c) + 1 for c in chains]
                T = max(lens)
                cand = torch.zeros(n, T, dtype=torch.long)
                parents = torch.full((n, T), -2, dtype=torch.int32)
                for j, (c, d) in enumerate(zip(chains, drafts)):
                    cand[j, :lens[j]] = torch.tensor(c + d[:1])
                    parents[j, :lens[j]] = torch.arange(lens[j], dtype=torch.int32) - 1
                depth = torch.arange(T).expand(n, T)
                draft_probs = None
                if sampling:
                    draft_probs = torch.zeros(n, T, q.shape[-1], dtype=q.dtype, device=device)
                    for j, r in enumerate(live):
                        waiting = pending_q[r.index]
                        if waiting:
                            draft_probs[j, :len(waiting)] = torch.stack(waiting)
                        draft_probs[j, len(waiting)] = q[j, 0]
                prop = Proposal(cand, parents, depth, draft_probs=draft_probs, sizes=lens)
                _, sizes, cut_parents, cand_rows, _ = cut_to_room(live, prop, device)
                ran = [min(len(c), s) for c, s in zip(chains, sizes)]
                offsets = [0]
                for c in chains[:-1]:
                    offsets.append(offsets[-1] + len(c))
                node_logits = gather_node_logits(logits, n, T, [len(c) for c in chains], offsets)
                packed = accept_paths(ctx, cand.to(device), cut_parents, node_logits, draft_probs)
                paths, _ = commit_paths(ctx, rows, live, packed, cand_rows, starts, ran=ran)
                for j, (r, path) in enumerate(zip(live, paths)):
                    if path[-1] == lens[j] - 1 and path[-1] >= ran[j]:        # first new draft accepted
                        run[r.index] += len(path) - 1
                        pending[r.index] = drafts[j][1:]
                        pending_q[r.index] = [q[j, i] for i in range(1, q.shape[1])] if sampling else []
                    else:                                                   # rejected: back to pre-verify
                        runs.append(run[r.index] + len(path) - 1)
                        run[r.index] = 0
                        pending[r.index], pending_q[r.index] = [], []
                live = rows.live
            runs.extend(x for x in run if x)
    finally:
        worker.finish()
    return finish()
