"""leapdec.images: the digits data, the MaskGIT generator's cached (ReCAP) path, the samplers
and their errors, and the ``maskgit`` recipe's tiny preset."""

import math

import pytest
import torch

pytest.importorskip("sklearn")

from leapdec.images import data, image_config, recap_groups, sample, unmask_counts  # noqa: E402
from leapdec.images import model as model_  # noqa: E402
from leapdec.images.sampling import _Runner, sampling_temperatures  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = model_.MaskGIT(image_config(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96))
    with torch.no_grad():      # a random model with peaked, position-dependent logits
        m.pos_embed.normal_(0, 0.5)
    return m.eval()


def test_digits_split_and_tokens():
    train, held = data.split_digits()
    assert len(train) + len(held) == 1797
    assert abs(len(held) / 1797 - data.HELDOUT_FRACTION) < 0.01
    assert set(held.labels.tolist()) == set(range(10))
    tr2, he2 = data.split_digits()
    assert torch.equal(held.labels, he2.labels) and torch.equal(held.images, he2.images)
    tok = data.encode(train.images[:50])
    assert tok.shape == (50, 256) and tok.min() >= 0 and tok.max() <= 15
    back = data.pool_8x8(data.decode(tok))
    # the 16x16 tokens keep the digit: 2x2 averages stay close to the real 8x8 image (the
    # bilinear upsampling blurs it a little; quantisation costs at most half a level)
    assert (back - train.images[:50]).abs().mean() < 1.5
    exact = data.pool_8x8(data.upsample(train.images[:50]))
    assert (back - exact).abs().max() <= 0.5 * 16 / 15 + 1e-5


def test_unmask_schedule():
    for steps in (1, 8, 16, 32, 256):
        counts = unmask_counts(steps)
        assert len(counts) == steps and sum(counts) == 256 and min(counts) >= 1
    c = unmask_counts(16)
    assert c[0] < c[-1]                       # cosine: few positions first, many last
    p = unmask_counts(16, schedule="power")   # ReCAP's script: 1 - (t/T)^2.5 stay masked
    assert sum(p) == 256 and min(p) >= 1 and p[-1] == math.floor(256 * (1 - (15 / 16) ** 2.5))
    assert p[-1] > c[-1] and p[0] <= c[0]     # more back-loaded than the cosine
    for steps in (1, 2, 7, 256):
        p = unmask_counts(steps, schedule="power")
        assert len(p) == steps and sum(p) == 256 and min(p) >= 1
    with pytest.raises(ValueError, match="schedule"):
        unmask_counts(8, schedule="linear")
    assert sampling_temperatures(4, 0.7, None) == [0.7] * 4
    temps = sampling_temperatures(5, 0.7, 1.0)
    assert temps[0] == pytest.approx(1.0) and temps[-1] == pytest.approx(0.7)
    assert all(a > b for a, b in zip(temps, temps[1:]))
    assert sampling_temperatures(1, 0.7, 1.0) == [0.7]
    assert recap_groups(8, 2, 2) == [[0], [1], [2, 3, 4], [5, 6, 7]]
    assert recap_groups(5, 0, 0) == [[0], [1], [2], [3], [4]]


def _random_state(B, seed):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, 16, (B, 256), generator=g)
    tok[torch.rand(B, 256, generator=g) < 0.5] = data.MASK_ID
    return tok


@pytest.mark.parametrize("group_size", [1, 17, 90])
def test_local_step_equals_full_step_on_unchanged_context(model, group_size):
    """ReCAP exactness: a local step over positions of an unchanged context reproduces the full
    step's logits there (its queries read the cached K/V the full step wrote)."""
    labels = torch.tensor([0, 4, 9])
    run = _Runner(model, labels, page_size=16)
    tok = _random_state(3, 1)
    with torch.no_grad():
        full = run.full(tok)
        g = torch.Generator().manual_seed(2)
        group = torch.stack([torch.randperm(256, generator=g)[:group_size] for _ in range(3)])
        local = run.local(tok, group)
        ref = full.gather(1, group[..., None].expand(-1, -1, full.shape[-1]))
        torch.testing.assert_close(local, ref, atol=1e-5, rtol=1e-5)
        # and the paged full step is the plain SDPA forward
        plain = model(torch.cat([data.class_token(labels)[:, None], tok], 1))[:, 1:]
        torch.testing.assert_close(full, plain, atol=1e-5, rtol=1e-5)


def test_local_step_sees_the_cache_not_the_new_context(model):
    """The cached path is an approximation once the context changed: a local step after other
    positions changed still sees their old K/V (differs from a fresh full step), which is what
    makes it cheap, and a new full step refreshes the cache."""
    labels = torch.tensor([2])
    run = _Runner(model, labels, page_size=16)
    tok = _random_state(1, 3)
    group = torch.arange(10).view(1, 10)
    with torch.no_grad():
        run.full(tok)
        changed = tok.clone()
        changed[0, 100:200] = 7
        stale = run.local(changed, group)
        fresh = run.full(changed)[:, :10]
        assert not torch.allclose(stale, fresh, atol=1e-4)
        torch.testing.assert_close(run.local(changed, group), fresh, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["maskgit", "recap"])
def test_samples_are_deterministic_for_a_seed(model, method):
    a = sample(model, [1, 5, 5, 0], method=method, steps=8, seed=3)
    b = sample(model, [1, 5, 5, 0], method=method, steps=8, seed=3)
    c = sample(model, [1, 5, 5, 0], method=method, steps=8, seed=4)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)
    assert not torch.equal(a.tokens, c.tokens)
    assert a.images.shape == (4, 16, 16) and a.images_8x8.shape == (4, 8, 8)
    assert a.images.min() >= 0 and a.images.max() <= 16
    torch.testing.assert_close(a.images_8x8, torch.nn.functional.avg_pool2d(a.images[:, None], 2)[:, 0])
    assert a.stats["model_calls"] == 8 == a.stats["full_steps"] + a.stats["local_steps"]
    assert a.stats["wall_s"] > 0


def test_recap_script_sampler_settings(model):
    """ReCAP's MaskGIT script: power schedule, sampling temperature annealed 1.0 -> 0.7."""
    opts = dict(method="recap", steps=8, seed=3, schedule="power", temperature_start=1.0, choice_temperature=5.5)
    a, b = sample(model, [1, 5, 0], **opts), sample(model, [1, 5, 0], **opts)
    assert torch.equal(a.tokens, b.tokens) and not (a.tokens == data.MASK_ID).any()
    assert a.stats["schedule"] == "power" and a.stats["temperature_start"] == 1.0
    base = sample(model, [1, 5, 0], method="recap", steps=8, seed=3)
    assert not torch.equal(a.tokens, base.tokens)


def test_batched_rows_match_single_rows(model):
    """Batching over labels does not change a row: with a deterministic sampler (temperature 0,
    no choice noise) each row equals the row sampled alone."""
    opts = dict(steps=8, temperature=0.0, choice_temperature=0.0)
    for method in ("maskgit", "recap"):
        both = sample(model, [3, 8], method=method, **opts)
        for i, lab in enumerate([3, 8]):
            alone = sample(model, [lab], method=method, **opts)
            assert torch.equal(both.tokens[i], alone.tokens[0]), method


def test_recap_stats_follow_the_schedule(model):
    out = sample(model, list(range(10)), method="recap", steps=16, seed=0, pre_full=4, local_steps=3)
    groups = recap_groups(16, 4, 3)
    assert out.stats["full_steps"] == len(groups) == 7 and out.stats["local_steps"] == 9
    counts = unmask_counts(16)
    local_rows = sum(1 + sum(counts[t] for t in g) for g in groups for _ in g[1:])
    assert out.stats["positions_evaluated"] == 10 * (7 * 257 + local_rows)
    base = sample(model, list(range(10)), method="maskgit", steps=16, seed=0)
    assert base.stats["positions_evaluated"] == 10 * 16 * 257
    # no local steps: ReCAP is the base sampler
    same = sample(model, [1, 2], method="recap", steps=6, seed=5, local_steps=0)
    ref = sample(model, [1, 2], method="maskgit", steps=6, seed=5)
    assert torch.equal(same.tokens, ref.tokens)


@pytest.mark.parametrize("labels, err, match", [
    ([10], ValueError, "digit classes 0..9"),
    ([-1, 2], ValueError, "digit classes 0..9"),
    ([], ValueError, "non-empty"),
    ([[1, 2]], ValueError, "1-D"),
    ([1.5], TypeError, "integers"),
    ("seven", TypeError, "labels"),
])
def test_bad_labels(model, labels, err, match):
    with pytest.raises(err, match=match):
        sample(model, labels, steps=4)


@pytest.mark.parametrize("steps, err", [(0, ValueError), (257, ValueError), (-3, ValueError),
                                        (4.0, TypeError), ("8", TypeError)])
def test_bad_steps(model, steps, err):
    with pytest.raises(err, match="steps"):
        sample(model, [1], steps=steps)


def test_bad_method_and_options(model):
    with pytest.raises(ValueError, match="method must be one of"):
        sample(model, [1], method="llada")
    with pytest.raises(ValueError, match="pre_full"):
        sample(model, [1], method="recap", pre_full=-1)
    with pytest.raises(ValueError, match="schedule"):
        sample(model, [1], schedule="linear")
    with pytest.raises(ValueError, match="temperature_start"):
        sample(model, [1], temperature_start=-1.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        sample(model, [1], cfg=2.0)
    with pytest.raises(TypeError, match="MaskGIT"):
        sample(torch.nn.Linear(2, 2), [1])


def test_tiny_recipe_trains_saves_and_loads(tmp_path):
    from leapdec.train import cards
    from leapdec.train.__main__ import run_recipe
    import leapdec.images

    out = tmp_path / "tiny-maskgit"
    assert run_recipe("maskgit", ["--out", str(out), "--preset", "tiny", "--threads", "1",
                                  "--no-progress"]) == 0
    assert cards.verify_card(out) == []
    card = cards.load_card(out)
    assert card["command"].startswith("python -m leapdec.train maskgit")
    assert card["training"]["steps"] == 20 and math.isfinite(card["eval"]["heldout_loss"])
    # 20 steps already lower the held-out loss from the untrained model's (about log 27)
    assert card["eval"]["heldout_loss"] < card["eval"]["init_heldout_loss"] - 0.1
    m = leapdec.images.load(out)
    s = leapdec.images.sample(m, [7, 1], method="recap", steps=4, seed=0)
    assert s.images.shape == (2, 16, 16)


def test_local_step_overwrites_only_its_own_slots(model):
    """A local step writes the fresh K/V of its group (and the class token) into their own slots
    and leaves every other cached position as the full step wrote it."""
    labels = torch.tensor([6, 1])
    run = _Runner(model, labels, page_size=16)
    tok = _random_state(2, 7)
    group = torch.tensor([[3, 50, 200], [0, 128, 255]])
    changed = tok.clone()
    changed.scatter_(1, group, 9)                       # new tokens at the group's positions
    with torch.no_grad():
        run.full(tok)
        before = [k.clone() for k in run.cache.k_caches]
        run.local(changed, group)
        ref = _Runner(model, labels, page_size=16)
        ref.full(changed)
    rows = torch.cat([torch.zeros(2, 1, dtype=torch.long), group + 1], 1)
    own = run.slots.gather(1, rows).flatten().long()
    others = torch.ones(run.cache.num_pages * run.cache.page_size, dtype=torch.bool)
    others[own] = False
    def at(cache_k, slots):
        return cache_k.view(-1, *cache_k.shape[2:])[slots]
    # layer 0 K depends only on token and position: the group's slots now hold the new tokens' K
    own_ref = ref.slots.gather(1, rows).flatten().long()
    torch.testing.assert_close(at(run.cache.k_caches[0], own), at(ref.cache.k_caches[0], own_ref))
    assert not torch.allclose(at(run.cache.k_caches[0], own), at(before[0], own))
    all_slots = run.slots.flatten().long()
    keep = all_slots[others[all_slots]]
    for k_now, k_then in zip(run.cache.k_caches, before):
        assert torch.equal(at(k_now, keep), at(k_then, keep))


def test_load_refuses_a_checkpoint_that_is_not_an_image_generator(tmp_path):
    import leapdec.images
    from leapdec.models import ModelConfig

    (tmp_path / "lm").mkdir()
    ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2).save_json(tmp_path / "lm" / "config.json")
    with pytest.raises(ValueError, match="not an image generator"):
        leapdec.images.load(tmp_path / "lm")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert model_.describe(tmp_path / "broken") == {}
    assert model_.describe(tmp_path / "absent") == {}
