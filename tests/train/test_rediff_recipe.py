"""The ReDiff recipe end to end on the tiny preset: both stages train, the refined checkpoint
is a full Hugging Face folder beside the base model with a matching card, and
``generate(method="rediff")`` decodes with it."""

import pytest
import torch

from leapdec.decoding import generate
from leapdec.models import load_checkpoint, save_checkpoint
from leapdec.models.testing import tiny_model
from leapdec.train import cards
from leapdec.train import tokenizer as tokenizers_
from leapdec.train.__main__ import main as train_main
from leapdec.train.rediff import PRESETS, stage1_batch


@pytest.fixture(scope="module")
def tiny_mdm(tmp_path_factory):
    path = tmp_path_factory.mktemp("rediff") / "tiny-mdm"
    tok = tokenizers_.train_tokenizer(**tokenizers_.PRESETS["tiny"])
    save_checkpoint(tiny_model(vocab_size=tok.get_vocab_size(), causal=False, mask_token_id=1,
                               eos_token_id=0), path)
    tokenizers_.save_tokenizer(tok, path)
    return path


def test_recipe_refines_and_ships_a_checkpoint(tiny_mdm):
    assert train_main(["rediff", "--model", str(tiny_mdm), "--preset", "tiny", "--expert-model", "none",
                       "--no-progress"]) == 0
    out = tiny_mdm / "rediff"
    assert cards.verify_card(out) == []
    card = cards.load_card(out)
    p = PRESETS["tiny"]
    assert card["method"] == "rediff" and card["recipe"]["expert"] == "mdm"
    assert card["training"]["stage1_steps"] == p.stage1_steps and card["training"]["stage2_steps"] == p.stage2_steps
    assert card["corpus"]["draft_prompts"] == p.draft_prompts
    ev = card["eval"]
    assert ev["baseline_many_steps"]["exact_match"] == 1.0 and ev["rediff_few_steps"]["model_calls"] > 0
    assert ev["heldout_loss"] > 0 and ev["base_heldout_loss"] > 0
    base, refined = load_checkpoint(tiny_mdm), load_checkpoint(out)
    assert refined.config.mask_token_id == 1 and not refined.config.causal
    assert any(not torch.equal(a, b) for a, b in zip(base.state_dict().values(), refined.state_dict().values()))
    res = generate(base, [[0, 5, 6, 7]], method="rediff", max_new_tokens=16, block_length=8, steps=4)
    own = generate(refined, [[0, 5, 6, 7]], method="llada", max_new_tokens=16, block_length=8, steps=4)
    assert res.stats["revise"] and len(res.tokens[0]) <= 16 and own.stats["model_calls"] == 4


def test_stage1_corrupts_only_visible_answer_tokens():
    g = torch.Generator().manual_seed(0)
    rows = [([0, 5, 6], list(range(10, 42))), ([0, 7], list(range(50, 82)))]
    inputs, targets, attention, answer, masked, corrupted, t = stage1_batch(rows, 0, 500, 3, 0.3, 1e-3, g)
    assert torch.equal(targets[0, :35], torch.tensor([0, 5, 6] + list(range(10, 42))))
    assert not bool((corrupted & (masked | ~answer)).any())
    assert bool(corrupted.any()) and bool((inputs[corrupted] != targets[corrupted]).all())
    assert torch.equal(inputs[~corrupted], targets[~corrupted])
    assert bool(attention[1, :34].all()) and not bool(attention[1, 34:].any())
