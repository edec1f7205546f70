"""Speculative decoding with a draft model: greedy output identical to greedy AR (batch 1,
ragged batches, stop tokens), the draft model's cache rolled back to exactly the accepted
tokens, lossless sampling (chi-square against the target's distribution), clear errors."""

import pytest
import torch

from leapdec.decoding import generate
from leapdec.decoding.sd import DraftModelDrafter
from leapdec.models.testing import tiny_model
from sampling_checks import assert_second_token_follows_target

PROMPTS = [[5, 6, 7, 8, 9], [3, 4], list(range(10, 31)), [9] * 7]


pytestmark = pytest.mark.usefixtures("one_thread")    # tiny matmuls: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def pair():
    target = tiny_model("llama", seed=7)
    draft = tiny_model("llama", seed=8, num_hidden_layers=1)
    return target, draft


@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_greedy_equals_greedy_ar(pair, gamma):
    target, draft = pair
    ar = generate(target, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[])
    out = generate(target, PROMPTS, method="sd", drafter=draft, gamma=gamma, max_new_tokens=30,
                   stop_tokens=[], page_size=4)
    assert out.tokens == ar.tokens
    for p, ref in zip(PROMPTS, ar.tokens):
        assert generate(target, [p], method="sd", drafter=draft, gamma=gamma, max_new_tokens=30,
                        stop_tokens=[]).tokens == [ref]
    stop = ar.tokens[2][9]
    ar_stop = generate(target, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[stop])
    assert generate(target, PROMPTS, method="sd", drafter=draft, gamma=gamma, max_new_tokens=30,
                    stop_tokens=[stop]).tokens == ar_stop.tokens


def test_the_target_as_its_own_drafter_accepts_every_draft(pair):
    target, _ = pair
    out = generate(target, PROMPTS[:1], method="sd", drafter=target, gamma=4, max_new_tokens=21,
                   stop_tokens=[])
    assert out.tokens == generate(target, PROMPTS[:1], max_new_tokens=21, stop_tokens=[]).tokens
    assert out.stats["accepted_lengths"][0] == [5, 5, 5, 5]           # 1 + 4 x 5 = 21 tokens


def test_rejected_drafts_leave_the_draft_cache_as_if_never_written(pair):
    """After each step the draft model's sequence holds exactly the accepted tokens: its K/V equal
    a fresh prefill of those tokens."""
    target, draft = pair
    seen = []

    class Spy(DraftModelDrafter):
        def accepted(self, ctx, live, verified):
            super().accepted(ctx, live, verified)
            for r in live:
                seq = self.seqs[r.index]
                n = self.session.cache.seq_len(seq)
                seen.append((r.tokens[:n], self.session.cache, seq))
                assert n >= len(r.tokens) - 2                         # at most root + bonus unseen
                slots = self.session.cache.slots(seq, 0, n)
                fresh = draft.new_cache(num_pages=16, page_size=4)
                fseq = fresh.new_sequence()
                from leapdec.engine.runner import plan_extend
                draft.forward_paged(plan_extend(fresh, [fseq], [r.tokens[:n]]), fresh)
                fslots = fresh.slots(fseq, 0, n)
                for k, fk in zip(self.session.cache.k_caches, fresh.k_caches):
                    ours = k.view(-1, *k.shape[2:])[slots.long()]
                    ref = fk.view(-1, *fk.shape[2:])[fslots.long()]
                    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)

    from leapdec.engine.speculative import speculative_generate

    chain = Spy(draft, 3, False, 0.0, None, None, 4)
    try:
        with torch.no_grad():
            out = speculative_generate(target, PROMPTS[:2], chain, method="sd", max_new_tokens=16,
                                       stop_tokens=[], page_size=4)
    finally:
        chain.close()
    assert seen and out.tokens == generate(target, PROMPTS[:2], max_new_tokens=16, stop_tokens=[]).tokens


def test_sampling_follows_the_target_distribution():
    """Chi-square of the second new token (the first one a verify step emits) against the
    target's exact conditional distribution, over many independent rows."""
    target = tiny_model("llama", seed=1, vocab_size=12, init_std=0.4)
    draft = tiny_model("llama", seed=2, vocab_size=12, num_hidden_layers=1, init_std=0.4)
    prompt = [3, 5, 7]
    rows = 3000
    out = generate(target, [prompt] * rows, method="sd", drafter=draft, gamma=3, max_new_tokens=2,
                   temperature=1.0, seed=0, stop_tokens=[])
    assert_second_token_follows_target(target, prompt, out.tokens)
    again = generate(target, [prompt] * 8, method="sd", drafter=draft, gamma=3, max_new_tokens=6,
                     temperature=1.0, seed=5, stop_tokens=[])
    assert again.tokens == generate(target, [prompt] * 8, method="sd", drafter=draft, gamma=3,
                                    max_new_tokens=6, temperature=1.0, seed=5, stop_tokens=[]).tokens


def test_errors(pair):
    target, draft = pair
    with pytest.raises(FileNotFoundError, match="drafter="):
        generate(target, PROMPTS, method="sd")
    with pytest.raises(ValueError, match="gamma"):
        generate(target, PROMPTS, method="sd", drafter=draft, gamma=0)
    with pytest.raises(ValueError, match="vocabulary"):
        generate(target, PROMPTS, method="sd", drafter=tiny_model("llama", vocab_size=50))
    with pytest.raises(TypeError, match="drafter"):
        generate(target, PROMPTS, method="sd", drafter=3)
