"""The Learn2PD filter recipe end to end on the tiny preset: oracle data from a tiny masked
diffusion LM, a ~2K-parameter filter whose loss goes down, a card that matches the file, and
``generate(method="learn2pd")`` finding the filter beside the checkpoint."""

import pytest
import torch

from leapdec.decoding import generate
from leapdec.decoding.learn2pd import FILTER_FILE, load_filter
from leapdec.models import load_checkpoint, save_checkpoint
from leapdec.models.testing import tiny_model
from leapdec.train import cards
from leapdec.train import tokenizer as tokenizers_
from leapdec.train.__main__ import main as train_main
from leapdec.train.learn2pd import OracleDecoder, PRESETS
from leapdec.decoding.llada import DiffusionSettings


@pytest.fixture(scope="module")
def tiny_mdm(tmp_path_factory):
    """A random tiny masked diffusion LM with the tiny tokenizer (ids: EOS 0, mask 1)."""
    path = tmp_path_factory.mktemp("l2p") / "tiny-mdm"
    tok = tokenizers_.train_tokenizer(**tokenizers_.PRESETS["tiny"])
    save_checkpoint(tiny_model(vocab_size=tok.get_vocab_size(), causal=False, mask_token_id=1,
                               eos_token_id=0), path)
    tokenizers_.save_tokenizer(tok, path)
    return path


def test_recipe_trains_and_ships_a_filter(tiny_mdm):
    assert train_main(["learn2pd", "--model", str(tiny_mdm), "--preset", "tiny", "--no-progress"]) == 0
    out = tiny_mdm / "learn2pd"
    assert cards.verify_card(out) == []
    card = cards.load_card(out)
    p = PRESETS["tiny"]
    assert card["command"].startswith("python -m leapdec.train learn2pd --model")
    assert card["model"]["parameters"] == 2112 and card["training"]["steps"] == p.iterations
    history = card["training"]["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert card["corpus"]["records"] == card["corpus"]["train_records"] + card["corpus"]["heldout_records"] > 0
    assert card["training"]["oracle_model_calls"] <= card["training"]["reference_model_calls"]
    assert card["model"]["base_model_sha256"] == cards.file_sha256(tiny_mdm / "model.safetensors")
    weights, meta = load_filter(filter=out / FILTER_FILE)
    assert float(meta["accept_threshold"]) == 0.96
    model = load_checkpoint(tiny_mdm)
    res = generate(model, [[0, 5, 6, 7]], method="learn2pd", max_new_tokens=16, block_length=16)
    assert res.stats["policy"] == "learned" and len(res.tokens[0]) <= 16


def test_oracle_follows_the_reference(tiny_mdm):
    """The oracle commits only tokens equal to the reference, so it decodes the reference."""
    model = load_checkpoint(tiny_mdm)
    prompts = [[0, 5, 6, 7], [0, 9, 10]]
    ref = torch.randint(3, 50, (2, 16))
    settings = DiffusionSettings(model, 16, 16, 8, 16, early_exit=False)
    oracle = OracleDecoder(model, prompts, settings, set(), ref)
    oracle.run()
    assert torch.equal(oracle.answer, ref)
    assert oracle.forced > 0                  # a random reference is rarely predicted
    r, conf, correct, masked, valid = oracle.records[0]
    assert conf.shape == (32,) and bool((conf[8:] == 1.0).all()) and bool(masked[:8].all())
    assert not bool(masked[8:].any()) and bool(correct[8:].all())
    assert bool(valid[:8].all()) and not bool(valid[8:].any())
    # where the reference decode stopped early (mask ids), nothing is committed or scored
    ref[1, 12:] = 1
    oracle = OracleDecoder(model, prompts, DiffusionSettings(model, 16, 16, 8, 16), set(), ref)
    oracle.run()
    assert torch.equal(oracle.answer[1, :12], ref[1, :12]) and not bool(oracle.masked.any())
    assert any(row == 1 and bool(v[:4].all()) and not bool(v[4:].any()) for row, _, _, _, v in oracle.records)
