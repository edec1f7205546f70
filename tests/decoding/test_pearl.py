"""PEARL: greedy output identical to greedy AR wherever the draft model runs (inline, a second
thread, a second process over gloo), at batch 1 and on ragged batches; the adaptive draft length
(pre-verify / post-verify rounds); both caches left exactly as if rejected drafts were never
written; lossless sampling (chi-square against the target); clear errors."""

import pytest
import torch

from leapdec.decoding import generate
from leapdec.decoding.pearl_workers import ChainDraft, shutdown_workers
from leapdec.engine.runner import plan_extend
from leapdec.models.testing import tiny_model
from sampling_checks import assert_second_token_follows_target

PROMPTS = [[5, 6, 7, 8, 9], [3, 4], list(range(10, 31)), [9] * 7]

pytestmark = pytest.mark.usefixtures("one_thread")    # tiny matmuls: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def pair():
    target = tiny_model("llama", seed=7)
    # a draft that agrees with the target often: the target's own first layers plus noise
    draft = tiny_model("llama", seed=7, num_hidden_layers=1)
    yield target, draft
    shutdown_workers()


@pytest.mark.parametrize("parallel", ["none", "thread", "process"])
@pytest.mark.parametrize("gamma", [1, 3])
def test_greedy_equals_greedy_ar(pair, parallel, gamma):
    target, draft = pair
    ar = generate(target, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[])
    out = generate(target, PROMPTS, method="pearl", drafter=draft, gamma=gamma, parallel=parallel,
                   max_new_tokens=30, stop_tokens=[], page_size=4)
    assert out.tokens == ar.tokens
    assert out.stats["drafter_calls"] > 0 and out.stats["parallel"] == parallel
    if parallel == "process":
        return                                          # one-by-one and stops: checked inline below
    for p, ref in zip(PROMPTS, ar.tokens):
        assert generate(target, [p], method="pearl", drafter=draft, gamma=gamma, parallel=parallel,
                        max_new_tokens=30, stop_tokens=[]).tokens == [ref]
    stop = ar.tokens[2][9]
    ar_stop = generate(target, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[stop])
    assert generate(target, PROMPTS, method="pearl", drafter=draft, gamma=gamma, parallel=parallel,
                    max_new_tokens=30, stop_tokens=[stop]).tokens == ar_stop.tokens


def test_a_perfect_drafter_stays_in_post_verify(pair):
    """With the target as its own draft model, the first round pre-verifies one token and every
    later round commits gamma tokens (the waiting gamma - 1 drafts plus the next first one)."""
    target, _ = pair
    out = generate(target, PROMPTS[:1], method="pearl", drafter=target, gamma=4, max_new_tokens=21,
                   stop_tokens=[])
    assert out.tokens == generate(target, PROMPTS[:1], max_new_tokens=21, stop_tokens=[]).tokens
    assert out.stats["accepted_lengths"][0] == [1, 4, 4, 4, 4, 3]        # rounds (the prefill gave 1)
    assert out.stats["pre_verify_rounds"] == 1 and out.stats["post_verify_rounds"] == 5
    # only the prefill and the rounds call the target: 1 + 6 calls for 21 tokens
    assert out.stats["model_calls"] == 7


def _assert_cache_holds(model, cache, seq, tokens):
    n = len(tokens)
    assert cache.seq_len(seq) == n
    fresh = model.new_cache(num_pages=32, page_size=cache.page_size)
    fseq = fresh.new_sequence()
    model.forward_paged(plan_extend(fresh, [fseq], [tokens]), fresh)
    slots, fslots = cache.slots(seq, 0, n).long(), fresh.slots(fseq, 0, n).long()
    for k, fk in zip(cache.k_caches, fresh.k_caches):
        torch.testing.assert_close(k.view(-1, *k.shape[2:])[slots], fk.view(-1, *fk.shape[2:])[fslots],
                                   atol=1e-5, rtol=1e-5)


def test_rejections_leave_both_caches_as_if_never_written(pair, monkeypatch):
    """After every round the target's cache holds exactly the committed tokens but the root, and
    the draft model's cache (rolled back at the next request) exactly the tokens it keeps."""
    target, draft = pair
    import leapdec.decoding.pearl as pearl_mod
    from leapdec.engine import speculative

    checks = {"target": 0, "draft": 0}
    real_commit = speculative.commit_paths

    def commit_and_check(ctx, rows, live, *args, **kw):
        out = real_commit(ctx, rows, live, *args, **kw)
        for r in live:
            _assert_cache_holds(target, ctx.cache, ctx.seqs[r.index], r.tokens[:-1])
            checks["target"] += 1
        return out

    real_draft = ChainDraft.draft_chains

    def draft_and_check(self, requests):
        out = real_draft(self, requests)
        cache = self.session.cache
        for i, keep, feed in requests:                # roll back as the next request will, then check
            n = cache.seq_len(self.seqs[i])
            assert len(self.held[i]) == n and self.held[i][keep:keep + len(feed)] == feed
            _assert_cache_holds(draft, cache, self.seqs[i], self.held[i])
            checks["draft"] += 1
        return out

    monkeypatch.setattr(pearl_mod, "commit_paths", commit_and_check)
    monkeypatch.setattr(ChainDraft, "draft_chains", draft_and_check)
    out = generate(target, PROMPTS[:2], method="pearl", drafter=draft, gamma=3, parallel="none",
                   max_new_tokens=20, stop_tokens=[], page_size=4)
    assert out.tokens == generate(target, PROMPTS[:2], max_new_tokens=20, stop_tokens=[]).tokens
    assert checks["target"] > 5 and checks["draft"] > 5
    hist = out.stats["accepted_run_lengths"]
    assert out.stats["pre_verify_rounds"] > 0 and sum(hist.values()) > 0


@pytest.mark.parametrize("parallel", ["none", "thread"])
def test_sampling_follows_the_target_distribution(parallel):
    target = tiny_model("llama", seed=1, vocab_size=12, init_std=0.4)
    draft = tiny_model("llama", seed=2, vocab_size=12, num_hidden_layers=1, init_std=0.4)
    prompt = [3, 5, 7]
    out = generate(target, [prompt] * 3000, method="pearl", drafter=draft, gamma=3, parallel=parallel,
                   max_new_tokens=3, temperature=1.0, seed=0, stop_tokens=[])
    assert_second_token_follows_target(target, prompt, out.tokens)
    kw = dict(method="pearl", drafter=draft, gamma=3, max_new_tokens=8, temperature=1.0, seed=5,
              stop_tokens=[])
    again = generate(target, [prompt] * 8, parallel="none", **kw)
    assert again.tokens == generate(target, [prompt] * 8, parallel="thread", **kw).tokens


def test_errors(pair):
    target, draft = pair
    with pytest.raises(FileNotFoundError, match="drafter="):
        generate(target, PROMPTS, method="pearl")
    with pytest.raises(ValueError, match="gamma"):
        generate(target, PROMPTS, method="pearl", drafter=draft, gamma=0)
    with pytest.raises(ValueError, match="parallel"):
        generate(target, PROMPTS, method="pearl", drafter=draft, parallel="gpu")
    with pytest.raises(ValueError, match="draft_device"):
        generate(target, PROMPTS, method="pearl", drafter=draft, draft_device="cpu")
    with pytest.raises(ValueError, match="vocabulary"):
        generate(target, PROMPTS, method="pearl", drafter=tiny_model("llama", vocab_size=50))


def test_zoo_drafter_on_held_out_prompts():
    """stdlib-ar's drafter/ companion (python -m leapdec.train drafter): sd and pearl on held-out
    function prompts are identical to AR and commit several tokens per target call."""
    import leapdec
    from leapdec.train.corpus import eval_prompts

    model = leapdec.load_model("stdlib-ar")
    tok = leapdec.load_tokenizer("stdlib-ar")
    prompts = [tok.encode(p.prompt).ids for p in eval_prompts(2, seed=3)]
    ar = generate(model, prompts, method="ar", max_new_tokens=48)
    for method in ("sd", "pearl"):
        out = generate(model, prompts, method=method, max_new_tokens=48)
        assert out.tokens == ar.tokens, method
        assert out.stats["tokens_per_call"] > 1.5, (method, out.stats["tokens_per_call"])


def test_a_draft_process_that_dies_at_start_is_an_error_at_once(monkeypatch):
    import leapdec.decoding.pearl_workers as workers

    monkeypatch.setattr(workers, "_ENTRY", "import sys; sys.exit(3)")
    with pytest.raises(RuntimeError, match="exited with status 3"):
        workers.ProcessWorker(tiny_model("llama"), "cpu", 1, "cpu")
