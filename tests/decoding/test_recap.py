"""Method "recap": a local step's logits equal a full step's when the context is unchanged; the
all-full schedule is llada; on a one-layer model (whose cached K/V never go stale) every schedule
is llada (both on CPU, and on CUDA where present); the schedule and stats; seeds; ragged
batches; bad options; the text part of benchmarks/bench_recap.py."""

import pytest
import torch

from leapdec.decoding import generate, stream_generate
from leapdec.decoding.llada import DiffusionSettings
from leapdec.decoding.recap import RecapDecoder, is_full_step
from leapdec.evaluate import token_agreement
from leapdec.models.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

MASK, EOS = 1, 0
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], list(range(10, 31))]     # ragged, the last spans pages
KW = dict(max_new_tokens=32, block_length=16, page_size=4, stop_tokens=[])


def mdm(seed=0, **overrides):
    return tiny_model(seed=seed, causal=False, mask_token_id=MASK, eos_token_id=EOS, **overrides)


class _ProbeDecoder(RecapDecoder):
    """Runs one full step of the first block, then local steps on the same tokens, and keeps the
    logits of each (instead of decoding)."""

    def _decode(self):
        rows, bl = list(range(len(self.prompts))), self.s.block_length
        # some answer positions committed before the group (they are context for it)
        self.answer[:, 3] = 7
        self.masked[:, 3] = False
        self.full = self.window_logits(rows, 0, bl, bl, True, 0)
        self.local = [self.window_logits(rows, 0, bl, bl, False, 1) for _ in range(2)]


def test_a_local_step_equals_the_full_step_when_the_context_is_unchanged(device):
    model = mdm(seed=3, device=device)
    settings = DiffusionSettings(model, 32, block_length=16, page_size=4)
    probe = _ProbeDecoder(model, PROMPTS, settings, set(), pre_full=0, local_steps=3)
    probe.run()
    assert probe.full_steps == 1 and probe.local_count == 2
    group = probe.masked[:, :16]                          # on the model's device
    assert group.sum() == 3 * 15                          # every masked block position, not position 3
    for local in probe.local:                             # the second reads the first's rewrites
        torch.testing.assert_close(local[group], probe.full[group], atol=2e-5, rtol=1e-5)
        assert not local[~group].any()                    # positions outside the group are not evaluated
    # 15 query rows per row and local step, the whole sequence at the full step
    assert probe.positions_evaluated == sum(len(p) + 32 for p in PROMPTS) + 2 * 3 * 15


@pytest.mark.parametrize("opts", [dict(), dict(policy="threshold", threshold=0.3),
                                  dict(temperature=1.0, seed=[4, 5, 6]), dict(steps=8, block_length=8)])
def test_the_all_full_schedule_is_llada(opts):
    model = mdm(seed=1)
    kw = {**KW, **opts}
    ref = generate(model, PROMPTS, method="llada", **kw)
    out = generate(model, PROMPTS, method="recap", local_steps=0, pre_full=2, **kw)
    assert out.tokens == ref.tokens
    s = out.stats
    assert s["model_calls"] == ref.stats["model_calls"] == s["full_steps"] and s["local_steps"] == 0


@pytest.mark.parametrize("schedule", [dict(), dict(pre_full=0, local_steps=7), dict(pre_full=8, local_steps=1)])
def test_a_one_layer_model_decodes_as_llada_under_any_schedule(schedule, device):
    """One layer: a position's K/V depend on its own token only, so the cache holds exact K/V
    for everything outside the group and the local steps are exact; this checks the group
    queries, their slots across pages, the commits reaching the cache and the window scatter."""
    model = mdm(seed=2, num_hidden_layers=1, device=device)
    ref = generate(model, PROMPTS, method="llada", **KW)
    out = generate(model, PROMPTS, method="recap", **schedule, **KW)
    assert out.tokens == ref.tokens
    assert out.stats["local_steps"] > 0


def test_schedule_and_stats():
    assert [is_full_step(t, 4, 3) for t in range(12)] == [True] * 5 + [False] * 3 + [True] + [False] * 3
    assert all(is_full_step(t, 0, 0) for t in range(5))
    model = mdm(seed=1)
    out = generate(model, PROMPTS, method="recap", pre_full=4, local_steps=3, **KW)   # 16 steps a block
    s = out.stats
    # per block: full at steps 0-4, 8, 12 (7), local at the other 9; two blocks
    assert (s["full_steps"], s["local_steps"], s["model_calls"]) == (14, 18, 32)
    # one token a step: the groups of the full steps 4, 8, 12 hold 12, 8, 4 masked positions,
    # each queried by 3 local steps, in 2 blocks and 3 rows
    assert s["positions_evaluated"] == 14 * sum(len(p) + 32 for p in PROMPTS) + 2 * 3 * 3 * (12 + 8 + 4)
    assert s["pre_full"] == 4 and s["local_steps_per_full"] == 3 and s["cache"] == "recap"
    assert generate(model, PROMPTS, method="recap", **KW).stats["pre_full"] == 4     # 16 // 4
    # stale context features: ReCAP's approximation on a random 2-layer model (measured 71 %)
    ref = generate(model, PROMPTS, method="llada", **KW)
    assert token_agreement(out.tokens, ref.tokens) >= 0.5


def test_sampling_is_deterministic_for_a_seed():
    model = mdm(seed=1)
    kw = dict(KW, temperature=1.0)
    a = generate(model, PROMPTS, method="recap", seed=3, **kw).tokens
    assert generate(model, PROMPTS, method="recap", seed=3, **kw).tokens == a
    assert generate(model, PROMPTS, method="recap", seed=4, **kw).tokens != a


def test_rows_decode_the_same_in_any_batch():
    model = mdm(seed=1)
    alone = [generate(model, [p], method="recap", **KW).tokens[0] for p in PROMPTS]
    assert generate(model, PROMPTS, method="recap", **KW).tokens == alone
    shuffled = generate(model, [PROMPTS[2], [7] * 40, PROMPTS[0], PROMPTS[1]], method="recap", **KW).tokens
    assert [shuffled[2], shuffled[3], shuffled[0]] == alone
    kw = dict(KW, temperature=0.8, policy="threshold", threshold=0.5)
    alone = generate(model, [PROMPTS[1]], method="recap", seed=[11], **kw).tokens[0]
    assert generate(model, PROMPTS, method="recap", seed=[5, 11, 7], **kw).tokens[1] == alone


def test_stream_generate_yields_the_decoded_tokens():
    model = mdm(seed=1)
    gen = stream_generate(model, PROMPTS, method="recap", **KW)
    pieces = [[] for _ in PROMPTS]
    while True:
        try:
            for row, new in zip(pieces, next(gen)):
                row += new
        except StopIteration as stop:
            out = stop.value
            break
    assert pieces == out.tokens == generate(model, PROMPTS, method="recap", **KW).tokens


@pytest.mark.parametrize("option, value, match", [
    ("pre_full", -1, "pre_full must be an int >= 0"),
    ("local_steps", 1.5, "local_steps must be an int >= 0"),
    ("local_steps", True, "local_steps must be an int >= 0"),
    ("steps", 5, "steps must be a positive multiple"),
    ("block_length", 12, "block_length must be a positive int dividing"),
    ("policy", "random", "policy must be one of"),
    ("temperature", -1.0, "temperature must be a number >= 0"),
])
def test_bad_options_name_the_option(option, value, match):
    with pytest.raises(ValueError, match=match):
        generate(mdm(), PROMPTS, method="recap", **{**KW, option: value})


def test_wrong_model_or_option_is_an_error():
    with pytest.raises(TypeError, match="'cache'"):
        generate(mdm(), PROMPTS, method="recap", cache="dual", **KW)
    with pytest.raises(ValueError, match="method 'recap' decodes a bidirectional"):
        generate(tiny_model(seed=0, causal=True, mask_token_id=MASK), PROMPTS, method="recap", **KW)


def test_bench_recap_text_part(tmp_path):
    """benchmarks/bench_recap.py --text on the zoo's stdlib-mdm, shrunk: every decode is a row; the
    positions are counted at the model (ReCAP's own count is checked against it inside)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_recap.py"
    spec = importlib.util.spec_from_file_location("bench_recap", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--text", "--prompts", "2", "--gen-length", "32", "--text-steps", "32,16",
                       "--out", str(tmp_path), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "recap_text.json").read_text())["rows"]
    assert [(r["decode"], r["steps"]) for r in rows] == [
        (label, s) for s in (32, 16) for label in ("llada", "llada dual cache", "recap", "recap-paper", "recap-fast")]
    for r in rows:
        if r["method"] == "recap":
            assert r["full_steps"] + r["local_steps"] == r["model_calls"] and r["positions_vs_llada"] < 1
        elif r["decode"] == "llada":
            assert r["positions_vs_llada"] == 1 and r["agreement"] == 1 and r["identical_rows"] == 2
        assert 0 <= r["agreement"] <= 1 and r["wall_s"] > 0
    table = (tmp_path / "recap_text.md").read_text()
    assert table.count("\n| recap") == 6
    dual = [r for r in rows if r["decode"] == "llada dual cache"]
    assert all(r["positions_vs_llada"] < 1 and r["full_steps"] is None for r in dual)
