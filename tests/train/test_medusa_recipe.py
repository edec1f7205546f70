"""The Medusa-heads recipe end to end on the tiny preset: self-distilled data, the held-out loss
goes down, the heads land in ``<base>/medusa`` with a config and a card that match the files, and
``generate(method="medusa")`` finds them and decodes exactly like greedy AR."""

import json

import pytest
import torch

from leapdec.decoding import generate
from leapdec.models import load_checkpoint, save_checkpoint
from leapdec.models.heads import CONFIG_FILE, WEIGHTS_FILE, MedusaHeads
from leapdec.models.testing import tiny_model
from leapdec.train import cards
from leapdec.train import medusa as recipe
from leapdec.train import tokenizer as tokenizers_
from leapdec.train.__main__ import main as train_main


pytestmark = pytest.mark.usefixtures("one_thread")    # tiny matmuls: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random causal LM with the tiny corpus tokenizer, as a checkpoint folder."""
    path = tmp_path_factory.mktemp("medusa_base") / "tiny-ar"
    tok = tokenizers_.train_tokenizer(**tokenizers_.PRESETS["tiny"])
    ids = tokenizers_.special_token_ids(tok)
    model = tiny_model("llama", seed=0, vocab_size=tok.get_vocab_size(), eos_token_id=ids["eos"],
                       bos_token_id=ids["eos"])
    save_checkpoint(model, path)
    tokenizers_.save_tokenizer(tok, path)
    return path


@pytest.fixture(scope="module")
def trained(base_dir):
    return recipe.train_medusa(base_dir, "tiny", device="cpu", seed=0, progress=False)


def test_loss_decreases_and_card_matches(base_dir, trained):
    card, out = trained, base_dir / "medusa"
    hist = card["training"]["history"]
    p = recipe.PRESETS["tiny"]
    assert hist[0]["step"] == 0 and hist[-1]["step"] == card["training"]["steps"] == p.steps
    assert hist[-1]["heldout_loss"] < hist[0]["heldout_loss"]
    assert card["eval"]["heldout_loss"] == hist[-1]["heldout_loss"]
    assert cards.verify_card(out) == []
    assert json.loads((out / "card.json").read_text()) == card
    assert "## Reproduce" in (out / "CARD.md").read_text()
    assert card["command"] == f"python -m leapdec.train medusa --base {base_dir} --preset tiny --device cpu --seed 0"
    assert card["training"]["tokens_seen"] == p.steps * p.batch_size
    assert card["corpus"]["train_positions"] > 0 and card["corpus"]["heldout_positions"] > 0
    assert set(card["files"]) == {WEIGHTS_FILE, CONFIG_FILE}
    dec = card["eval"]["decoding"]
    for key, batch in (("batch1", 1), (f"batch{p.eval_prompts}", p.eval_prompts)):
        run = dec[key]
        assert run["identical_to_ar"] and run["tokens_per_call"] >= 1.0
        assert run["prompts"] == p.eval_prompts and run["batch_size"] == batch
        assert run["new_tokens"] > 0 and run["medusa_tokens_per_s"] > 0


def test_config_records_shape_accuracy_and_tree(base_dir, trained):
    cfg = json.loads((base_dir / "medusa" / CONFIG_FILE).read_text())
    p = recipe.PRESETS["tiny"]
    assert (cfg["num_heads"], cfg["num_layers"], cfg["vocab_size"]) == (p.num_heads, p.num_layers, 512)
    acc = torch.tensor(cfg["head_accuracy"])
    assert acc.shape == (p.num_heads, recipe.TOPK_MEASURED) and bool(((acc >= 0) & (acc <= 1)).all())
    assert "tree" not in cfg                      # trees are sized per step from tree_paths
    paths = [(tuple(q), v) for q, v in cfg["tree_paths"]]
    assert paths and all(0 < v <= 1 for _, v in paths)
    assert [v for _, v in paths] == sorted((v for _, v in paths), reverse=True)
    seen = set()
    for q, _ in paths:                            # every prefix of the list is a tree
        assert len(q) <= p.num_heads and (len(q) == 1 or q[:-1] in seen)
        seen.add(q)
    # a one-step path's frequency is that head-0 rank's accuracy
    for q, v in paths:
        if len(q) == 1:
            assert v == pytest.approx(acc[0, q[0]].item(), abs=1e-3)
    expected = cfg["expected_accept_length"]
    assert 1.0 <= expected["1"] <= expected["4"] <= expected["64"] <= 1 + p.num_heads
    assert cfg["base_model_sha256"] == cards.file_sha256(base_dir / "model.safetensors")
    heads = MedusaHeads.load(base_dir / "medusa")
    assert heads.meta["head_accuracy"] == cfg["head_accuracy"]


def test_companion_is_found_and_lossless(base_dir, trained):
    model = load_checkpoint(base_dir)
    prompts = [[0, 40, 41, 42], [0, 7], list(range(60, 90))]
    ar = generate(model, prompts, method="ar", max_new_tokens=20, stop_tokens=[])
    out = generate(model, prompts, method="medusa", max_new_tokens=20, stop_tokens=[])
    assert out.tokens == ar.tokens
    assert out.stats["tree"] == "auto" and out.stats["mean_tree_nodes"] >= 1


def test_self_distill_targets_are_the_greedy_continuation(base_dir):
    model = load_checkpoint(base_dir)
    prompt = [0, 50, 51, 52, 53]
    hidden, targets = recipe.self_distill(model, [prompt], 6, 3, gen_batch=4)
    cont = generate(model, [prompt], method="ar", max_new_tokens=6).tokens[0]
    seq = prompt + cont + ([0] if len(cont) < 6 else [])
    # positions from the last prompt token while head 0 has a target (t + 2 < len)
    assert hidden.shape == (len(seq) - len(prompt) - 1, model.config.hidden_size)
    for row, t in enumerate(range(len(prompt) - 1, len(seq) - 2)):
        for i in range(3):
            want = seq[t + i + 2] if t + i + 2 < len(seq) else recipe.IGNORE
            assert int(targets[row, i]) == want
    with torch.no_grad():
        expect = model.hidden(torch.tensor([seq]))[0, len(prompt) - 1:len(seq) - 2]
    torch.testing.assert_close(hidden, expect, atol=1e-5, rtol=1e-5)


def test_cli_runs_the_recipe(base_dir, tmp_path):
    out = tmp_path / "heads"
    assert train_main(["medusa", "--base", str(base_dir), "--preset", "tiny", "--out", str(out),
                       "--steps", "2", "--device", "cpu", "--no-progress"]) == 0
    card = cards.load_card(out)
    assert card["training"]["steps"] == 2 and "--steps 2" in card["command"]
    assert cards.verify_card(out) == []


def test_bad_arguments_name_the_argument(base_dir, tmp_path):
    with pytest.raises(ValueError, match="preset"):
        recipe.train_medusa(base_dir, "huge", tmp_path / "x")
    with pytest.raises(ValueError, match="steps"):
        recipe.train_medusa(base_dir, "tiny", tmp_path / "x", steps=0)
    with pytest.raises(ValueError, match="seconds"):
        recipe.train_medusa(base_dir, "tiny", tmp_path / "x", seconds=0)
    with pytest.raises(FileNotFoundError):
        recipe.train_medusa(tmp_path / "missing", "tiny", tmp_path / "x")


def test_heads_for_another_checkpoint_warn(base_dir, trained, tmp_path):
    other = tmp_path / "other-heads"
    other.mkdir()
    cfg = json.loads((base_dir / "medusa" / CONFIG_FILE).read_text())
    (other / CONFIG_FILE).write_text(json.dumps(dict(cfg, base_model_sha256="0" * 64)))
    (other / WEIGHTS_FILE).write_bytes((base_dir / "medusa" / WEIGHTS_FILE).read_bytes())
    model = load_checkpoint(base_dir)
    with pytest.warns(UserWarning, match="another checkpoint"):
        out = generate(model, [[0, 5, 6]], method="medusa", heads=other, max_new_tokens=5, stop_tokens=[])
    assert out.tokens == generate(model, [[0, 5, 6]], method="ar", max_new_tokens=5, stop_tokens=[]).tokens
