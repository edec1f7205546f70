"""DEER: greedy output identical to greedy AR (batch 1, ragged batches, block sizes, top-k trees,
stop tokens), the drafter's training forward equal to its paged block step, its cache rolled back
to exactly the committed prefix after every step, lossless sampling (chi-square), clear errors,
and the zoo drafter accepting more than one token per step on held-out prompts."""

import pytest
import torch

from leapdec.decoding import generate
from leapdec.decoding.deer import BlockDrafter, block_tree
from leapdec.engine.runner import pages_for, plan_extend
from leapdec.engine.speculative import speculative_generate
from leapdec.models.deer import DeerDrafter, block_mask
from leapdec.models.testing import tiny_model
from sampling_checks import assert_second_token_follows_target

PROMPTS = [[5, 6, 7, 8, 9], [3, 4], list(range(10, 31)), [9] * 7]

pytestmark = pytest.mark.usefixtures("one_thread")    # tiny matmuls: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def pair():
    target = tiny_model("llama", seed=7)
    drafter = DeerDrafter.for_target(target, num_layers=1)
    with torch.no_grad():                                   # a drafter that differs from the target
        for p in drafter.lm.layers.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    return target, drafter


@pytest.fixture(scope="module")
def shared_pair():
    """A drafter on the target's own embedding and LM head, drafting from every other token id
    (a reduced FR-Spec vocabulary), as the SmolLM2 drafter is built."""
    target = tiny_model("llama", seed=7)
    vocab_ids = list(range(0, target.config.vocab_size, 2))
    drafter = DeerDrafter.for_target(target, num_layers=1, share_embeddings=True, vocab_ids=vocab_ids)
    with torch.no_grad():
        for p in drafter.lm.layers.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    return target, drafter


@pytest.mark.parametrize("block_size,topk", [(1, 1), (4, 1), (32, 1), (6, 3)])
def test_greedy_equals_greedy_ar(pair, block_size, topk):
    target, drafter = pair
    ar = generate(target, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[])
    kw = dict(method="deer", drafter=drafter, block_size=block_size, tree_topk=topk)
    out = generate(target, PROMPTS, max_new_tokens=30, stop_tokens=[], page_size=4, **kw)
    assert out.tokens == ar.tokens
    assert out.stats["drafter_calls"] > 0 and sum(out.stats["accept_length_histogram"].values()) > 0
    for p, ref in zip(PROMPTS[:2], ar.tokens):
        assert generate(target, [p], max_new_tokens=30, stop_tokens=[], **kw).tokens == [ref]
    stop = ar.tokens[2][9]
    ar_stop = generate(target, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[stop])
    assert generate(target, PROMPTS, max_new_tokens=30, stop_tokens=[stop], **kw).tokens == ar_stop.tokens


@pytest.mark.parametrize("block_size,topk", [(4, 1), (6, 3)])
def test_a_sharing_drafter_with_a_reduced_vocabulary_is_exact(shared_pair, block_size, topk):
    target, drafter = shared_pair
    assert drafter.shares_embeddings and drafter.lm.embed_tokens.weight is target.embed_tokens.weight
    own = {n for n, _ in drafter.named_parameters()}
    assert not any(n.endswith("embed_tokens.weight") or n.startswith("lm.lm_head") for n in own)
    ar = generate(target, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[])
    out = generate(target, PROMPTS, method="deer", drafter=drafter, block_size=block_size, tree_topk=topk,
                   max_new_tokens=30, stop_tokens=[], page_size=4)
    assert out.tokens == ar.tokens
    with torch.no_grad():                              # drafts come from the reduced vocabulary only
        cache = drafter.new_cache(num_pages=8, page_size=4)
        seq = cache.new_sequence()
        logits = drafter.forward_paged(plan_extend(cache, [seq], [PROMPTS[0]]), cache)
    assert logits.shape[-1] == target.config.vocab_size
    assert torch.isinf(logits[:, 1::2]).all() and torch.isfinite(logits[:, ::2]).all()


def test_a_sharing_drafter_saves_only_its_own_weights(shared_pair, tmp_path):
    from safetensors import safe_open

    target, drafter = shared_pair
    drafter.save(tmp_path / "deer", dtype=torch.bfloat16)
    with safe_open(str(tmp_path / "deer" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.bfloat16
    assert "draft.vocab_ids" in names and "model.embed_tokens.extra" in names
    assert not any(n.endswith("embed_tokens.weight") or n.startswith("lm_head") for n in names)
    with pytest.raises(ValueError, match="target="):
        DeerDrafter.load(tmp_path / "deer")
    with pytest.raises(ValueError, match="vocabulary"):
        DeerDrafter.load(tmp_path / "deer", target=tiny_model("llama", vocab_size=50))
    again = DeerDrafter.load(tmp_path / "deer", target=target)
    torch.testing.assert_close(again.vocab_ids, drafter.vocab_ids)
    for (n, a), (_, b) in zip(again.named_parameters(), drafter.named_parameters()):
        torch.testing.assert_close(a, b.to(torch.bfloat16).float(), msg=n)
    ar = generate(target, PROMPTS[:2], max_new_tokens=12, stop_tokens=[])
    out = generate(target, PROMPTS[:2], method="deer", drafter=tmp_path / "deer", max_new_tokens=12,
                   stop_tokens=[])
    assert out.tokens == ar.tokens
    with pytest.raises(ValueError, match="target"):        # another model with the same shape
        generate(tiny_model("llama", seed=8), PROMPTS[:1], method="deer", drafter=again, max_new_tokens=4)
    with pytest.raises(ValueError, match="share_embeddings"):
        DeerDrafter.for_target(target, num_layers=1, vocab_ids=[1, 2, 3])


def test_a_drafter_equal_to_the_target_accepts_every_draft():
    """Every layer copied: the drafter's root output is the target's next token; with one draft
    per step every step gains 2 tokens."""
    target = tiny_model("llama", seed=7)
    drafter = DeerDrafter.for_target(target, num_layers=target.config.num_hidden_layers)
    out = generate(target, PROMPTS[:1], method="deer", drafter=drafter, block_size=1, max_new_tokens=21,
                   stop_tokens=[])
    assert out.tokens == generate(target, PROMPTS[:1], max_new_tokens=21, stop_tokens=[]).tokens
    assert out.stats["accepted_lengths"][0] == [2] * 10


def test_block_tree_shape():
    parents, depth, source = block_tree(4, 3, 2)
    assert parents == [-1, 0, 0, 0, 1, 1, 1, 4, 7]
    assert depth == [0, 1, 1, 1, 2, 2, 2, 3, 4]
    assert source[:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]


@pytest.mark.parametrize("which", ["pair", "shared_pair"])
def test_training_forward_equals_the_paged_block_step(which, request):
    """The plain block-causal forward (training) and the paged step over a cached prefix
    (decoding) give the same logits for the root and the block (a reduced vocabulary's training
    logits are the paged step's at the draft ids)."""
    _, drafter = request.getfixturevalue(which)
    prefix = [5, 6, 7, 8, 9, 10, 11]
    c, b = 5, 4                                        # a cut after 5 tokens, 4 block queries
    block = [drafter.boundary_token_id] + [drafter.mask_token_id] * (b - 1)
    ids = torch.tensor([prefix + block])
    pos = torch.tensor([list(range(len(prefix))) + list(range(c, c + b))])
    with torch.no_grad():
        plain = drafter(ids, pos, block_mask(len(prefix), [c], b))[0]
        cache = drafter.new_cache(num_pages=8, page_size=4)
        seq = cache.new_sequence()
        drafter.forward_paged(plan_extend(cache, [seq], [prefix[:3]]), cache)
        f = c - 3                                       # the unseen prefix tokens, then the block
        m = torch.ones(f + b, f + b, dtype=torch.bool).tril()
        m[f:, :] = True
        m[:f, f:] = False
        step = plan_extend(cache, [seq], [prefix[3:c] + block], custom_mask=m.reshape(-1),
                           logits=list(range(f - 1, f + b)))
        paged = drafter.forward_paged(step, cache)
    want = torch.cat([plain[c - 1:c], plain[len(prefix):]])
    torch.testing.assert_close(paged, want, atol=1e-4, rtol=1e-4)
    if drafter.vocab_ids is not None:
        with torch.no_grad():
            sub = drafter(ids, pos, block_mask(len(prefix), [c], b), draft_vocab=True)[0]
        assert sub.shape[-1] == drafter.vocab_ids.numel()
        torch.testing.assert_close(torch.cat([sub[c - 1:c], sub[len(prefix):]]), paged[:, drafter.vocab_ids],
                                   atol=1e-4, rtol=1e-4)
        labels = torch.tensor([[int(drafter.vocab_ids[3]), 1, -100]])     # id 1 lies outside
        assert drafter.draft_labels(labels).tolist() == [[3, -100, -100]]


def test_rejected_drafts_leave_the_drafter_cache_as_if_never_written(pair):
    """After each step the drafter's sequence holds exactly the committed prefix up to the root:
    its page count is that of the prefix and its K/V equal a fresh causal prefill of it."""
    target, drafter = pair
    seen = []

    class Spy(BlockDrafter):
        def accepted(self, ctx, live, verified):
            super().accepted(ctx, live, verified)
            cache = self.session.cache
            for r, start in zip(live, self.start_lens):
                seq = self.seqs[r.index]
                n = cache.seq_len(seq)
                assert n <= start                  # the block is gone (n < start: no draft this step)
                assert len(cache.pages(seq)) == pages_for(n, cache.page_size)
                fresh = drafter.new_cache(num_pages=32, page_size=4)
                fseq = fresh.new_sequence()
                drafter.forward_paged(plan_extend(fresh, [fseq], [r.tokens[:n]]), fresh)
                slots, fslots = cache.slots(seq, 0, n).long(), fresh.slots(fseq, 0, n).long()
                for k, fk in zip(cache.k_caches + cache.v_caches, fresh.k_caches + fresh.v_caches):
                    ours = k.view(-1, *k.shape[2:])[slots]
                    torch.testing.assert_close(ours, fk.view(-1, *fk.shape[2:])[fslots], atol=1e-5, rtol=1e-5)
                seen.append(any(g < 6 for g in r.gained))              # some step rejected drafts
            used = sum(len(cache.pages(self.seqs[r.index])) for r in ctx_rows(live, self))
            assert cache.num_free_pages == cache.num_pages - used      # no page left behind

    spy = Spy(drafter, 5, 1, 2, False, 0.0, None, None, 4)
    try:
        with torch.no_grad():
            out = speculative_generate(target, PROMPTS[:2], spy, method="deer", max_new_tokens=16,
                                       stop_tokens=[], page_size=4)
    finally:
        spy.close()
    assert seen and any(seen)
    assert out.tokens == generate(target, PROMPTS[:2], max_new_tokens=16, stop_tokens=[]).tokens


def ctx_rows(live, spy):
    """Every row the drafter holds a sequence for (finished rows keep theirs)."""
    return [type("R", (), {"index": i}) for i in range(len(spy.seqs))]


def test_sampling_follows_the_target_distribution():
    target = tiny_model("llama", seed=1, vocab_size=12, init_std=0.4)
    drafter = DeerDrafter.for_target(target, num_layers=1)
    prompt = [3, 5, 7]
    out = generate(target, [prompt] * 3000, method="deer", drafter=drafter, block_size=3, max_new_tokens=2,
                   temperature=1.0, seed=0, stop_tokens=[])
    assert_second_token_follows_target(target, prompt, out.tokens)
    kw = dict(method="deer", drafter=drafter, block_size=3, max_new_tokens=6, temperature=1.0, seed=5,
              stop_tokens=[])
    assert generate(target, [prompt] * 8, **kw).tokens == generate(target, [prompt] * 8, **kw).tokens


def test_save_and_load_round_trip(pair, tmp_path):
    target, drafter = pair
    drafter.save(tmp_path / "deer")
    again = DeerDrafter.load(tmp_path / "deer")
    assert again.mask_token_id == drafter.mask_token_id == target.config.vocab_size
    assert again.boundary_token_id == target.config.vocab_size + 1
    for a, b in zip(again.state_dict().values(), drafter.state_dict().values()):
        torch.testing.assert_close(a, b)
    out = generate(target, PROMPTS[:2], method="deer", drafter=tmp_path / "deer", max_new_tokens=12,
                   stop_tokens=[])
    assert out.tokens == generate(target, PROMPTS[:2], max_new_tokens=12, stop_tokens=[]).tokens


def test_errors(pair):
    target, drafter = pair
    with pytest.raises(FileNotFoundError, match="leapdec.train deer"):
        generate(target, PROMPTS, method="deer")
    for bad in (0, 33, 2.0, True):
        with pytest.raises(ValueError, match="block_size"):
            generate(target, PROMPTS, method="deer", drafter=drafter, block_size=bad)
    with pytest.raises(ValueError, match="tree_topk"):
        generate(target, PROMPTS, method="deer", drafter=drafter, tree_topk=0)
    with pytest.raises(ValueError, match="tree_topk"):
        generate(target, PROMPTS, method="deer", drafter=drafter, tree_topk=2, temperature=1.0)
    with pytest.raises(ValueError, match="tree_positions"):
        generate(target, PROMPTS, method="deer", drafter=drafter, tree_positions=0)
    with pytest.raises(ValueError, match="vocabulary"):
        generate(tiny_model("llama", vocab_size=50), PROMPTS, method="deer", drafter=drafter)
    with pytest.raises(TypeError, match="drafter"):
        generate(target, PROMPTS, method="deer", drafter=3)
    with pytest.raises(ValueError, match="not a DEER drafter"):
        DeerDrafter(target)


def test_the_zoo_drafter_accepts_more_than_one_token_per_step():
    import leapdec
    from leapdec.train.corpus import eval_prompts

    model = leapdec.load_model("stdlib-ar")
    tok = leapdec.load_tokenizer("stdlib-ar")
    prompts = [tok.encode(p.prompt).ids for p in eval_prompts(3, seed=0)]
    out = generate(model, prompts, method="deer", max_new_tokens=48)
    assert out.tokens == generate(model, prompts, method="ar", max_new_tokens=48).tokens
    assert out.stats["mean_accepted_length"] > 1.5
