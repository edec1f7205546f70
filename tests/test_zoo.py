"""The embedded zoo: every shipped checkpoint is complete, small enough for the wheel, described
by a card whose hashes match its files, and still scores the held-out loss its card records."""

import math
from collections import defaultdict

import pytest
import torch

import leapdec
from leapdec.models import load_checkpoint
from leapdec.train import cards, corpus, lm
from leapdec.train import tokenizer as tokenizers_
from leapdec.zoo import GGUF_MODELS, TOKENIZER_FILES, ZOO_DIR, available, gguf_file, tokenizer_dir

MAX_FILE_BYTES = 16_000_000
BASE_MODELS = ("stdlib-ar", "stdlib-mdm")
LM_FILES = ("config.json", "model.safetensors", "card.json", "CARD.md")


def test_base_models_ship():
    missing = [name for name in BASE_MODELS if name not in available()]
    assert not missing, f"zoo models missing from {ZOO_DIR}: {missing}"


def test_every_weight_file_fits_the_wheel():
    files = sorted(ZOO_DIR.rglob("*.safetensors"))
    assert files
    too_big = {str(f.relative_to(ZOO_DIR)): f.stat().st_size for f in files
               if f.stat().st_size > MAX_FILE_BYTES}
    assert not too_big, f"over {MAX_FILE_BYTES} bytes: {too_big}"


@pytest.mark.parametrize("name", available(include_gguf=False))
def test_card_is_complete_and_matches_the_files(name):
    path = ZOO_DIR / name
    for fname in LM_FILES:
        assert (path / fname).is_file(), f"{name}: no {fname}"
    assert cards.verify_card(path) == []
    card = cards.load_card(path)
    assert card["name"] == name
    for fname in ("config.json", "model.safetensors"):
        assert fname in card["files"], f"{name}: card does not list {fname}"
    # the tokenizer is stored here (and listed) or shared with the zoo model named by tokenizer_from
    tok_dir = tokenizer_dir(path)
    if "tokenizer_from" in card:
        assert tok_dir == ZOO_DIR / card["tokenizer_from"] and not (path / "tokenizer.json").exists()
    else:
        assert tok_dir == path and "tokenizer.json" in card["files"], f"{name}: card does not list tokenizer.json"
    assert card["command"].startswith("python -m leapdec.train")
    tr = card["training"]
    assert tr["steps"] > 0 and tr["tokens_seen"] > 0 and tr["wall_s"] >= tr["train_s"] > 0
    assert card["machine"]["cpu"] and card["machine"]["torch"]
    losses = [v for k, v in card["eval"].items() if "loss" in k and isinstance(v, (int, float))]
    assert losses and all(math.isfinite(v) for v in losses), f"{name}: card records no held-out loss"
    tok = tokenizers_.load_tokenizer(path)
    assert card["model"]["tokenizer_sha256"] == tokenizers_.tokenizer_hash(tok)


def test_identical_files_are_stored_once():
    """The zoo ships each distinct file once: models sharing a tokenizer point to it
    (``tokenizer_from`` in their card) instead of carrying copies."""
    by_hash = defaultdict(list)
    for f in sorted(ZOO_DIR.rglob("*")):
        if f.is_file() and f.suffix in (".json", ".safetensors") and f.name not in ("card.json", "config.json"):
            by_hash[cards.file_sha256(f)].append(str(f.relative_to(ZOO_DIR)))
    copies = [names for names in by_hash.values() if len(names) > 1]
    assert not copies, f"identical files stored more than once: {copies}"


@pytest.mark.parametrize("name", ["stdlib-mdm", "stdlib-wedlm", "stdlib-mdm/rediff"])
def test_shared_tokenizer_is_found(name):
    want = leapdec.load_tokenizer("stdlib-ar").encode("def f(x):\n    return x").ids
    assert leapdec.load_tokenizer(ZOO_DIR / name).encode("def f(x):\n    return x").ids == want
    assert tokenizers_.load_tokenizer(ZOO_DIR / name).encode("def f(x):\n    return x").ids == want
    assert all((tokenizer_dir(ZOO_DIR / name) / f).is_file() for f in TOKENIZER_FILES)
    if "/" not in name:
        assert leapdec.load_tokenizer(name).get_vocab_size() == leapdec.load_tokenizer("stdlib-ar").get_vocab_size()


def test_base_models_share_one_tokenizer():
    hashes = {cards.load_card(ZOO_DIR / n)["model"]["tokenizer_sha256"] for n in BASE_MODELS}
    assert len(hashes) == 1


def _lm_recipe_models() -> list[str]:
    """Zoo models trained by ``leapdec.train.lm`` (their cards carry a quick held-out subset)."""
    names = []
    for name in available(include_gguf=False):
        try:
            if cards.load_card(ZOO_DIR / name).get("objective") in lm.OBJECTIVES:
                names.append(name)
        except (FileNotFoundError, ValueError):
            pass    # reported by test_card_is_complete_and_matches_the_files
    return names


@pytest.mark.parametrize("name", _lm_recipe_models())
def test_heldout_loss_matches_the_card(name):
    """Re-score the card's quick held-out subset (a few held-out stdlib files): cheap, and it
    catches weights, tokenizer or config that no longer match what was trained."""
    path = ZOO_DIR / name
    card = cards.load_card(path)
    quick = card["eval"]["quick"]
    root = corpus.stdlib_root()
    files = [root / f["path"] for f in quick["files"]]
    for f, entry in zip(files, quick["files"]):
        if not f.is_file() or cards.file_sha256(f) != entry["sha256"]:
            pytest.skip(f"this Python's stdlib differs from the training machine's ({entry['path']})")
    model = load_checkpoint(path, dtype=torch.float32)
    assert model.config.causal == (card["objective"] == "ar")
    tok = tokenizers_.load_tokenizer(path)
    stream = lm.encode_files(tok, files)
    loss, _ = lm.heldout_loss(model, stream, card["objective"], quick["seq_len"], quick["windows"],
                              eps=quick["mask_eps"])
    assert loss == pytest.approx(quick["loss"], abs=2e-3)
    # and the model is far better than a uniform guess
    assert loss < math.log(model.config.vocab_size) - 2.0


def _companions() -> list[str]:
    """Companion folders (Medusa heads, drafters, filters, ...) inside a zoo model's folder."""
    return sorted(str(c.parent.relative_to(ZOO_DIR)) for c in ZOO_DIR.glob("*/*/card.json"))


@pytest.mark.parametrize("rel", _companions())
def test_companion_matches_its_base_model(rel):
    """A companion's card matches its files, and it was trained on the base model that ships
    beside it (a retrained base makes heads and drafters stale)."""
    path = ZOO_DIR / rel
    assert cards.verify_card(path) == []
    base_sha = cards.load_card(path).get("model", {}).get("base_model_sha256")
    if base_sha is not None and path.parent.name in GGUF_MODELS:      # the base is the GGUF file
        if path.parent.name not in available():
            pytest.skip(f"{path.parent.name}'s package is not installed")
        assert base_sha == cards.file_sha256(gguf_file(path.parent.name)), (
            f"{rel} was trained on another version of {path.parent.name}: retrain it")
    elif base_sha is not None:
        assert base_sha == cards.file_sha256(path.parent / "model.safetensors"), (
            f"{rel} was trained on another version of {path.parent.name}: retrain it")
