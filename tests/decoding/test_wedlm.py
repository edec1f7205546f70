"""WeDLM streaming decoding: the committed prefix's K/V are exact causal K/V, the decode equals a
plain dense reference loop of the same rule, rows stop independently, options and errors."""

import pytest
import torch

from leapdec.decoding import generate, stream_generate
from leapdec.decoding.wedlm import WeDLMDecoder
from leapdec.models import StepInput
from leapdec.models.testing import tiny_model
from leapdec.train.wedlm import masked_forward

MASK = 1
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], list(range(10, 31))]     # ragged, the last spans pages
# init_std 0.5 gives mask predictions with entropies ~1.5-2.5 nats, so a threshold of 1.9
# fills several masks in some steps and one (the argmin) in others
THRESHOLD = 1.9


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=1, init_std=0.5, mask_token_id=MASK)


def reference_wedlm(model, prompt, *, window=16, threshold=0.4, penalty=0.02, max_new=32, stops=()):
    """The same rule without cache or reorder kernel: every step recomputes the whole sequence
    (committed prefix + window, logical order) with the dense mask "key j is visible to query i
    when j's physical rank <= i's", the window ranked filled-first."""
    committed, out = [], []
    win, filled = list(prompt), [True] * len(prompt)
    prompt_left, calls, done = len(prompt), 0, False

    def emit(tokens):
        for t in tokens:
            if t in stops:
                return True
            out.append(t)
            if len(out) >= max_new:
                return True
        return False

    while not done:
        k = next((i for i, f in enumerate(filled) if not f), len(filled))
        grow = k + min(window, max_new - len(out) - (k - min(k, prompt_left))) - len(win)
        win += [MASK] * grow
        filled += [False] * grow
        n = len(committed)
        order = [i for i in range(len(win)) if filled[i]] + [i for i in range(len(win)) if not filled[i]]
        rank = torch.tensor(list(range(n)) + [n + order.index(i) for i in range(len(win))])
        mask = rank[None, :] <= rank[:, None]
        seq = torch.tensor([committed + win])
        with torch.no_grad():
            logits = model.lm_head(masked_forward(model, seq, torch.arange(seq.shape[1])[None], mask))[0, n:]
        calls += 1
        k = next((i for i, f in enumerate(filled) if not f), len(filled))
        done = emit(win[min(prompt_left, k):k])
        prompt_left = max(0, prompt_left - k)
        committed += win[:k]
        del win[:k], filled[:k]
        logits = logits[k:]
        masks = [i for i, f in enumerate(filled) if not f]
        if done:
            break
        if masks:
            ml = logits[masks].float()
            ent = torch.distributions.Categorical(logits=ml).entropy()
            adj = ent + penalty * (torch.tensor(masks, dtype=torch.float32) - masks[0])
            pick = (adj < threshold).nonzero().flatten().tolist() or [int(adj.argmin())]
            for j in pick:
                win[masks[j]] = int(ml[j].argmax())
                filled[masks[j]] = True
        r = next((i for i, f in enumerate(filled) if not f), len(filled))
        if r and (any(t in stops for t in win[:r]) or len(out) + r >= max_new):
            emit(win[:r])
            break
    return out, calls


def test_committed_prefix_kv_equals_plain_causal_forward(model):
    """After every commit the cache holds, for the committed tokens, exactly the K/V of a plain
    causal forward over them: nothing needs recomputing."""
    cache = model.new_cache(max_tokens=512, page_size=4)
    dec = WeDLMDecoder(model, PROMPTS, cache, mask_id=MASK, stops=set(), max_new_tokens=24, window=8,
                       threshold=THRESHOLD)
    checked = 0
    with torch.no_grad():
        while dec.live:
            dec.step()
            for row in dec.rows:
                tokens = (PROMPTS[row.index] + row.out)[:row.cached]
                fresh = model.new_cache(max_tokens=128, page_size=8)
                seq = fresh.new_sequence()
                model.forward_paged(StepInput.extend(fresh, [seq], [tokens]), fresh)
                ours = cache.slots(row.seq, 0, row.cached).long()
                plain = fresh.slots(seq, 0, row.cached).long()
                for k, v, k2, v2 in zip(cache.k_caches, cache.v_caches, fresh.k_caches, fresh.v_caches):
                    kf, vf = k.flatten(0, 1), v.flatten(0, 1)
                    k2f, v2f = k2.flatten(0, 1), v2.flatten(0, 1)
                    torch.testing.assert_close(kf[ours], k2f[plain], atol=2e-5, rtol=2e-5)
                    torch.testing.assert_close(vf[ours], v2f[plain], atol=2e-5, rtol=2e-5)
                checked += row.cached > len(PROMPTS[row.index])
    dec.free()
    assert checked > 0
    assert max(max(r.gained) for r in dec.rows) > 1     # some calls committed several tokens
    assert all(len(r.out) == 24 for r in dec.rows)


@pytest.mark.parametrize("window,threshold", [(16, THRESHOLD), (8, THRESHOLD), (4, float("-inf"))])
def test_matches_dense_reference_loop(model, window, threshold):
    out = generate(model, PROMPTS, method="wedlm", max_new_tokens=24, window=window, threshold=threshold,
                   stop_tokens=[], page_size=4)
    refs = [reference_wedlm(model, p, window=window, threshold=threshold, max_new=24) for p in PROMPTS]
    assert out.tokens == [r[0] for r in refs]
    assert out.stats["model_calls"] == max(r[1] for r in refs)
    row_calls = sum(r[1] for r in refs)
    assert out.stats["tokens_per_call"] == pytest.approx(72 / row_calls)
    if threshold == float("-inf"):                # one fill per call, the last one ends the rows
        assert out.stats["model_calls"] == 24 and out.stats["tokens_per_call"] == pytest.approx(1.0)
    else:
        assert out.stats["tokens_per_call"] > 1.0
    # one row alone decodes the same tokens as inside the batch
    assert generate(model, [PROMPTS[2]], method="wedlm", max_new_tokens=24, window=window,
                    threshold=threshold, stop_tokens=[]).tokens == [refs[2][0]]


def test_on_each_device_matches_the_reference(model, device):
    """The reorder, fill and paged attention kernels of each device decode the reference's tokens."""
    on_device = tiny_model("llama", seed=1, init_std=0.5, mask_token_id=MASK, device=device)
    out = generate(on_device, PROMPTS, method="wedlm", max_new_tokens=16, window=8, threshold=THRESHOLD,
                   stop_tokens=[])
    assert out.tokens == [reference_wedlm(model, p, window=8, threshold=THRESHOLD, max_new=16)[0]
                          for p in PROMPTS]


def test_fill_everything_commits_a_window_per_call(model):
    out = generate(model, PROMPTS, method="wedlm", max_new_tokens=32, window=8, threshold=1e9,
                   stop_tokens=[])
    # call 1: prompt + 8 masks, all filled; calls 2-4 commit 8 each; the last 8 are emitted
    # right after call 4's fill (the row ends, their K/V are never needed)
    assert out.stats["model_calls"] == 4 and out.stats["tokens_per_call"] == pytest.approx(8.0)
    assert out.stats["accepted_lengths"] == [[0, 8, 8, 16]] * 3
    assert out.stats["accept_length_histogram"] == {0: 3, 8: 6, 16: 3}
    assert out.tokens == [reference_wedlm(model, p, window=8, threshold=1e9, max_new=32)[0] for p in PROMPTS]


def test_stop_tokens_end_rows_independently(model):
    free = generate(model, PROMPTS, method="wedlm", max_new_tokens=24, threshold=THRESHOLD,
                    stop_tokens=[]).tokens
    stop = free[1][3]
    out = generate(model, PROMPTS, method="wedlm", max_new_tokens=24, threshold=THRESHOLD, stop_tokens=[stop])
    for prompt, row, full in zip(PROMPTS, out.tokens, free):
        expect = full[:full.index(stop)] if stop in full else full
        assert row == expect and stop not in row
        assert row == reference_wedlm(model, prompt, threshold=THRESHOLD, max_new=24, stops={stop})[0]
    assert len(out.tokens[1]) == free[1].index(stop) <= 3
    assert any(len(r) == 24 for r in out.tokens)             # another row ran to max_new_tokens
    # the model's eos is the default stop token
    eos = model.config.eos_token_id
    model.config.eos_token_id = stop
    try:
        assert generate(model, PROMPTS, method="wedlm", max_new_tokens=24, threshold=THRESHOLD).tokens == out.tokens
    finally:
        model.config.eos_token_id = eos


def test_max_new_tokens_small_and_zero(model):
    for n in (0, 1, 3):
        out = generate(model, PROMPTS, method="wedlm", max_new_tokens=n, stop_tokens=[])
        assert [len(t) for t in out.tokens] == [n] * 3
        assert out.tokens == [reference_wedlm(model, p, max_new=n)[0] if n else [] for p in PROMPTS]


def test_sampling_is_seeded_and_top_k_1_is_greedy(model):
    kw = dict(method="wedlm", max_new_tokens=20, temperature=1.0, threshold=THRESHOLD, stop_tokens=[])
    a = generate(model, PROMPTS, seed=3, **kw).tokens
    assert a == generate(model, PROMPTS, seed=3, **kw).tokens
    assert a != generate(model, PROMPTS, seed=4, **kw).tokens
    greedy = generate(model, PROMPTS, method="wedlm", max_new_tokens=20, threshold=THRESHOLD,
                      stop_tokens=[]).tokens
    assert generate(model, PROMPTS, seed=3, top_k=1, **kw).tokens == greedy


def test_streaming_yields_each_calls_commits(model):
    final = generate(model, PROMPTS, method="wedlm", max_new_tokens=20, threshold=THRESHOLD, stop_tokens=[])
    steps = list(stream_generate(model, PROMPTS, method="wedlm", max_new_tokens=20, threshold=THRESHOLD,
                                 stop_tokens=[]))
    assert len(steps) == final.stats["model_calls"]
    assert steps[0] == [[], [], []]                            # the first call only reads the prompts
    assert [sum((s[i] for s in steps), []) for i in range(3)] == final.tokens


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="window"):
        generate(model, PROMPTS, method="wedlm", window=0)
    with pytest.raises(ValueError, match="position_penalty"):
        generate(model, PROMPTS, method="wedlm", position_penalty=-1.0)
    with pytest.raises(ValueError, match="mask_token_id"):
        generate(tiny_model("llama", seed=1), PROMPTS, method="wedlm")
    with pytest.raises(ValueError, match="mask_token_id"):
        generate(model, PROMPTS, method="wedlm", mask_token_id=10_000)
    with pytest.raises(ValueError, match="causal"):
        generate(tiny_model("llama", seed=1, causal=False, mask_token_id=MASK), PROMPTS, method="wedlm")


@pytest.mark.parametrize("window", [4, 8])
def test_fixed_shape_window_steps_equal_eager(model, window):
    """static_steps=True (a CUDA graph on a GPU, eager here): every window step runs 2 * window
    tokens per row, padded after the window; outputs and call counts equal the eager path."""
    kw = dict(max_new_tokens=24, threshold=THRESHOLD, window=window, stop_tokens=[], page_size=4)
    eager = generate(model, PROMPTS, method="wedlm", static_steps=False, **kw)
    static = generate(model, PROMPTS, method="wedlm", static_steps=True, **kw)
    assert static.tokens == eager.tokens
    assert static.stats["model_calls"] == eager.stats["model_calls"]
