"""The engine's runner: fixed-shape static steps equal the planner's eager steps (decode and
tree verification), padding rows write nothing, and sessions release everything on errors."""

import pytest
import torch

from leapdec.engine.runner import Session, StaticStep, acquire_workspace, free_workspace, plan_extend
from leapdec.models import StepInput
from leapdec.models.testing import tiny_model
from leapdec.ops import build_tree

PROMPTS = [[5, 6, 7, 8, 9], [3, 4], list(range(10, 31))]


pytestmark = pytest.mark.usefixtures("one_thread")    # tiny matmuls: one thread (tests/conftest.py)


def test_static_decode_step_matches_eager():
    """q = 1 (AR decode): the padded static step gives the eager logits; padding writes nothing."""
    model = tiny_model("qwen3", seed=6)
    cache = model.new_cache(num_pages=32, page_size=4)
    seqs = [cache.new_sequence() for _ in PROMPTS]
    with torch.no_grad():
        first = model.forward_paged(StepInput.extend(cache, seqs, PROMPTS, logits="last"), cache).argmax(-1)
        cache.append(seqs, [5] * 3)
        pages = [cache.pages(s) for s in seqs]
        tokens, starts = first.tolist(), [len(p) for p in PROMPTS]
        static = StaticStep(model, cache, bp=4, q=1, max_pages=8)
        for _ in range(4):
            snapshot = [k.clone() for k in cache.k_caches]
            padded = static.run(tokens, starts, starts, pages)
            after_static = [k.clone() for k in cache.k_caches]
            for k, s in zip(cache.k_caches, snapshot):
                k.copy_(s)
            # the same step through the planner on forks truncated to the same length
            forks = [cache.fork(s) for s in seqs]
            for f, st in zip(forks, starts):
                cache.truncate(f, st)
            eager = model.forward_paged(plan_extend(cache, forks, [[t] for t in tokens]), cache)
            for f in forks:
                cache.free(f)
            torch.testing.assert_close(padded, eager, atol=1e-5, rtol=1e-5)
            for k, s in zip(cache.k_caches, after_static):
                k.copy_(s)
            tokens = padded.argmax(-1).tolist()
            starts = [n + 1 for n in starts]


def test_static_tree_step_matches_eager():
    """q = T with a custom tree mask per row (fixed-shape tree verification)."""
    model = tiny_model("llama", seed=2)
    cache = model.new_cache(num_pages=64, page_size=4)
    seqs = [cache.new_sequence() for _ in PROMPTS]
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2], [-1, 0, 1, 2, 3, 4], [-1, 0, 0, 0, 1, 2]], dtype=torch.int32)
    mask, depth = build_tree(parents)
    g = torch.Generator().manual_seed(0)
    cand = torch.randint(3, model.config.vocab_size, (3, 6), generator=g)
    with torch.no_grad():
        model.forward_paged(StepInput.extend(cache, seqs, PROMPTS, logits="last"), cache)
        starts = [len(p) for p in PROMPTS]
        forks = [cache.fork(s) for s in seqs]
        eager = model.forward_paged(plan_extend(
            cache, forks, cand.tolist(), positions=[[st + d for d in row] for st, row in zip(starts, depth.tolist())],
            custom_mask=mask.reshape(-1)), cache)
        cache.append(seqs, [6] * 3)
        pages = [cache.pages(s) for s in seqs]
        static = StaticStep(model, cache, bp=4, q=6, max_pages=16, custom=True, return_hidden=True)
        positions = [st + d for st, row in zip(starts, depth.tolist()) for d in row]
        logits, hidden = static.run(cand.flatten().tolist(), positions, starts, pages, mask)
    assert logits.shape == (18, model.config.vocab_size) and hidden.shape[0] == 18
    torch.testing.assert_close(logits, eager, atol=1e-5, rtol=1e-5)


def test_session_frees_sequences_and_releases_on_error():
    model = tiny_model("llama", seed=1)
    free_workspace(model)
    with pytest.raises(RuntimeError, match="boom"):
        with Session(model, 8, 4) as s:
            s.cache.append([s.new_sequence(), s.new_sequence()], [9, 3])
            cache = s.cache
            raise RuntimeError("boom")
    assert cache.num_free_pages == cache.num_pages           # everything freed
    ws, release = acquire_workspace(model, 8, 4)             # and the workspace is free again
    assert ws.cache is cache
    release()


def test_session_gives_a_private_cache_while_the_workspace_is_taken():
    model = tiny_model("llama", seed=1)
    free_workspace(model)
    with Session(model, 4, 4) as a:
        with Session(model, 4, 4) as b:
            assert a.cache is not b.cache


def test_session_checks_page_size():
    model = tiny_model("llama", seed=1)
    with pytest.raises(ValueError, match="page_size"):
        Session(model, 4, 0)
