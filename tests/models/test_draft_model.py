"""DraftModel: the sd / pearl draft model sharing its target's embedding and LM head, optionally on
a reduced vocabulary; saved without the shared weights, found as the target's ``drafter/``
companion; greedy sd / pearl with it equal greedy AR."""

import pytest
import torch

from leapdec.decoding import generate
from leapdec.models import load_checkpoint
from leapdec.models.draft_model import DraftModel
from leapdec.models.loading import save_checkpoint
from leapdec.models.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [[5, 6, 7, 8, 9], [3, 4], list(range(10, 31))]


def test_shares_the_target_weights_and_restricts_the_vocabulary():
    target = tiny_model("llama", seed=3)
    ids = torch.tensor([7, 3, 11, 40, 2])
    draft = DraftModel.from_base(target, num_layers=1, vocab_ids=ids)
    assert draft.embed_tokens is target.embed_tokens
    assert draft.lm_head.weight is target.lm_head.weight
    torch.testing.assert_close(draft.layers[0].state_dict()["mlp.down_proj.weight"],
                               target.layers[0].state_dict()["mlp.down_proj.weight"])
    logits = draft.logits(torch.tensor([[5, 6, 7]]))[0]
    outside = torch.ones(target.config.vocab_size, dtype=torch.bool)
    outside[ids] = False
    assert torch.isinf(logits[:, outside]).all() and torch.isfinite(logits[:, ids]).all()
    # the subset logits are the target head's rows
    h = draft.hidden(torch.tensor([[5, 6, 7]]))[0]
    torch.testing.assert_close(logits[:, ids], h @ target.lm_head.weight[ids].T)
    own = {id(p) for p in draft.own_parameters()}
    assert id(target.embed_tokens.weight) not in own and len(own) == len(list(draft.layers.parameters())) + 1
    with pytest.raises(ValueError, match="num_layers"):
        DraftModel.from_base(target, num_layers=0)
    with pytest.raises(ValueError, match="vocab_ids"):
        DraftModel.from_base(target, 1, vocab_ids=[1, 1])


def test_saved_as_the_targets_companion_and_decodes_like_ar(tmp_path):
    target = tiny_model("llama", seed=3)
    save_checkpoint(target, tmp_path / "target")
    target = load_checkpoint(tmp_path / "target")
    draft = DraftModel.from_base(target, num_layers=1, vocab_ids=list(range(0, target.config.vocab_size, 2)))
    with torch.no_grad():
        draft.layers[0].mlp.down_proj.weight.mul_(0.5)                  # not just the target's layer
    folder = draft.save(tmp_path / "target" / "drafter", {"base": "tiny"})
    files = {p.name for p in folder.iterdir()}
    assert files == {"config.json", "model.safetensors"}
    back = DraftModel.load(folder, target)
    x = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(back.logits(x), draft.logits(x))
    ar = generate(target, PROMPTS, method="ar", max_new_tokens=24, stop_tokens=[])
    for method in ("sd", "pearl"):
        out = generate(target, PROMPTS, method=method, max_new_tokens=24, stop_tokens=[], gamma=3)
        assert out.tokens == ar.tokens, method                           # found as drafter/ companion
        assert generate(target, PROMPTS, method=method, drafter=folder, max_new_tokens=24,
                        stop_tokens=[]).tokens == ar.tokens


def test_bad_companion_folders(tmp_path):
    target = tiny_model("llama", seed=3)
    with pytest.raises(FileNotFoundError, match="drafter"):
        DraftModel.load(tmp_path, target)
    save_checkpoint(target, tmp_path / "full")
    with pytest.raises(ValueError, match="leapdec.draft"):
        DraftModel.load(tmp_path / "full", target)
    other = tiny_model("llama", seed=3, vocab_size=50)
    with pytest.raises(ValueError, match="vocabulary"):
        DraftModel.from_base(target, 1).__class__(other.config, target)
