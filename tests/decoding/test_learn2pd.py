"""Method "learn2pd": the filter's commits are the union with LLaDA's quota (a filter that never
accepts is LLaDA, one that accepts above a confidence is Fast-dLLM's threshold rule); End-of-Text
Prediction saves calls without changing tokens; the filter is found beside the checkpoint."""

import math

import pytest
import torch
from test_llada import PROMPTS, PositionModel, mdm

from leapdec.decoding import generate
from leapdec.decoding.learn2pd import FILTER_FILE, load_filter, make_filter, save_filter
from leapdec.models import load_checkpoint, save_checkpoint
from leapdec.zoo import ZOO_DIR


def constant_filter(logit: float, size: int = 32):
    net = make_filter(size, 32)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net[2].bias.fill_(logit)
    return net


def threshold_filter(c: float, accept: float = 0.96, size: int = 32):
    """Accepts exactly the positions whose confidence exceeds ``c`` (per position, no mixing)."""
    net = make_filter(size, size)
    cut = math.log(accept / (1 - accept))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(size) * 1000.0)
        net[0].bias.fill_(-1000.0 * c)
        net[2].weight.copy_(torch.eye(size))
        net[2].bias.fill_(cut - 1e-4)
    return net


def sharp_mdm(seed):
    model = mdm(seed=seed)
    with torch.no_grad():
        model.norm.weight.mul_(3)            # confidences around 0.3
    return model


def test_a_filter_that_never_accepts_is_llada():
    model = mdm(seed=1)
    kw = dict(max_new_tokens=32, block_length=16, stop_tokens=[])
    out = generate(model, PROMPTS, method="learn2pd", filter=constant_filter(-50.0), **kw)
    ref = generate(model, PROMPTS, method="llada", **kw)
    assert out.tokens == ref.tokens and out.stats["model_calls"] == ref.stats["model_calls"] == 32


def test_a_filter_that_always_accepts_commits_each_block_at_once():
    model = mdm(seed=1)
    kw = dict(max_new_tokens=32, block_length=16, stop_tokens=[])
    out = generate(model, PROMPTS, method="learn2pd", filter=constant_filter(50.0), **kw)
    ref = generate(model, PROMPTS, method="llada", policy="threshold", threshold=0.0, **kw)
    assert out.tokens == ref.tokens and out.stats["model_calls"] == 2


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_confidence_filter_union_quota_is_the_threshold_rule(cache):
    """quota (1 per step, most confident) UNION {conf > c} == Fast-dLLM's threshold rule at c;
    the block (16) is shorter than the filter's input (32): the op pads it with 1.0."""
    model = sharp_mdm(seed=5)
    kw = dict(max_new_tokens=32, block_length=16, stop_tokens=[], cache=cache)
    out = generate(model, PROMPTS, method="learn2pd", filter=threshold_filter(0.25), **kw)
    ref = generate(model, PROMPTS, method="llada", policy="threshold", threshold=0.25, **kw)
    assert out.tokens == ref.tokens
    assert out.stats["model_calls"] == ref.stats["model_calls"] < 32


def test_eotp_saves_calls_and_keeps_the_tokens():
    model = PositionModel(prompt_len=5, eos_from=37, length=160)
    prompts = [[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]]
    kw = dict(max_new_tokens=128, filter=threshold_filter(0.5), early_exit=False)
    plain = generate(model, prompts, method="learn2pd", **kw)
    eotp = generate(model, prompts, method="learn2pd", eotp=True, **kw)
    assert eotp.tokens == plain.tokens and all(len(t) == 37 for t in plain.tokens)
    assert eotp.stats["model_calls"] < plain.stats["model_calls"]
    assert eotp.stats["eot_rows"] == 2 and eotp.stats["decoded_positions"] < 2 * 128


def test_filter_found_beside_the_checkpoint(tmp_path):
    model = mdm(seed=3)
    save_checkpoint(model, tmp_path)
    loaded = load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="learn2pd"):
        generate(loaded, PROMPTS, method="learn2pd", max_new_tokens=16)
    (tmp_path / "learn2pd").mkdir()
    save_filter(threshold_filter(0.25), tmp_path / "learn2pd" / FILTER_FILE, {"accept_threshold": 0.96})
    weights, meta = load_filter(loaded)
    assert [tuple(w.shape) for w in weights] == [(32, 32), (32,), (32, 32), (32,)]
    assert meta["accept_threshold"] == "0.96"
    kw = dict(max_new_tokens=16, block_length=16, stop_tokens=[])
    found = generate(loaded, PROMPTS, method="learn2pd", **kw)
    given = generate(loaded, PROMPTS, method="learn2pd", filter=tmp_path / "learn2pd", **kw)
    assert found.tokens == given.tokens and found.stats["accept_threshold"] == 0.96
    with pytest.raises(ValueError, match="block_length"):
        generate(loaded, PROMPTS, method="learn2pd", max_new_tokens=64, block_length=64)
    with pytest.raises(FileNotFoundError):
        generate(loaded, PROMPTS, method="learn2pd", max_new_tokens=16, filter=tmp_path / "nope")


def test_shipped_filter_if_present():
    path = ZOO_DIR / "stdlib-mdm" / "learn2pd"
    if not (path / FILTER_FILE).is_file():
        pytest.skip("no shipped Learn2PD filter for stdlib-mdm")
    from leapdec.train import cards

    assert cards.verify_card(path) == []
    card = cards.load_card(path)
    assert card["model"]["base_model_sha256"] == cards.file_sha256(path.parent / "model.safetensors")
    weights, _ = load_filter(filter=path)
    assert 1500 <= sum(w.numel() for w in weights) <= 2500
    assert card["eval"]["heldout"]["precision"] is None or card["eval"]["heldout"]["precision"] > 0.8


def test_default_block_runs_for_any_length():
    """max_new_tokens that is not a multiple of 32 runs with the defaults (the canvas is rounded up
    to whole blocks of the filter's size; the output stops at max_new_tokens)."""
    import leapdec

    model = leapdec.load_model("stdlib-mdm")
    out = generate(model, [[5, 6, 7]], method="learn2pd", max_new_tokens=48, stop_tokens=[])
    assert len(out.tokens[0]) == 48
    assert out.stats["block_length"] == 32 and out.stats["gen_length"] == 64


def test_a_garbage_filter_file_is_an_error_naming_it(tmp_path):
    import leapdec

    bad = tmp_path / "filter.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    model = leapdec.load_model("stdlib-mdm")
    with pytest.raises(ValueError, match="filter.safetensors"):
        generate(model, [[5, 6]], method="learn2pd", filter=str(bad), max_new_tokens=8)
