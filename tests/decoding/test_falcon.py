"""Method "falcon": greedy output identical to greedy AR (batch 1 and ragged batches, stop
tokens, exact max_new_tokens), seeded lossless sampling, the block tree and the drafter's paged
forward against its plain forward."""

import pytest
import torch

from leapdec import zoo
from leapdec.decoding import generate
from leapdec.decoding.falcon import BlockTree, _draft_tree, drafter_context, load_drafter
from leapdec.models import load_checkpoint
from leapdec.models.drafter import FalconDrafter, block_causal_mask
from leapdec.models.testing import save_hf_tiny, tiny_model
from leapdec.train import cards
from leapdec.train.falcon import drafter_losses, glance, make_targets

PROMPTS = [[5, 6, 7, 8, 9], [3], list(range(10, 31)), [1, 2]]        # ragged; one shorter than k


pytestmark = pytest.mark.usefixtures("one_thread")    # tiny matmuls: one thread (tests/conftest.py)


def _distilled_drafter(model, prompts, steps=60, seed=0, num_layers=1, window=32):
    """A drafter briefly trained (CSGD, as the recipe) on windows of the model's own greedy
    continuations of ``prompts``: it learns them, so its trees get accepted deep."""
    g = torch.Generator().manual_seed(seed)
    cont = generate(model, prompts, method="ar", max_new_tokens=48, stop_tokens=[]).tokens
    seqs = [p + c for p, c in zip(prompts, cont)]
    data = torch.tensor([s[i:i + window + 1] for s in seqs for i in range(0, len(s) - window, 4)],
                        device=model.device)
    torch.manual_seed(seed)
    drafter = FalconDrafter.for_base(model, num_layers=num_layers).train()
    opt = torch.optim.AdamW(drafter.parameters(), lr=1e-2)
    for step in range(steps):
        rows = torch.randint(0, data.shape[0], (8,), generator=g).to(model.device)
        t = make_targets(model, data[rows], drafter.block_size)
        offset = step % drafter.block_size
        with torch.no_grad():
            pred = model.lm_head(drafter(t["features"], t["input_ids"], model.embed_tokens, offset)).argmax(-1)
        feats, ids, glanced = glance(t["features"], t["input_ids"], t["target_features"], t["glance_ids"],
                                     pred, t["labels"], t["loss_mask"], drafter.block_size, offset, 0.3, g)
        feat, ce, _ = drafter_losses(drafter, model, feats, ids, t["target_features"], t["labels"],
                                     t["loss_mask"] & ~glanced, offset)
        opt.zero_grad()
        (feat + 0.5 * ce).backward()
        opt.step()
    return drafter.eval()


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("falcon_llama")
    save_hf_tiny(path, "llama", seed=3)
    model = load_checkpoint(path)
    return model, _distilled_drafter(model, PROMPTS)


@pytest.mark.parametrize("rows", [[0], [2], [1], [0, 1, 2, 3]])
def test_greedy_equals_ar_batch1_and_ragged(hf_model, rows):
    model, drafter = hf_model
    prompts = [PROMPTS[r] for r in rows]
    ar = generate(model, prompts, method="ar", max_new_tokens=40, stop_tokens=[])
    out = generate(model, prompts, method="falcon", drafter=drafter, max_new_tokens=40, stop_tokens=[],
                   page_size=4, depth=2, num_draft=10)          # two block levels (the GPU default tree)
    assert out.tokens == ar.tokens
    st = out.stats
    assert st["acceptance"] == "greedy" and st["block_size"] == 2
    assert st["mean_accepted_length"] > 1.3                       # the trees do get accepted
    assert max(st["accept_length_histogram"]) >= 4                # two blocks deep
    assert st["model_calls"] < ar.stats["model_calls"] and st["drafter_calls"] > 0
    for row, lengths in zip(out.tokens, st["accepted_lengths"]):
        assert 1 + sum(lengths) == len(row) == 40                 # prefill token + each step's gain
    assert st["tree_steps"] == sum(st["accept_length_histogram"].values())
    assert st["tokens_per_call"] > 1.0


@pytest.mark.parametrize("tree", [dict(root_top_k=1, branch_top_k=1, frontier=1, depth=4, num_draft=8),
                                  dict(root_top_k=8, branch_top_k=4, frontier=4, depth=2, num_draft=30),
                                  dict(num_draft=0), dict(depth=1, num_draft=3)])
def test_greedy_lossless_for_other_trees(hf_model, tree):
    model, drafter = hf_model
    ar = generate(model, PROMPTS, method="ar", max_new_tokens=24, stop_tokens=[])
    out = generate(model, PROMPTS, method="falcon", drafter=drafter, max_new_tokens=24, stop_tokens=[], **tree)
    assert out.tokens == ar.tokens
    if tree.get("num_draft") == 0:
        assert out.stats["drafter_calls"] == 0 and out.stats["model_calls"] == 24


def test_random_drafter_block_size_3_is_lossless():
    model = tiny_model("qwen3", seed=2)
    drafter = FalconDrafter.for_base(model, num_layers=2, block_size=3).eval()
    ar = generate(model, PROMPTS, method="ar", max_new_tokens=20, stop_tokens=[])
    out = generate(model, PROMPTS, method="falcon", drafter=drafter, max_new_tokens=20, stop_tokens=[],
                   page_size=8)
    assert out.tokens == ar.tokens and out.stats["block_size"] == 3


def test_max_new_tokens_exact(hf_model):
    model, drafter = hf_model
    full = generate(model, PROMPTS, method="ar", max_new_tokens=13, stop_tokens=[]).tokens
    for n in (0, 1, 2, 3, 5, 13):
        out = generate(model, PROMPTS, method="falcon", drafter=drafter, max_new_tokens=n, stop_tokens=[])
        assert out.tokens == [row[:n] for row in full]


def test_stop_tokens_end_rows_inside_accepted_paths(hf_model):
    model, drafter = hf_model
    free = generate(model, PROMPTS, method="falcon", drafter=drafter, max_new_tokens=30, stop_tokens=[]).tokens
    for stop in {free[0][6], free[2][11], free[3][2]}:
        ar = generate(model, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[stop]).tokens
        out = generate(model, PROMPTS, method="falcon", drafter=drafter, max_new_tokens=30, stop_tokens=[stop])
        assert out.tokens == ar
        for row, full in zip(out.tokens, free):
            assert row == (full[:full.index(stop)] if stop in full else full)
    model.config.eos_token_id = free[1][4]              # the model's eos is the default stop token
    try:
        default = generate(model, PROMPTS, method="falcon", drafter=drafter, max_new_tokens=30).tokens
        assert default == generate(model, PROMPTS, method="ar", max_new_tokens=30).tokens
    finally:
        model.config.eos_token_id = None


def test_streaming_matches_final_tokens(hf_model):
    model, drafter = hf_model
    steps = []
    out = generate(model, PROMPTS, method="falcon", drafter=drafter, max_new_tokens=20, stop_tokens=[],
                   stream=steps.append)
    assert len(steps) == out.stats["model_calls"]
    assert [sum((s[i] for s in steps), []) for i in range(len(PROMPTS))] == out.tokens


def test_sampling_is_seeded_and_top1_is_greedy(hf_model):
    model, drafter = hf_model
    kw = dict(method="falcon", drafter=drafter, max_new_tokens=20, stop_tokens=[], temperature=1.0)
    a = generate(model, PROMPTS, seed=11, **kw)
    assert a.stats["acceptance"] == "sampling"
    assert [len(r) for r in a.tokens] == [20] * len(PROMPTS)
    assert a.tokens == generate(model, PROMPTS, seed=11, **kw).tokens
    assert a.tokens != generate(model, PROMPTS, seed=12, **kw).tokens
    greedy = generate(model, PROMPTS, method="ar", max_new_tokens=20, stop_tokens=[]).tokens
    assert generate(model, PROMPTS, seed=3, **dict(kw, top_k=1)).tokens == greedy


def test_sampling_is_lossless_in_distribution():
    """At temperature 1 the tokens follow the model's marginals: the first block branches into
    every token (so the second token is always an accepted draft, drawn by the deterministic
    rule), the third is the block's accepted tail or the residual's bonus."""
    vocab, n, prompt = 32, 2000, [3, 9, 4]
    model = tiny_model("llama", seed=7, vocab_size=vocab, init_std=0.3)
    drafter = FalconDrafter.for_base(model, num_layers=1).eval()
    out = generate(model, [prompt] * n, method="falcon", drafter=drafter, max_new_tokens=4, stop_tokens=[],
                   temperature=1.0, seed=0, root_top_k=vocab, frontier=1, depth=1, num_draft=2 * vocab)
    first_steps = [row[0] for row in out.stats["accepted_lengths"]]
    assert min(first_steps) >= 2 and max(first_steps) == 3
    with torch.no_grad():
        p1 = model.logits([prompt])[0, -1].softmax(-1)
        ids = torch.tensor([prompt + [x] for x in range(vocab)])
        p12 = p1[:, None] * model.logits(ids)[:, -1].softmax(-1)                     # [x1, x2]
        ids3 = torch.tensor([prompt + [a, b] for a in range(vocab) for b in range(vocab)])
        p3 = (p12[:, :, None] * model.logits(ids3)[:, -1].softmax(-1).view(vocab, vocab, vocab)).sum((0, 1))
    for pos, p in ((1, p12.sum(0)), (2, p3)):
        freq = torch.bincount(torch.tensor([row[pos] for row in out.tokens]), minlength=vocab).double() / n
        sigma = (p.double() * (1 - p.double()) / n).sqrt()
        assert bool(((freq - p).abs() <= 5 * sigma + 0.01).all()), (pos, freq, p)


def test_block_tree_expand():
    """One block (k = 2) under the root: top-2 first tokens, each followed by the top-1 tail."""
    lp = torch.full((1, 1, 2, 5), -10.0)
    lp[0, 0, 0, [3, 1, 4]] = torch.tensor([-0.1, -0.5, -2.0])
    lp[0, 0, 1, 2] = -0.2
    tree = BlockTree(torch.tensor([7]), frontier_width=1)
    source, block = tree.expand_block(lp, branch=2)
    assert tree.tokens.tolist() == [[7, 3, 1, 2, 2]]
    assert tree.parents.tolist() == [[-1, 0, 0, 1, 2]]
    assert tree.depth.tolist() == [[0, 1, 1, 2, 2]]
    torch.testing.assert_close(tree.scores, torch.tensor([[0.0, -0.1, -0.5, -0.3, -0.7]]))
    assert tree.frontier.tolist() == [[3]] and source.tolist() == [[0]] and block.tolist() == [[[3, 2]]]
    sel = tree.select(3)
    assert sel.tokens.tolist() == [[7, 3, 1, 2]] and sel.parents.tolist() == [[-1, 0, 0, 1]]
    with pytest.raises(ValueError, match="logprobs"):
        tree.expand_block(torch.zeros(1, 2, 2, 5), branch=2)


def test_block_causal_mask():
    m = block_causal_mask(5, 2, offset=(-5) % 2)          # blocks {0}, {1, 2}, {3, 4}
    want = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]],
                        dtype=torch.bool)
    assert torch.equal(m, want)


@pytest.mark.parametrize("block_size", [2, 3])
def test_paged_drafting_matches_plain_forward(block_size):
    """A chain tree (top-1 everywhere) drafted over the paged cache equals iterated plain
    forwards of the drafter over the context plus its own blocks (blocks aligned to the end)."""
    model = tiny_model("llama", seed=4)
    drafter = FalconDrafter.for_base(model, num_layers=2, block_size=block_size).eval()
    k, levels = block_size, 3
    prompt = list(range(20, 31))
    root = 40
    with torch.no_grad():
        feats = model.hidden(torch.tensor([prompt]))[0]
        ids = torch.tensor(prompt[1:] + [root])
        chain, f, i = [], feats, ids
        for _ in range(levels):
            out = drafter(f[None], i[None], model.embed_tokens, block_offset=(-len(prompt)) % k)[0]
            block = out[-k:]
            toks = model.lm_head(block).argmax(-1)
            chain += toks.tolist()
            f, i = torch.cat([f, block]), torch.cat([i, toks])

        dcache = drafter.new_cache(num_pages=16, page_size=4)
        seq = dcache.new_sequence()
        out, ends = drafter_context(drafter, dcache, [seq], [0], [ids.tolist()], [feats], model.embed_tokens)
        assert ends == [len(prompt)]
        plain = drafter(feats[None], ids[None], model.embed_tokens, block_offset=(-len(prompt)) % k)[0]
        torch.testing.assert_close(out, plain, atol=1e-4, rtol=1e-4)
        opts = dict(root_top_k=1, branch_top_k=1, frontier=1, depth=levels, num_draft=levels * k)
        sel, depth = _draft_tree(drafter, dcache, [seq], [len(prompt)], [root], out[None, -k:],
                                 model.embed_tokens, model.lm_head, opts, 100, {"drafter_calls": 0})
    assert sel.tokens[0].tolist() == [root] + chain
    assert depth[0].tolist() == list(range(levels * k + 1))


def test_options_and_missing_drafter(hf_model):
    model, drafter = hf_model
    with pytest.raises(ValueError, match="frontier"):
        generate(model, PROMPTS, method="falcon", drafter=drafter, frontier=0)
    with pytest.raises(ValueError, match="num_draft"):
        generate(model, PROMPTS, method="falcon", drafter=drafter, num_draft=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, PROMPTS, method="falcon", drafter=drafter, max_new_tokens=-2)
    with pytest.raises(TypeError, match="drafter"):
        generate(model, PROMPTS, method="falcon", drafter=3)
    with pytest.raises(FileNotFoundError, match="falcon"):
        generate(model, PROMPTS, method="falcon")                  # no falcon/ beside the checkpoint
    other = tiny_model("llama", hidden_size=32, num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(ValueError, match="hidden_size"):
        generate(other, PROMPTS, method="falcon", drafter=drafter)
    mdm = tiny_model("llama", causal=False)
    with pytest.raises(ValueError, match="causal"):
        generate(mdm, PROMPTS, method="falcon", drafter=drafter)


def test_drafter_save_load_and_companion(tmp_path, hf_model):
    model, drafter = hf_model
    drafter.meta = {"tree": dict(root_top_k=2, branch_top_k=1, frontier=1, depth=2, num_draft=5)}
    drafter.save(tmp_path / "falcon")
    loaded = FalconDrafter.load(tmp_path / "falcon")
    f, ids = torch.randn(2, 7, model.config.hidden_size), torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(f, ids, model.embed_tokens), drafter(f, ids, model.embed_tokens))
    assert loaded.block_size == drafter.block_size and loaded.meta == drafter.meta
    original, model.checkpoint_dir = model.checkpoint_dir, tmp_path
    try:
        assert isinstance(load_drafter(model), FalconDrafter)
        out = generate(model, PROMPTS, method="falcon", max_new_tokens=10, stop_tokens=[])
        assert out.stats["num_draft"] == 5 and out.stats["depth"] == 2        # the recorded tree
        assert out.tokens == generate(model, PROMPTS, method="ar", max_new_tokens=10, stop_tokens=[]).tokens
    finally:
        model.checkpoint_dir = original
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        FalconDrafter.load(tmp_path)


def test_zoo_model_greedy_equals_ar():
    if "stdlib-ar" not in zoo.available():
        pytest.skip("zoo model stdlib-ar not present")
    model = load_checkpoint(zoo.resolve("stdlib-ar"))
    drafter = None if (zoo.resolve("stdlib-ar") / "falcon").is_dir() else FalconDrafter.for_base(model).eval()
    prompts = [[0, 1024, 77, 900, 31, 12], [0, 5, 6], list(range(100, 160)), [0]]
    ar = generate(model, prompts, method="ar", max_new_tokens=32)
    one = generate(model, prompts[:1], method="falcon", drafter=drafter, max_new_tokens=32)
    assert one.tokens == ar.tokens[:1]
    out = generate(model, prompts, method="falcon", drafter=drafter, max_new_tokens=32)
    assert out.tokens == ar.tokens
    if drafter is None:                                     # the shipped drafter gets accepted
        assert out.stats["mean_accepted_length"] > 1.5



def test_zoo_drafter_card_matches_files_and_base():
    if "stdlib-ar" not in zoo.available() or not (zoo.resolve("stdlib-ar") / "falcon").is_dir():
        pytest.skip("no shipped Falcon drafter for stdlib-ar")
    base = zoo.resolve("stdlib-ar")
    folder = base / "falcon"
    assert cards.verify_card(folder) == []
    card = cards.load_card(folder)
    assert card["command"].startswith("python -m leapdec.train falcon --base stdlib-ar")
    assert card["eval"]["decoding"]["identical_to_ar"]
    assert all(e["bytes"] <= 16_000_000 for e in card["files"].values())
    # a drafter is trained against one base: retrain it (the card's command) when the base changes
    assert FalconDrafter.load(folder).meta["base_model_sha256"] == cards.file_sha256(base / "model.safetensors")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_greedy_equals_ar_and_sampling_is_seeded():
    model = tiny_model("llama", seed=5, hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=64, device="cuda")
    drafter = _distilled_drafter(model, PROMPTS)
    assert drafter.device.type == "cuda"
    ar = generate(model, PROMPTS, method="ar", max_new_tokens=32, stop_tokens=[], cuda_graph=False)
    out = generate(model, PROMPTS, method="falcon", drafter=drafter, max_new_tokens=32, stop_tokens=[])
    assert out.tokens == ar.tokens and out.stats["mean_accepted_length"] > 1.3
    kw = dict(method="falcon", drafter=drafter, max_new_tokens=16, stop_tokens=[], temperature=0.8, seed=4)
    assert generate(model, PROMPTS, **kw).tokens == generate(model, PROMPTS, **kw).tokens


def test_cpu_default_tree_is_one_block_level(hf_model):
    from leapdec.decoding.falcon import DEFAULT_TREE_CPU

    model, drafter = hf_model
    ar = generate(model, PROMPTS, method="ar", max_new_tokens=24, stop_tokens=[])
    out = generate(model, PROMPTS, method="falcon", drafter=drafter, max_new_tokens=24, stop_tokens=[])
    assert out.tokens == ar.tokens
    recorded = drafter.meta.get("tree") or {}          # a tree the drafter records wins
    assert {k: out.stats[k] for k in DEFAULT_TREE_CPU} == {k: recorded.get(k, v) for k, v in DEFAULT_TREE_CPU.items()}


def test_fixed_shape_verify_steps_equal_greedy_ar(hf_model):
    """static_steps=True (a CUDA graph on a GPU, eager here): every row runs num_draft + 1 nodes,
    rows too short to draft run their root and absent nodes."""
    model, drafter = hf_model
    ar = generate(model, PROMPTS, method="ar", max_new_tokens=23, stop_tokens=[])
    out = generate(model, PROMPTS, method="falcon", drafter=drafter, max_new_tokens=23, stop_tokens=[],
                   static_steps=True, depth=2, num_draft=7, page_size=4)
    assert out.tokens == ar.tokens
