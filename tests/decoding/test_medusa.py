"""Medusa decoding: greedy output equals greedy AR token for token (batch 1 and ragged batches,
stop tokens, exact max_new_tokens), typical acceptance, seeded lossless sampling, heads files,
and clear errors."""

import pytest
import torch

from leapdec import zoo
from leapdec.decoding import generate, methods
from leapdec.decoding import medusa as medusa_module
from leapdec.decoding.medusa import resolve_tree
from leapdec.models import load_checkpoint
from leapdec.models.heads import MedusaHeads
from leapdec.models.testing import save_hf_tiny, tiny_model
from leapdec.train import cards
from leapdec.train.medusa import heads_loss, self_distill
from leapdec.trees import chain_tree, medusa_tree

PROMPTS = [[5, 6, 7, 8, 9], [3, 4], list(range(10, 31)), [17] * 9]      # ragged, spans pages


pytestmark = pytest.mark.usefixtures("one_thread")    # tiny matmuls: one thread (tests/conftest.py)


def _distilled_heads(model, num_heads=3, steps=120, seed=0):
    """Heads briefly trained on the model's own greedy continuations, so trees get accepted
    several levels deep (exercising compaction of non-trivial paths)."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, model.config.vocab_size, (24, 6), generator=g).tolist() + PROMPTS
    hidden, targets = self_distill(model, prompts, 32, num_heads, gen_batch=32)
    torch.manual_seed(seed)                       # the ResBlock biases' default init
    heads = MedusaHeads.from_base(model, num_heads)
    opt = torch.optim.Adam(heads.parameters(), lr=1e-2)
    for _ in range(steps):
        loss, _ = heads_loss(heads, hidden, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return heads.eval()


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A random tiny checkpoint saved by transformers, loaded by leapdec, with trained heads."""
    path = tmp_path_factory.mktemp("medusa_hf")
    save_hf_tiny(path, "llama", seed=5)
    model = load_checkpoint(path)
    return model, _distilled_heads(model)


def test_registered():
    assert "medusa" in methods()


@pytest.mark.parametrize("rows", [[0], [0, 1, 2, 3]], ids=["batch1", "batch4_ragged"])
def test_greedy_equals_greedy_ar(hf_model, rows):
    model, heads = hf_model
    prompts = [PROMPTS[r] for r in rows]
    ar = generate(model, prompts, method="ar", max_new_tokens=40, stop_tokens=[])
    out = generate(model, prompts, method="medusa", heads=heads, max_new_tokens=40, stop_tokens=[],
                   page_size=4)
    assert out.tokens == ar.tokens
    st = out.stats
    assert st["acceptance"] == "greedy"
    assert st["mean_accepted_length"] > 1.3                  # the trees do get accepted
    assert max(st["accept_length_histogram"]) >= 3
    assert st["model_calls"] < ar.stats["model_calls"]
    # per row: the prefill gives one token, then each tree step its accepted length
    for row, lengths in zip(out.tokens, st["accepted_lengths"]):
        assert 1 + sum(lengths) == len(row) == 40
    assert st["tree_steps"] == sum(st["accept_length_histogram"].values())
    assert st["tokens_per_call"] > 1.0


@pytest.mark.parametrize("tree", [None, 8, "chain", "mc63"])
def test_greedy_lossless_for_other_trees(hf_model, tree):
    model, heads = hf_model
    tree = {"chain": chain_tree(3), "mc63": [c for c in medusa_tree(63).choices if len(c) <= 3]}.get(tree, tree)
    ar = generate(model, PROMPTS, method="ar", max_new_tokens=24, stop_tokens=[])
    out = generate(model, PROMPTS, method="medusa", heads=heads, tree=tree, max_new_tokens=24,
                   stop_tokens=[])
    assert out.tokens == ar.tokens


def _accuracy_table(heads=3, ranks=10):
    return [[round(0.6 * 0.5 ** r * 0.9 ** h, 4) for r in range(ranks)] for h in range(heads)]


def test_auto_tree_sizing_is_lossless_and_shrinks_with_rows(hf_model):
    model, heads = hf_model
    heads.meta = {"head_accuracy": _accuracy_table()}
    try:
        auto = medusa_module._auto_trees(heads)
        sizes = [auto.size_for(n, 0.08) for n in (1, 2, 4, 8, 32)]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
        assert auto.size_for(4, 0.0) == len(auto.expected) - 1 and auto.size_for(4, 1e6) == 0
        e = medusa_module.expected_accept_lengths(medusa_module.ranked_paths(heads))
        for k in (1, 5, 20):       # independent heads: the best k-node tree of greedy_tree
            tree = medusa_module.greedy_tree(_accuracy_table(), k)
            assert e[k] == pytest.approx(tree.expected_accept_length(_accuracy_table()))
            assert auto.tree(k, "cpu").tree.choices == tree.choices
        # measured path probabilities (the recipe's tree_paths) take precedence over the table
        heads.meta["tree_paths"] = [[[0], 0.9], [[0, 0], 0.8], [[1], 0.05], [[0, 0, 0], 0.01]]
        measured = medusa_module._auto_trees(heads)
        assert measured.expected == pytest.approx([1.0, 1.9, 2.7, 2.75, 2.76])
        assert measured.tree(2, "cpu").tree.choices == ((0,), (0, 0))
        assert resolve_tree(3, heads).choices == ((0,), (1,), (0, 0))
        ar = generate(model, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[])
        stop = ar.tokens[2][9]                       # rows end at different steps
        ar = generate(model, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[stop])
        out = generate(model, PROMPTS, method="medusa", heads=heads, max_new_tokens=30,
                       stop_tokens=[stop], node_cost=0.08)
        assert out.tokens == ar.tokens and out.stats["tree"] == "auto"
        assert out.stats["mean_tree_nodes"] > 1
        # a cost of zero takes the largest tree the table supports; a huge one plain AR steps
        big = generate(model, PROMPTS, method="medusa", heads=heads, max_new_tokens=30, stop_tokens=[stop],
                       node_cost=0.0)
        none = generate(model, PROMPTS, method="medusa", heads=heads, max_new_tokens=30, stop_tokens=[stop],
                        node_cost=1e6)
        assert big.tokens == none.tokens == ar.tokens
        assert none.stats["mean_tree_nodes"] == 1.0 and big.stats["mean_tree_nodes"] > out.stats["mean_tree_nodes"]
    finally:
        heads.meta = {}


def test_max_new_tokens_exact(hf_model):
    model, heads = hf_model
    full = generate(model, PROMPTS, method="ar", max_new_tokens=13, stop_tokens=[]).tokens
    for n in (0, 1, 2, 5, 13):
        out = generate(model, PROMPTS, method="medusa", heads=heads, max_new_tokens=n, stop_tokens=[])
        assert out.tokens == [row[:n] for row in full]


def test_stop_tokens_end_rows_inside_accepted_paths(hf_model):
    model, heads = hf_model
    free = generate(model, PROMPTS, method="medusa", heads=heads, max_new_tokens=30, stop_tokens=[]).tokens
    for stop in {free[0][6], free[2][11], free[3][2]}:
        ar = generate(model, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[stop]).tokens
        out = generate(model, PROMPTS, method="medusa", heads=heads, max_new_tokens=30, stop_tokens=[stop])
        assert out.tokens == ar
        for row, full in zip(out.tokens, free):
            assert row == (full[:full.index(stop)] if stop in full else full)
    # the model's eos is the default stop token
    model.config.eos_token_id = free[1][4]
    try:
        default = generate(model, PROMPTS, method="medusa", heads=heads, max_new_tokens=30).tokens
        assert default == generate(model, PROMPTS, method="ar", max_new_tokens=30).tokens
    finally:
        model.config.eos_token_id = None


def test_streaming_matches_final_tokens(hf_model):
    model, heads = hf_model
    steps = []
    out = generate(model, PROMPTS, method="medusa", heads=heads, max_new_tokens=20, stop_tokens=[],
                   stream=steps.append)
    assert len(steps) == out.stats["model_calls"]
    assert [sum((s[i] for s in steps), []) for i in range(len(PROMPTS))] == out.tokens


def test_typical_acceptance_runs(hf_model):
    model, heads = hf_model
    out = generate(model, PROMPTS, method="medusa", heads=heads, max_new_tokens=24, stop_tokens=[],
                   temperature=0.7, acceptance="typical", posterior_threshold=0.09, posterior_alpha=0.3)
    assert out.stats["acceptance"] == "typical"
    assert [len(r) for r in out.tokens] == [24] * len(PROMPTS)
    assert out.stats["tokens_per_call"] >= 1.0
    assert all(a >= 1 for row in out.stats["accepted_lengths"] for a in row)
    assert out.stats["model_calls"] <= 24


def test_sampling_is_seeded_and_top1_is_greedy(hf_model):
    model, heads = hf_model
    kw = dict(method="medusa", heads=heads, max_new_tokens=20, stop_tokens=[], temperature=1.0)
    a = generate(model, PROMPTS, seed=11, **kw)
    assert a.stats["acceptance"] == "sampling"
    assert a.tokens == generate(model, PROMPTS, seed=11, **kw).tokens
    assert a.tokens != generate(model, PROMPTS, seed=12, **kw).tokens
    greedy = generate(model, PROMPTS, method="ar", max_new_tokens=20, stop_tokens=[]).tokens
    assert generate(model, PROMPTS, seed=3, **dict(kw, top_k=1)).tokens == greedy


def test_sampling_is_lossless_in_distribution():
    """Tokens drawn by tree verification follow the model's marginals at temperature 1: a
    depth-1 layer holding every token makes the second token always an accepted draft (with the
    deterministic-draft rule), the third is an accepted depth-2 draft or the residual's bonus."""
    vocab, n, prompt = 32, 2000, [3, 9, 4]
    model = tiny_model("llama", seed=7, vocab_size=vocab, init_std=0.3)
    heads = _distilled_heads(model, num_heads=2, steps=60, seed=1)
    tree = [(r,) for r in range(vocab)] + [(0, 0), (0, 1), (1, 0)]
    out = generate(model, [prompt] * n, method="medusa", heads=heads, max_new_tokens=4,
                   stop_tokens=[], temperature=1.0, seed=0, tree=tree)
    first_steps = [row[0] for row in out.stats["accepted_lengths"]]
    assert min(first_steps) >= 2 and max(first_steps) == 3
    with torch.no_grad():
        p1 = model.logits([prompt])[0, -1].softmax(-1)
        ids = torch.tensor([prompt + [x] for x in range(vocab)])
        p12 = p1[:, None] * model.logits(ids)[:, -1].softmax(-1)                     # [x1, x2]
        ids3 = torch.tensor([prompt + [a, b] for a in range(vocab) for b in range(vocab)])
        p3 = (p12[:, :, None] * model.logits(ids3)[:, -1].softmax(-1).view(vocab, vocab, vocab)).sum((0, 1))
    for k, p in ((1, p12.sum(0)), (2, p3)):
        freq = torch.bincount(torch.tensor([row[k] for row in out.tokens]), minlength=vocab).double() / n
        sigma = (p.double() * (1 - p.double()) / n).sqrt()
        assert bool(((freq - p).abs() <= 5 * sigma + 0.01).all()), (k, freq, p)


def test_zoo_companion_matches_its_base_model():
    if "stdlib-ar" not in zoo.available() or not (zoo.resolve("stdlib-ar") / "medusa").is_dir():
        pytest.skip("zoo model stdlib-ar or its medusa heads not present")
    folder = zoo.resolve("stdlib-ar") / "medusa"
    assert cards.verify_card(folder) == []
    heads = MedusaHeads.load(folder)
    # trained for exactly this checkpoint (retrain the heads when the base model changes)
    assert heads.meta["base_model_sha256"] == cards.file_sha256(zoo.resolve("stdlib-ar") / "model.safetensors")
    assert len(heads.meta["head_accuracy"]) == heads.num_heads
    assert cards.load_card(folder)["eval"]["decoding"]["batch1"]["identical_to_ar"]


def test_zoo_model_greedy_equals_ar():
    if "stdlib-ar" not in zoo.available():
        pytest.skip("zoo model stdlib-ar not present")
    model = load_checkpoint(zoo.resolve("stdlib-ar"))
    heads = None if (zoo.resolve("stdlib-ar") / "medusa").is_dir() else MedusaHeads.from_base(model, 4)
    prompts = [[0, 1024, 77, 900, 31, 12], [0, 5, 6], list(range(100, 160))]
    ar = generate(model, prompts, method="ar", max_new_tokens=32)
    one = generate(model, prompts[:1], method="medusa", heads=heads, max_new_tokens=32)
    assert one.tokens == ar.tokens[:1]
    out = generate(model, prompts, method="medusa", heads=heads, max_new_tokens=32)
    assert out.tokens == ar.tokens


def test_heads_save_load_roundtrip(tmp_path, hf_model):
    model, heads = hf_model
    heads.meta = {"tree": [[0], [1], [0, 0]]}
    heads.save(tmp_path / "medusa")
    loaded = MedusaHeads.load(tmp_path / "medusa")
    h = torch.randn(5, model.config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(h), heads(h))
    assert loaded.config == heads.config
    assert resolve_tree(None, loaded).choices == ((0,), (1,), (0, 0))
    # a fresh ResBlock is x + SiLU(bias): zero weight
    fresh = MedusaHeads.from_base(model, 2)
    assert all(not b[0].linear.weight.detach().any() for b in fresh.heads)
    torch.testing.assert_close(fresh.heads[0][-1].weight, model.lm_head.weight)
    # found as the model's companion
    model.checkpoint_dir = tmp_path
    try:
        out = generate(model, [PROMPTS[0]], method="medusa", max_new_tokens=6, stop_tokens=[])
        assert out.tokens == generate(model, [PROMPTS[0]], method="ar", max_new_tokens=6, stop_tokens=[]).tokens
    finally:
        model.checkpoint_dir = None
        heads.meta = {}


def test_errors_are_clear(hf_model, tmp_path):
    model, heads = hf_model
    with pytest.raises(FileNotFoundError, match="heads="):
        generate(model, PROMPTS, method="medusa", max_new_tokens=4)
    with pytest.raises(FileNotFoundError):
        generate(model, PROMPTS, method="medusa", heads=tmp_path / "nothing", max_new_tokens=4)
    with pytest.raises(ValueError, match="acceptance"):
        generate(model, PROMPTS, method="medusa", heads=heads, acceptance="best")
    with pytest.raises(ValueError, match="temperature"):
        generate(model, PROMPTS, method="medusa", heads=heads, acceptance="greedy", temperature=0.5)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, PROMPTS, method="medusa", heads=heads, acceptance="typical")
    with pytest.raises(ValueError, match="heads"):
        generate(model, PROMPTS, method="medusa", heads=heads, tree=chain_tree(5))
    with pytest.raises(ValueError, match="head_accuracy"):
        generate(model, PROMPTS, method="medusa", heads=heads, tree="auto")
    with pytest.raises(ValueError, match="node_cost"):
        generate(model, PROMPTS, method="medusa", heads=heads, node_cost=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, PROMPTS, method="medusa", heads=heads, max_new_tokens=-1)
    with pytest.raises(TypeError, match="heads"):
        generate(model, PROMPTS, method="medusa", heads=3)
    other = MedusaHeads(2, model.config.hidden_size, model.config.vocab_size + 1)
    with pytest.raises(ValueError, match="vocab"):
        generate(model, PROMPTS, method="medusa", heads=other)
    with pytest.raises(ValueError, match="num_heads"):
        MedusaHeads(0, 8, 8)
    with pytest.raises(ValueError, match="dtype"):
        generate(model, PROMPTS, method="medusa", heads=MedusaHeads.from_base(model, 2).to(torch.bfloat16))


def test_heads_sharing_the_lm_head(tmp_path):
    """Heads that project with the base's frozen LM head: their file holds only the ResBlocks,
    they are bound to the model on load, and greedy decoding stays identical to greedy AR."""
    from safetensors import safe_open

    model = tiny_model("llama", seed=11)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, model.config.vocab_size, (16, 6), generator=g).tolist() + PROMPTS
    hidden, targets = self_distill(model, prompts, 24, 3, gen_batch=32)
    heads = MedusaHeads.from_base(model, 3, shared_lm_head=True)
    assert all(p.shape != model.lm_head.weight.shape for p in heads.parameters())
    opt = torch.optim.Adam(heads.parameters(), lr=1e-2)
    for _ in range(60):
        loss, _ = heads_loss(heads, hidden, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    heads.eval().save(tmp_path)
    with safe_open(str(tmp_path / "medusa_heads.safetensors"), "pt") as f:
        assert all("linear" in k for k in f.keys())                 # ResBlocks only
    loaded = MedusaHeads.load(tmp_path)
    with pytest.raises(RuntimeError, match="attach"):
        loaded.topk(torch.zeros(1, model.config.hidden_size), 2)
    ar = generate(model, PROMPTS, method="ar", max_new_tokens=24, stop_tokens=[])
    out = generate(model, PROMPTS, method="medusa", heads=str(tmp_path), tree=6, max_new_tokens=24,
                   stop_tokens=[])
    assert out.tokens == ar.tokens
    torch.testing.assert_close(loaded.attach(model).topk(hidden[:4], 3), heads.topk(hidden[:4], 3))


def test_heads_own_their_output_layers():
    """Each head has its own vocabulary projection (loading must not alias them)."""
    model = tiny_model("llama", seed=11)
    heads = MedusaHeads.from_base(model, 3)
    outs = [h[-1] for h in heads.heads]
    assert len({id(o) for o in outs}) == 3


def test_fixed_shape_verify_steps_equal_greedy_ar(hf_model):
    """static_steps=True: every row runs the whole tree in a fixed-shape step (what a CUDA graph
    replays on a GPU; eager on CPU); trees cut near max_new_tokens are only cut in verification."""
    model, heads = hf_model
    ar = generate(model, PROMPTS, method="ar", max_new_tokens=21, stop_tokens=[])
    out = generate(model, PROMPTS, method="medusa", heads=heads, tree=8, static_steps=True,
                   max_new_tokens=21, stop_tokens=[], page_size=4)
    assert out.tokens == ar.tokens


def test_fixed_shape_steps_need_a_fixed_tree():
    import leapdec

    model = leapdec.load_model("stdlib-ar")
    with pytest.raises(ValueError, match="static_steps"):
        generate(model, [[5, 6, 7]], method="medusa", tree="auto", static_steps=True, max_new_tokens=4)
