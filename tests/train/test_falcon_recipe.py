"""The Falcon drafter recipe end to end on the tiny preset (through the CLI): the held-out loss
goes down, the drafter lands in ``<base>/falcon`` with a card that matches the files, and
``generate(method="falcon")`` finds it and decodes exactly like greedy AR. Plus the CSGD
glancing rule and the training targets."""

import json

import pytest
import torch

from leapdec.decoding import generate
from leapdec.models import load_checkpoint, save_checkpoint
from leapdec.models.drafter import CONFIG_FILE, WEIGHTS_FILE, FalconDrafter
from leapdec.models.testing import tiny_model
from leapdec.train import cards
from leapdec.train import falcon as recipe
from leapdec.train import tokenizer as tokenizers_
from leapdec.train.__main__ import RECIPES
from leapdec.train.__main__ import main as train_main


pytestmark = pytest.mark.usefixtures("one_thread")    # tiny matmuls: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random causal LM with the tiny corpus tokenizer, as a checkpoint folder."""
    path = tmp_path_factory.mktemp("falcon_base") / "tiny-ar"
    tok = tokenizers_.train_tokenizer(**tokenizers_.PRESETS["tiny"])
    ids = tokenizers_.special_token_ids(tok)
    model = tiny_model("llama", seed=0, vocab_size=tok.get_vocab_size(), eos_token_id=ids["eos"],
                       bos_token_id=ids["eos"])
    save_checkpoint(model, path)
    tokenizers_.save_tokenizer(tok, path)
    return path


@pytest.fixture(scope="module")
def trained(base_dir):
    assert RECIPES["falcon"] == "leapdec.train.falcon"
    assert train_main(["falcon", "--base", str(base_dir), "--preset", "tiny", "--device", "cpu",
                       "--no-progress"]) == 0
    return cards.load_card(base_dir / "falcon")


def test_loss_decreases_and_card_matches(base_dir, trained):
    card, out = trained, base_dir / "falcon"
    p = recipe.PRESETS["tiny"]
    hist = card["training"]["history"]
    assert hist[0]["step"] == 0 and hist[-1]["step"] == card["training"]["steps"] == p.steps
    assert hist[-1]["heldout_loss"] < hist[0]["heldout_loss"]
    assert card["eval"]["heldout_loss"] == hist[-1]["heldout_loss"]
    assert len(card["eval"]["block_accuracy"]) == p.block_size
    assert cards.verify_card(out) == []
    assert set(card["files"]) == {WEIGHTS_FILE, CONFIG_FILE}
    assert card["command"].startswith("python -m leapdec.train falcon --base")
    assert card["training"]["tokens_seen"] == p.steps * p.batch_size * (p.seq_len - p.block_size)
    assert card["training"]["glanced_positions"] > 0
    assert card["corpus"]["distilled_tokens"] == p.distill_prompts * (p.prompt_len + p.gen_len)
    assert card["model"]["block_size"] == p.block_size and card["model"]["num_layers"] == p.num_layers
    assert "## Reproduce" in (out / "CARD.md").read_text()
    dec = card["eval"]["decoding"]
    assert dec["identical_to_ar"] and dec["prompts"] == p.eval_prompts
    assert dec["mean_accepted_length"] >= 1.0 and dec["drafter_calls"] > 0
    cfg = json.loads((out / CONFIG_FILE).read_text())
    assert cfg["kind"] == "falcon" and cfg["block_size"] == p.block_size
    assert cfg["meta"]["base_model_sha256"] == cards.file_sha256(base_dir / "model.safetensors")


def test_generate_finds_the_drafter(base_dir, trained):
    model = load_checkpoint(base_dir)
    assert FalconDrafter.load(base_dir / "falcon").block_size == recipe.PRESETS["tiny"].block_size
    prompts = [[0, 40, 41, 42], [0, 7], list(range(60, 90))]
    ar = generate(model, prompts, method="ar", max_new_tokens=16, stop_tokens=[])
    out = generate(model, prompts, method="falcon", max_new_tokens=16, stop_tokens=[])
    assert out.tokens == ar.tokens


def test_make_targets_layout():
    model = tiny_model("llama", seed=1)
    windows = torch.randint(0, 128, (2, 11))
    t = recipe.make_targets(model, windows, block_size=2)
    with torch.no_grad():
        feats = model.hidden(windows[:, :10])
        greedy = model.lm_head(feats).argmax(-1)
    torch.testing.assert_close(t["features"], feats)
    assert torch.equal(t["input_ids"], windows[:, 1:])
    torch.testing.assert_close(t["target_features"][:, :8], feats[:, 2:])        # f_{j+k}
    assert torch.equal(t["labels"][:, :8], greedy[:, 2:]) and (t["labels"][:, 8:] == -100).all()
    assert torch.equal(t["glance_ids"][:, :8], windows[:, 3:])                     # w_{j+k+1}
    assert t["loss_mask"].sum(1).tolist() == [8, 8]                                # last k dropped


def _glance_inputs(num_wrong, t=20, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats, target = torch.zeros(3, t, 4), torch.ones(3, t, 4)
    ids, glance_ids = torch.zeros(3, t, dtype=torch.long), torch.full((3, t), 7)
    labels = torch.randint(10, 20, (3, t), generator=g)
    mask = torch.zeros(3, t, dtype=torch.bool)
    mask[:, :t - k] = True
    pred = labels.clone()
    for r, n in enumerate(num_wrong):                       # row r: n wrong valid predictions
        pred[r, :n] = 0
    return feats, ids, target, glance_ids, pred, labels, mask


def test_glance_more_where_more_wrong():
    feats, ids, target, gids, pred, labels, mask = _glance_inputs([0, 6, 18])
    g = torch.Generator().manual_seed(1)
    f2, i2, glanced = recipe.glance(feats, ids, target, gids, pred, labels, mask, 2, 0, 0.5, g)
    # n = int((num_mask - num_same) * lambda) blocks, one position each for k = 2
    assert glanced.sum(1).tolist() == [0, 3, 9]
    assert not (glanced & ~mask).any()
    starts = glanced.nonzero()[:, 1]
    assert (starts % 2 == 0).all()                          # block starts (offset 0)
    assert torch.equal(f2[glanced], target[glanced]) and (f2[~glanced] == 0).all()
    assert (i2[glanced] == 7).all() and (i2[~glanced] == 0).all()
    # with offset 1 the blocks start at odd positions; lambda 0 never glances
    _, _, odd = recipe.glance(feats, ids, target, gids, pred, labels, mask, 2, 1, 0.5, g)
    assert (odd.nonzero()[:, 1] % 2 == 1).all() and odd.sum(1).tolist() == [0, 3, 9]
    _, _, none = recipe.glance(feats, ids, target, gids, pred, labels, mask, 2, 0, 0.0, g)
    assert not none.any()


def test_glance_block_size_3_reveals_block_prefixes():
    feats, ids, target, gids, pred, labels, mask = _glance_inputs([18, 18, 18], t=30, k=3)
    _, _, glanced = recipe.glance(feats, ids, target, gids, pred, labels, mask, 3, 0, 1.0,
                                  torch.Generator().manual_seed(0))
    for row in glanced.tolist():
        for b in range(0, 30, 3):
            block = row[b:b + 3]
            assert block[2] is False                        # at most k - 1 positions of a block
            assert block in ([False] * 3, [True, False, False], [True, True, False])
    assert glanced.sum() > 0
    with pytest.raises(ValueError, match="lam"):
        recipe.glance(feats, ids, target, gids, pred, labels, mask, 3, 0, 1.5)


def test_bad_arguments(base_dir):
    with pytest.raises(ValueError, match="preset"):
        recipe.train_falcon(base_dir, "huge", progress=False)
    with pytest.raises(ValueError, match="steps"):
        recipe.train_falcon(base_dir, "tiny", steps=0, progress=False)
    with pytest.raises(FileNotFoundError, match="unknown model"):
        recipe.train_falcon("no-such-model", "tiny", progress=False)
