"""The DEER recipe end to end on the tiny preset: the target's greedy answers, block-causal
batches whose labels are the answer's next tokens, the held-out loss goes down over the two
stages, the drafter lands in ``<base>/deer`` with a card that matches the files, and
``generate(method="deer")`` finds it and decodes exactly like greedy AR."""

import json
import random

import pytest
import torch

from leapdec.decoding import generate
from leapdec.models import load_checkpoint, save_checkpoint
from leapdec.models.deer import DeerDrafter
from leapdec.models.testing import tiny_model
from leapdec.train import cards
from leapdec.train import deer as recipe
from leapdec.train import tokenizer as tokenizers_
from leapdec.train.__main__ import RECIPES

pytestmark = pytest.mark.usefixtures("one_thread")    # tiny matmuls: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random causal LM with the tiny corpus tokenizer, as a checkpoint folder."""
    path = tmp_path_factory.mktemp("deer_base") / "tiny-ar"
    tok = tokenizers_.train_tokenizer(**tokenizers_.PRESETS["tiny"])
    ids = tokenizers_.special_token_ids(tok)
    model = tiny_model("llama", seed=0, vocab_size=tok.get_vocab_size(), eos_token_id=ids["eos"],
                       bos_token_id=ids["eos"])
    save_checkpoint(model, path)
    tokenizers_.save_tokenizer(tok, path)
    return path


@pytest.fixture(scope="module")
def trained(base_dir):
    return recipe.train_deer(base_dir, "tiny", device="cpu", seed=0, progress=False)


def test_batches_put_the_answer_after_each_boundary():
    pairs = [([1, 2, 3], [10, 11, 12, 13, 14, 15]), ([4, 5], [20, 21, 22])]
    ids, pos, labels, mask, dist = recipe.make_batch(pairs, 2, 3, boundary=99, mask=98, gen=random.Random(0))
    width = 9
    assert ids.shape == (2, width + 2 * 3) and mask.shape == (2, 1, 15, 15)
    for r, (p, a) in enumerate(pairs):
        seq = p + a
        assert labels[r, len(p) - 1:len(seq) - 1].tolist() == a and (dist[r, len(p) - 1:len(seq) - 1] == 0).all()
        for i in range(2):
            s = width + i * 3
            c = int(pos[r, s])
            assert ids[r, s:s + 3].tolist() == [99, 98, 98] and pos[r, s:s + 3].tolist() == [c, c + 1, c + 2]
            want = [seq[c + 1 + k] if c + 1 + k < len(seq) else -100 for k in range(3)]
            assert labels[r, s:s + 3].tolist() == want
            assert mask[r, 0, s, :c].all() and not mask[r, 0, s, c:width].any()
            assert mask[r, 0, s, s:s + 3].all()
        assert not mask[r, 0, :width, width:].any()                 # the prefix never sees a block


def test_loss_decreases_and_card_matches(base_dir, trained):
    card, out = trained, base_dir / "deer"
    hist = card["training"]["history"]
    p = recipe.PRESETS["tiny"]
    assert hist[0]["step"] == 0 and hist[-1]["step"] == card["training"]["steps"] == p.steps
    assert card["training"]["final_train_loss"] < card["training"]["first_train_loss"]
    assert all(h["heldout_loss"] > 0 and len(h["top1_by_distance"]) == 8 for h in hist)
    assert card["recipe"]["stage_2_from_step"] == round(p.steps * (1 - p.stage2_fraction))
    assert cards.verify_card(out) == []
    assert json.loads((out / "card.json").read_text()) == card
    assert card["command"] == f"python -m leapdec.train deer --base {base_dir} --preset tiny --device cpu --seed 0"
    assert set(card["files"]) == {recipe.WEIGHTS_FILE, recipe.CONFIG_FILE}
    dec = card["eval"]["decoding"]
    assert dec["identical_to_ar"] and dec["mean_accepted_length"] >= 1.0
    assert sum(dec["accept_length_histogram"].values()) > 0


def test_generate_finds_the_companion(base_dir, trained):
    model = load_checkpoint(base_dir)
    drafter = DeerDrafter.load(base_dir / "deer")
    assert drafter.config.num_hidden_layers == recipe.PRESETS["tiny"].num_layers
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    ar = generate(model, prompts, method="ar", max_new_tokens=12)
    assert generate(model, prompts, method="deer", max_new_tokens=12, block_size=5).tokens == ar.tokens


def test_registered_and_bad_options(base_dir):
    assert RECIPES["deer"] == "leapdec.train.deer"
    with pytest.raises(ValueError, match="preset"):
        recipe.train_deer(base_dir, "huge")
    with pytest.raises(ValueError, match="steps"):
        recipe.train_deer(base_dir, "tiny", steps=0)
    with pytest.raises(ValueError, match="seconds"):
        recipe.train_deer(base_dir, "tiny", seconds=-1)


def test_the_sharing_preset_writes_a_small_exact_drafter(tmp_path):
    """The SmolLM2 preset's path (the distillation set's answers, the target's embedding and LM
    head shared, a reduced vocabulary, bfloat16 weights) on stdlib-ar with a tiny budget."""
    from leapdec.train.distill import load_base

    card = recipe.train_deer("stdlib-ar", "tiny-shared", out_dir=tmp_path, device="cpu", seed=0, progress=False)
    p = recipe.PRESETS["tiny-shared"]
    assert cards.verify_card(tmp_path) == []
    assert card["model"]["shares_target_embeddings"] and card["model"]["draft_vocab"] == p.vocab
    assert card["model"]["storage_dtype"] == "bfloat16" and 0 < card["model"]["vocab_coverage_of_answers"] <= 1
    assert card["corpus"]["train_sequences"] == p.function_prompts
    assert card["eval"]["decoding"]["identical_to_ar"]
    sweep = card["eval"]["decode_sweep"]                        # the fastest setting becomes the default
    assert [(r["block_size"], r["tree_topk"]) for r in sweep] == list(p.decode_sweep)
    best = max(sweep, key=lambda r: r["speedup_vs_ar"])
    assert card["eval"]["decode_defaults"] == {"block_size": best["block_size"], "tree_topk": best["tree_topk"]}
    assert all(0.0 <= a <= 1.0 for a in card["eval"]["top1_by_distance"])
    model = load_base("stdlib-ar", "cpu")[0]
    drafter = DeerDrafter.load(tmp_path, target=model)
    own = sum(x.numel() for x in drafter.parameters())
    assert own == card["model"]["parameters"] < sum(x.numel() for x in model.parameters())
    assert (tmp_path / recipe.WEIGHTS_FILE).stat().st_size < 2 * own + 2**20       # bf16, nothing shared
    assert drafter.meta["decode_defaults"] == card["eval"]["decode_defaults"]
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    ar = generate(model, prompts, method="ar", max_new_tokens=12)
    out = generate(model, prompts, method="deer", drafter=tmp_path, max_new_tokens=12)
    assert out.tokens == ar.tokens and out.stats["block_size"] == best["block_size"]
