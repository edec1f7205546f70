"""The drafter recipe end to end on stdlib-ar with a tiny budget: writes a DraftModel companion
with its card; the draft model it writes decodes exactly like AR with sd and pearl."""

import pytest

from leapdec.models.draft_model import DraftModel
from leapdec.train import cards, drafter

pytestmark = pytest.mark.usefixtures("one_thread")


def test_recipe_writes_a_working_drafter(tmp_path):
    card = drafter.train_drafter("stdlib-ar", layers=1, vocab=1024, n_train=6, n_heldout=3, max_new_tokens=16,
                                 seq_len=32, batch=2, steps=3, seconds=None, out_dir=tmp_path,
                                 eval_prompts=1, progress=False)
    assert cards.verify_card(tmp_path) == []
    assert card["training"]["steps"] == 3 and card["model"]["draft_vocab"] == 1024
    assert card["eval"]["sd_identical_to_ar"] and card["eval"]["pearl_identical_to_ar"]
    assert 0.0 <= card["eval"]["top1_agreement"] <= 1.0
    from leapdec.train.distill import load_base
    base = load_base("stdlib-ar", "cpu")[0]
    draft = DraftModel.load(tmp_path, base)
    assert draft.vocab_ids.numel() == 1024 and len(draft.layers) == 1
    assert card["command"].startswith("python -m leapdec.train drafter --base stdlib-ar")
