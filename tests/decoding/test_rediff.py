"""Method "rediff": without revision it is LLaDA on the refined weights; with revision it equals a
plain refining loop written here (the model's plain forward and torch ops); the refined weights
are found beside the base checkpoint."""

import json

import pytest
import torch
from test_llada import EOS, MASK, PROMPTS, mdm

from leapdec.decoding import generate
from leapdec.decoding.llada import transfer_counts
from leapdec.models import load_checkpoint, save_checkpoint
from leapdec.models.testing import tiny_model
from leapdec.zoo import ZOO_DIR


def reference_rediff(model, prompt, gen_length, block_length, steps, revise_start=1):
    """LLaDA greedy steps; from step ``revise_start`` of each block, every block position that
    was unmasked before the step (EOS too) and now has a different, more probable prediction
    takes that prediction. Returns the answer before its first EOS and the revision count."""
    x = torch.tensor(prompt + [MASK] * gen_length)
    masked = torch.tensor([False] * len(prompt) + [True] * gen_length)
    P, blocks, revisions = len(prompt), gen_length // block_length, 0
    for b in range(blocks):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        for step, k in enumerate(transfer_counts(int(masked[lo:hi].sum()), steps // blocks)):
            if not masked[lo:hi].any():
                break
            with torch.no_grad():
                logits = model(x[None])[0].float()
            conf, pred = logits.softmax(-1).max(-1)
            was_masked = masked.clone()
            cand = sorted((i for i in range(lo, hi) if masked[i]), key=lambda i: (-float(conf[i]), i))
            for i in cand[:max(1, k)]:
                x[i], masked[i] = pred[i], False
            if step >= revise_start:
                for i in range(lo, hi):
                    tok = int(x[i])
                    if (not was_masked[i] and int(pred[i]) != tok
                            and float(logits[i, pred[i]]) > float(logits[i, tok])):
                        x[i] = pred[i]
                        revisions += 1
    answer = x[P:].tolist()
    return (answer[:answer.index(EOS)] if EOS in answer else answer), revisions


def test_without_revision_it_is_llada_on_the_refined_weights():
    base, refined = mdm(seed=0), mdm(seed=6)
    kw = dict(max_new_tokens=32, block_length=16, steps=8, stop_tokens=[])
    out = generate(base, PROMPTS, method="rediff", refined=refined, revise=False, **kw)
    assert out.tokens == generate(refined, PROMPTS, method="llada", **kw).tokens
    assert out.stats["revisions"] == 0
    late = generate(base, PROMPTS, method="rediff", refined=refined, revise_start=99, **kw)
    assert late.tokens == out.tokens


def test_revision_equals_the_plain_refining_loop():
    model, revise_start = mdm(seed=7), 2
    refs = [reference_rediff(model, p, 32, 16, 8, revise_start) for p in PROMPTS]
    out = generate(model, PROMPTS, method="rediff", refined=model, max_new_tokens=32, block_length=16,
                   steps=8, revise_start=revise_start, stop_tokens=[EOS])
    assert out.tokens == [r[0] for r in refs]
    assert out.stats["revisions"] == sum(r[1] for r in refs) > 0
    assert out.stats["model_calls"] == 8
    part = generate(model, PROMPTS, method="rediff", refined=model, max_new_tokens=32, block_length=16,
                    steps=8, revise_start=revise_start, revise_topk=0.3, stop_tokens=[EOS])
    assert 0 < part.stats["revisions"] <= out.stats["revisions"]


def test_refined_weights_found_beside_the_checkpoint(tmp_path):
    base_dir, refined = tmp_path / "base", mdm(seed=8)
    save_checkpoint(mdm(seed=0), base_dir)
    base = load_checkpoint(base_dir)
    with pytest.raises(FileNotFoundError, match="rediff"):
        generate(base, PROMPTS, method="rediff", max_new_tokens=16)
    save_checkpoint(refined, base_dir / "rediff")
    (base_dir / "rediff" / "card.json").write_text(json.dumps({"method": "rediff"}))
    kw = dict(max_new_tokens=16, block_length=16, steps=4, stop_tokens=[])
    expect = generate(refined, PROMPTS, method="rediff", refined=refined, **kw).tokens
    assert generate(base, PROMPTS, method="rediff", **kw).tokens == expect
    assert generate(base, PROMPTS, method="rediff", refined=base_dir / "rediff", **kw).tokens == expect
    # a model loaded from the refined folder decodes with itself
    assert generate(load_checkpoint(base_dir / "rediff"), PROMPTS, method="rediff", **kw).tokens == expect
    other = tiny_model(vocab_size=64, causal=False, mask_token_id=MASK, eos_token_id=EOS)
    with pytest.raises(ValueError, match="vocabulary"):
        generate(base, PROMPTS, method="rediff", refined=other, **kw)


def test_shipped_refined_checkpoint_if_present():
    path = ZOO_DIR / "stdlib-mdm" / "rediff"
    if not (path / "model.safetensors").is_file():
        pytest.skip("no shipped ReDiff checkpoint for stdlib-mdm")
    from leapdec.train import cards

    assert cards.verify_card(path) == []
    card = cards.load_card(path)
    assert card["method"] == "rediff"
    assert card["model"]["base_model_sha256"] == cards.file_sha256(path.parent / "model.safetensors")
    assert card["training"]["train_s"] <= 300 + card["training"]["draft_s"]
    refined = load_checkpoint(path)
    base = load_checkpoint(path.parent)
    assert refined.config.mask_token_id == base.config.mask_token_id and not refined.config.causal
    for (name, a), (_, b) in zip(refined.state_dict().items(), base.state_dict().items()):
        assert a.shape == b.shape, name
