"""Reduced draft vocabularies (FR-Spec) for Medusa heads and the Falcon drafter: the projection is
the LM head's rows for the ids, only the ids are stored, drafts are always inside the subset, and
decoding stays identical to greedy AR."""

import pytest
import torch

from leapdec.decoding import generate
from leapdec.models.drafter import FalconDrafter
from leapdec.models.heads import MedusaHeads
from leapdec.models.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], list(range(10, 31))]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0).eval()


def _ids(model, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(model.config.vocab_size, generator=g)[:n]


@pytest.mark.parametrize("shared", [True, False])
def test_heads_project_onto_the_subset_rows(model, shared, tmp_path):
    ids = _ids(model)
    full = MedusaHeads.from_base(model, 3, 1, shared)
    sub = MedusaHeads.from_base(model, 3, 1, shared, vocab_ids=ids)
    with torch.no_grad():                     # same ResBlocks (biases are randomly initialised)
        for a, b in zip(sub.heads, full.heads):
            a[0].linear.bias.copy_(b[0].linear.bias)
    x = torch.randn(7, model.config.hidden_size)
    torch.testing.assert_close(sub(x), full(x)[..., ids])
    top = sub.topk(x, 4)
    assert set(top.flatten().tolist()) <= set(ids.tolist())
    assert sub.draft_index(torch.tensor([int(ids[5]), -100])).tolist() == [5, -1]
    sub.save(tmp_path)
    loaded = MedusaHeads.load(tmp_path).attach(model)
    assert torch.equal(loaded.vocab_ids, ids) and loaded.config["draft_vocab_size"] == 40
    torch.testing.assert_close(loaded(x), sub(x))
    if shared:   # only the ids are stored, never the LM head rows
        assert sum(v.numel() for k, v in loaded.state_dict().items() if k != "vocab_ids") == \
            3 * (model.config.hidden_size ** 2 + model.config.hidden_size)


def test_decoding_with_reduced_vocab_companions_equals_ar(model, tmp_path):
    ids = _ids(model, 64)
    ar = generate(model, PROMPTS, method="ar", max_new_tokens=20)
    heads = MedusaHeads.from_base(model, 3, 1, True, vocab_ids=ids)
    assert generate(model, PROMPTS, method="medusa", heads=heads, tree=8, max_new_tokens=20).tokens == ar.tokens
    drafter = FalconDrafter.for_base(model, 1, 2, vocab_ids=ids)
    drafter.save(tmp_path)
    loaded = FalconDrafter.load(tmp_path)
    assert torch.equal(loaded.vocab_ids, ids) and loaded.draft_vocab_size == 64
    out = generate(model, PROMPTS, method="falcon", drafter=loaded, depth=2, num_draft=6, max_new_tokens=20)
    assert out.tokens == ar.tokens
    feats = torch.randn(3, model.config.hidden_size)
    torch.testing.assert_close(loaded.draft_logits(feats, model.lm_head), model.lm_head(feats)[:, ids])


def test_bad_vocab_ids_name_the_argument(model):
    for bad, match in (([], "non-empty"), ([1, 1], "repeat"), ([model.config.vocab_size], "lie in"),
                       ([[1, 2]], "1-D"), ([0.5], "token ids")):
        with pytest.raises(ValueError, match=match):
            MedusaHeads.from_base(model, 2, 1, True, vocab_ids=bad)
    with pytest.raises(ValueError, match="vocab_ids"):
        FalconDrafter.for_base(model, 1, 2, vocab_ids=[-1])


@pytest.mark.parametrize("shared,layers,subset", [(True, 1, True), (True, 2, False), (False, 2, True),
                                                  (True, 1, False)])
def test_heads_topk_matches_their_forward(model, shared, layers, subset):
    """The inference top-k (first ResBlock of every head as one stacked linear, packed LM-head rows
    on CPU) ranks like the training forward."""
    heads = MedusaHeads.from_base(model, 3, layers, shared, vocab_ids=_ids(model) if subset else None)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for n in (1, 3, 7):
        x = torch.randn(n, model.config.hidden_size)
        logits = heads(x)                                                   # [n, H, V']
        top = heads.topk(x, 4)
        want = logits.topk(4, dim=-1).indices
        if heads.vocab_ids is not None:
            want = heads.vocab_ids[want]
        # the same tokens, or (float rounding between the two paths) tokens of equal logit
        got_logits = logits.gather(-1, heads.draft_index(top).clamp(min=0))
        torch.testing.assert_close(got_logits, logits.topk(4, dim=-1).values, atol=1e-5, rtol=1e-5)
        assert (top == want).float().mean() > 0.9


def test_packed_draft_rows_follow_the_weight(model):
    from leapdec import ops
    from leapdec.models.vocab import packed_draft_rows

    ids = _ids(model)
    drafter = FalconDrafter.for_base(model, 1, 2, vocab_ids=ids)
    w = model.lm_head.weight.detach().clone()
    rows, packed = packed_draft_rows(drafter, w)
    assert torch.equal(rows, w[ids]) and torch.equal(packed, ops.pack_linear_weight(w[ids]))
    assert packed_draft_rows(drafter, w)[1] is packed                      # kept
    w.mul_(2.0)                                                            # an in-place change repacks
    rows2, packed2 = packed_draft_rows(drafter, w)
    assert torch.equal(rows2, w[ids]) and torch.equal(packed2, ops.pack_linear_weight(w[ids]))
    full = FalconDrafter.for_base(model, 1, 2)
    r, p = packed_draft_rows(full, w)                                     # no subset: the weight, unpacked
    assert r is w and p is None
    feats = torch.randn(3, model.config.hidden_size)
    torch.testing.assert_close(drafter.draft_logits(feats, model.lm_head), model.lm_head(feats)[:, ids])


def test_shared_heads_follow_the_base_heads_packed_copy(model):
    """Full-vocabulary shared heads read the base LM head's packed copy only while it is current."""
    import copy

    from leapdec.models.linear import pack_linears

    base = pack_linears(copy.deepcopy(model))
    heads = MedusaHeads.from_base(base, 2, 1, True)
    assert heads._shared()[1] is base.lm_head.packed_weight() is not None
    x = torch.randn(3, model.config.hidden_size)
    assert torch.equal(heads.topk(x, 3), heads(x).topk(3, dim=-1).indices)
    with torch.no_grad():
        base.lm_head.weight.mul_(-1.0)                   # in place: the packed copy is stale now
    assert heads._shared()[1] is None
    assert torch.equal(heads.topk(x, 3), heads(x).topk(3, dim=-1).indices)
