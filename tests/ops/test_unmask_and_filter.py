"""unmask_and_filter: every policy against leapdec.reference (ragged masks, block windows,
dtypes, EOTP, ReDiff revise), hand-built cases with exact answers (ties, rows with nothing
masked, at-least-one, End-of-Text Prediction, revision), Gumbel sampling (reference agreement,
seeds, batch independence, distribution), NaN / inf handling, opcheck and bad inputs."""

import math

import pytest
import torch

from devices import dtypes_for
from leapdec import reference as ref
from leapdec.ops import unmask_and_filter
from leapdec.ops.diffusion import POLICIES, filter_weights_of

OPS = torch.ops.leapdec
EOS, PAD = 3, 9


def make_case(batch, seq_len, vocab, device, dtype=torch.float32, seed=0, masked_prob=0.6,
              eos_prob=0.15):
    """Random logits (some positions pushed towards EOS), ragged masks, random tokens; masked
    positions hold an out-of-vocabulary mask id."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, seq_len, vocab, generator=gen) * 3
    bump = (torch.rand(batch, seq_len, generator=gen) < eos_prob).float() * 8
    logits[:, :, EOS] += bump
    masked = torch.rand(batch, seq_len, generator=gen) < masked_prob
    tokens = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    tokens[masked] = vocab + 7
    return logits.to(dtype).to(device), tokens.to(device), masked.to(device)


def random_filter(window, hidden, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(hidden, window, generator=gen) * 2, torch.randn(hidden, generator=gen),
            torch.randn(window, hidden, generator=gen) * 0.7, torch.randn(window, generator=gen))


def run_pair(logits, tokens, masked, policy, **kw):
    """Run the op and the reference on copies; return both outcomes."""
    t_op, m_op = tokens.clone(), masked.clone()
    t_ref, m_ref = tokens.clone(), masked.clone()
    out = unmask_and_filter(logits, t_op, m_op, policy, return_stats=True, **kw)
    ref_kw = dict(kw)
    seed = ref_kw.pop("seed", None)
    if seed is not None:
        ref_kw["seeds"] = seed
    exp = ref.unmask_and_filter(logits, t_ref, m_ref, policy, **ref_kw)
    return (t_op, m_op, out), (t_ref, m_ref, exp)


def assert_matches_reference(logits, tokens, masked, policy, **kw):
    (t_op, m_op, out), (t_ref, m_ref, exp) = run_pair(logits, tokens, masked, policy, **kw)
    committed, confidence, eot_pos, predicted, entropy = (x.cpu() for x in exp)
    assert torch.equal(out.predicted.cpu(), predicted)
    conf = out.confidence.cpu()
    assert torch.equal(torch.isfinite(conf), torch.isfinite(confidence))
    fin = torch.isfinite(confidence)
    torch.testing.assert_close(conf[fin], confidence[fin], atol=1e-5, rtol=1e-4)
    ent = out.entropy.cpu()
    assert torch.equal(torch.isfinite(ent), torch.isfinite(entropy))
    torch.testing.assert_close(ent[torch.isfinite(entropy)], entropy[torch.isfinite(entropy)],
                               atol=1e-4, rtol=1e-4)
    assert torch.equal(t_op.cpu(), t_ref.cpu())
    assert torch.equal(m_op.cpu(), m_ref.cpu())
    assert out.committed.cpu().tolist() == committed.tolist()
    assert out.eot_pos.cpu().tolist() == eot_pos.tolist()
    return t_op, m_op, out


def policy_kwargs(policy, batch, window):
    if policy == "topk":
        return dict(k=torch.tensor([2, 0, 5, 100, 1, 3][:batch], dtype=torch.int32))
    if policy == "threshold":
        return dict(threshold=0.3)
    if policy == "factor":
        return dict(factor=1.0)
    if policy == "learned":
        return dict(filter_weights=random_filter(window, 8, seed=5), k=1, accept_threshold=0.6)
    return dict(threshold=2.5, position_penalty=0.05)


# ----------------------------------------------------------------------------- vs reference

@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("extras", [dict(), dict(eotp=True, revise=True), dict(eotp=True, eot_threshold=0.5)])
def test_policy_matches_reference(device, policy, extras):
    for i, dtype in enumerate(dtypes_for(device)):
        logits, tokens, masked = make_case(4, 24, 64, device, dtype, seed=11 + i)
        kw = policy_kwargs(policy, 4, 16)
        starts = torch.tensor([0, 4, 8, 3], dtype=torch.int32, device=device)
        ends = torch.tensor([16, 20, 24, 10], dtype=torch.int32, device=device)
        extra = dict(extras)
        if extra.get("eotp"):
            extra.update(eos_id=EOS, pad_id=PAD)
        assert_matches_reference(logits, tokens, masked, policy, block_start=starts, block_end=ends,
                                 **kw, **extra)


@pytest.mark.parametrize("policy", POLICIES)
def test_whole_row_window_and_int32_tokens(device, policy):
    logits, tokens, masked = make_case(3, 16, 50, device, seed=3)  # V = 50: no 16-byte vectors
    kw = policy_kwargs(policy, 3, 16)
    assert_matches_reference(logits, tokens.to(torch.int32), masked, policy, **kw)


def test_revise_topk_fraction_matches_reference(device):
    logits, tokens, masked = make_case(4, 24, 64, device, seed=21, masked_prob=0.3)
    for frac in (1.0, 0.5, 0.3, 0.0):
        assert_matches_reference(logits, tokens, masked, "threshold", threshold=0.5, revise=True,
                                 revise_topk=frac, block_start=2, block_end=22, eos_id=EOS, pad_id=PAD)


# ----------------------------------------------------------------------------- exact cases

def tied_case(device, seq_len=12, vocab=16):
    """Every position has the same logits, so every confidence and entropy ties."""
    base = torch.randn(vocab, generator=torch.Generator().manual_seed(1)) * 2
    logits = base.expand(1, seq_len, vocab).contiguous().to(device)
    masked = torch.ones(1, seq_len, dtype=torch.bool, device=device)
    masked[0, 3] = False
    tokens = torch.full((1, seq_len), 100, dtype=torch.long, device=device)
    tokens[0, 3] = 5
    return logits, tokens, masked, int(base.argmax())


@pytest.mark.parametrize("policy,kw,expect", [
    ("topk", dict(k=3), [2, 4, 5]),
    ("threshold", dict(threshold=1.01), [2]),
    ("entropy", dict(threshold=-1.0, position_penalty=0.0), [2]),
    ("entropy", dict(threshold=-1.0, position_penalty=0.1), [2]),
    ("factor", dict(factor=0.0), [2]),
])
def test_ties_go_to_lower_positions(device, policy, kw, expect):
    logits, tokens, masked, top = tied_case(device)
    t, m, out = assert_matches_reference(logits, tokens, masked, policy, block_start=2, block_end=9, **kw)
    changed = [l for l in range(12) if bool(m[0, l]) != bool(masked[0, l])]
    assert changed == expect
    assert all(int(t[0, l]) == top for l in expect)
    assert out.committed.tolist() == [len(expect)]


def test_threshold_commits_every_tie_above_tau(device):
    logits, tokens, masked, _ = tied_case(device)
    conf = float(torch.softmax(logits[0, 0].float().cpu(), -1).max())
    _, m, out = assert_matches_reference(logits, tokens, masked, "threshold", threshold=conf * 0.5,
                                         block_start=2, block_end=9)
    assert out.committed.tolist() == [6]  # window [2, 9) minus the unmasked position 3
    assert not bool(m[0, 2:9].any())


def test_rows_with_nothing_masked(device):
    logits, tokens, masked = make_case(3, 10, 32, device, seed=4)
    masked[1] = False
    masked[2, 2:6] = False  # nothing masked inside row 2's window [2, 6)
    for policy in POLICIES:
        kw = policy_kwargs(policy, 3, 8)
        t, m, out = assert_matches_reference(logits, tokens, masked, policy,
                                             block_start=torch.tensor([0, 0, 2]),
                                             block_end=torch.tensor([8, 8, 6]), **kw)
        assert out.committed.tolist()[1:] == [0, 0]
        assert torch.equal(t[1:], tokens[1:]) and torch.equal(m[1:], masked[1:])


@pytest.mark.parametrize("policy,kw", [
    ("topk", dict(k=0)), ("threshold", dict(threshold=2.0)), ("factor", dict(factor=0.0)),
    ("entropy", dict(threshold=-5.0)),
    ("learned", dict(filter_weights=(torch.zeros(4, 8), torch.zeros(4), torch.zeros(8, 4),
                                     torch.full((8,), -9.0)))),
])
def test_at_least_one_commits(device, policy, kw):
    logits, tokens, masked = make_case(4, 12, 40, device, seed=6, masked_prob=0.9)
    masked[:, 2:10] = True
    _, _, out = assert_matches_reference(logits, tokens, masked, policy, block_start=2, block_end=10, **kw)
    assert out.committed.tolist() == [1, 1, 1, 1]


def test_learned_filter_accepts_and_quota(device):
    logits, tokens, masked = make_case(2, 12, 40, device, seed=8, masked_prob=1.0)
    accept_all = (torch.zeros(4, 8), torch.zeros(4), torch.zeros(8, 4), torch.full((8,), 9.0))
    _, m, out = assert_matches_reference(logits, tokens, masked, "learned", block_start=2, block_end=10,
                                         filter_weights=accept_all, k=1)
    assert out.committed.tolist() == [8, 8] and not bool(m[:, 2:10].any())
    reject_all = (accept_all[0], accept_all[1], accept_all[2], torch.full((8,), -9.0))
    _, _, out = assert_matches_reference(logits, tokens, masked, "learned", block_start=2, block_end=10,
                                         filter_weights=reject_all, k=torch.tensor([3, 2]))
    assert out.committed.tolist() == [3, 2]


def test_learned_filter_random_weights_and_module(device):
    logits, tokens, masked = make_case(4, 20, 48, device, seed=9)
    weights = random_filter(12, 16, seed=2)
    for accept in (0.3, 0.6, 0.96):
        assert_matches_reference(logits, tokens, masked, "learned", block_start=4, block_end=16,
                                 filter_weights=weights, k=2, accept_threshold=accept)
    module = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 12))
    with torch.no_grad():
        for p, w in zip(module.parameters(), weights):
            p.copy_(w)
    assert all(torch.equal(a, b) for a, b in zip(filter_weights_of(module), weights))
    t1, m1 = tokens.clone(), masked.clone()
    t2, m2 = tokens.clone(), masked.clone()
    unmask_and_filter(logits, t1, m1, "learned", block_start=4, block_end=16, filter_weights=module, k=2)
    unmask_and_filter(logits, t2, m2, "learned", block_start=4, block_end=16, filter_weights=weights, k=2)
    assert torch.equal(t1, t2) and torch.equal(m1, m2)


def test_window_leaves_outside_untouched(device):
    logits, tokens, masked = make_case(3, 20, 32, device, seed=12)
    t, m, out = assert_matches_reference(logits, tokens, masked, "threshold", threshold=0.0,
                                         block_start=torch.tensor([5, 0, 12]),
                                         block_end=torch.tensor([9, 20, 20]), revise=True)
    for b, (s, e) in enumerate([(5, 9), (0, 20), (12, 20)]):
        outside = torch.ones(20, dtype=torch.bool, device=device)
        outside[s:e] = False
        assert torch.equal(t[b][outside], tokens[b][outside])
        assert torch.equal(m[b][outside], masked[b][outside])
        assert bool((out.confidence[b][outside] == -math.inf).all())
        assert bool((out.predicted[b][outside] == -1).all())
        assert not bool(m[b, s:e].any())  # threshold 0: every masked window position commits


def eos_logits(seq_len, vocab, strong, device):
    """Logits whose argmax at position l is strong[l] = (token, margin)."""
    logits = torch.zeros(1, seq_len, vocab)
    for l, (tok, margin) in strong.items():
        logits[0, l, tok] = margin
    return logits.to(device)


def test_eotp_committed_eos_truncates(device):
    L, V = 12, 16
    strong = {l: (10 + l % 5, 6.0) for l in range(L)}
    strong[2] = (EOS, 9.0)
    logits = eos_logits(L, V, strong, device)
    tokens = torch.full((1, L), 99, dtype=torch.long, device=device)
    masked = torch.ones(1, L, dtype=torch.bool, device=device)
    plain_t, plain_m = tokens.clone(), masked.clone()
    unmask_and_filter(logits, plain_t, plain_m, "topk", k=6, block_start=0, block_end=6)
    t, m, out = assert_matches_reference(logits, tokens, masked, "topk", k=6, block_start=0, block_end=6,
                                         eos_id=EOS, pad_id=PAD, eotp=True)
    assert out.eot_pos.tolist() == [2]
    assert torch.equal(t[0, :3], plain_t[0, :3]) and torch.equal(m[0, :3], plain_m[0, :3])
    assert int(t[0, 2]) == EOS
    assert bool((t[0, 3:] == PAD).all()) and not bool(m[0, 3:].any())
    assert out.committed.tolist() == [6]


def test_eotp_masked_eos_after_the_window(device):
    L, V = 12, 16
    strong = {l: (10 + l % 5, 2.0) for l in range(L)}
    strong[0] = (11, 9.0)
    strong[7] = (EOS, 4.0)
    strong[9] = (EOS, 7.0)
    logits = eos_logits(L, V, strong, device)
    tokens = torch.full((1, L), 99, dtype=torch.long, device=device)
    masked = torch.ones(1, L, dtype=torch.bool, device=device)
    t, m, out = assert_matches_reference(logits, tokens, masked, "topk", k=1, block_start=0, block_end=4,
                                         eos_id=EOS, eotp=True)
    assert out.eot_pos.tolist() == [9]  # the more confident of the two EOS predictions
    assert int(t[0, 0]) == 11 and not bool(m[0, 0])
    assert bool(m[0, 1:10].all()) and torch.equal(t[0, 1:10], tokens[0, 1:10])  # nothing before 10 changes
    assert bool((t[0, 10:] == EOS).all()) and not bool(m[0, 10:].any())  # pad_id defaults to eos_id
    p9 = float(out.confidence[0, 9])
    _, m2, out2 = assert_matches_reference(logits, tokens, masked, "topk", k=1, block_start=0, block_end=4,
                                           eos_id=EOS, eotp=True, eot_threshold=p9 + 1e-3)
    assert out2.eot_pos.tolist() == [-1] and int(m2.sum()) == L - 1


def test_eotp_never_changes_tokens_before_eos(device):
    for seed in range(4):
        logits, tokens, masked = make_case(4, 24, 32, device, seed=100 + seed, eos_prob=0.3)
        for policy in ("topk", "threshold", "entropy"):
            kw = policy_kwargs(policy, 4, 16)
            t_plain, m_plain = tokens.clone(), masked.clone()
            unmask_and_filter(logits, t_plain, m_plain, policy, block_start=4, block_end=16, **kw)
            t, m, out = assert_matches_reference(logits, tokens, masked, policy, block_start=4, block_end=16,
                                                 eos_id=EOS, pad_id=PAD, eotp=True, **kw)
            for b, e in enumerate(out.eot_pos.tolist()):
                if e < 0:
                    assert torch.equal(t[b], t_plain[b]) and torch.equal(m[b], m_plain[b])
                    continue
                assert torch.equal(t[b, :e + 1], t_plain[b, :e + 1])
                assert torch.equal(m[b, :e + 1], m_plain[b, :e + 1])
                assert bool((t[b, e + 1:] == PAD).all()) and not bool(m[b, e + 1:].any())


def test_revise_rewrites_less_probable_tokens(device):
    L, V = 8, 16
    strong = {l: (4 + l, 3.0 + l) for l in range(L)}  # confidence grows with l
    logits = eos_logits(L, V, strong, device)
    pad = 15
    tokens = torch.tensor([[4, 0, 6, V + 1, 8, pad, 10, 2]], device=device)
    masked = torch.zeros(1, L, dtype=torch.bool, device=device)
    masked[0, 7] = True
    t, m, out = assert_matches_reference(logits, tokens, masked, "topk", k=1, revise=True, pad_id=pad)
    # 1: less probable token, 3: out-of-vocabulary token -> rewritten; 5 holds padding -> kept.
    assert t[0].tolist() == [4, 5, 6, 7, 8, pad, 10, 11]
    assert out.committed.tolist() == [1]
    t, _, _ = assert_matches_reference(logits, tokens, masked, "topk", k=1, revise=True, revise_topk=0.5,
                                       pad_id=pad)
    assert t[0].tolist() == [4, 0, 6, 7, 8, pad, 10, 11]  # ceil(0.5 * 2) = 1: the more confident (3)
    t, _, _ = assert_matches_reference(logits, tokens, masked, "topk", k=1, revise=False, pad_id=pad)
    assert t[0].tolist() == [4, 0, 6, V + 1, 8, pad, 10, 11]


def test_empty_and_tiny_shapes(device):
    for B, L, V in ((0, 5, 8), (2, 0, 8), (2, 3, 1)):
        logits = torch.randn(B, L, V, device=device)
        tokens = torch.zeros(B, L, dtype=torch.long, device=device)
        masked = torch.ones(B, L, dtype=torch.bool, device=device)
        out = unmask_and_filter(logits, tokens, masked, "topk", k=1, eos_id=0, eotp=True)
        assert out.committed.shape == (B,) and out.confidence.shape == (B, L)
        if B and L:  # V = 1: token 0 (= EOS) with confidence 1 commits, the rest is padding
            assert out.committed.tolist() == [1, 1] and out.eot_pos.tolist() == [0, 0]
            assert not bool(masked.any()) and not bool(tokens.any())
        elif B:
            assert out.committed.tolist() == [0, 0] and out.eot_pos.tolist() == [-1, -1]


# ----------------------------------------------------------------------------- sampling

def test_sampling_matches_reference_noise(device):
    logits, tokens, masked = make_case(3, 16, 64, device, seed=31)
    seeds = torch.tensor([5, -7, 2**40 + 3], dtype=torch.int64)
    temperature = 0.8
    t, m = tokens.clone(), masked.clone()
    out = unmask_and_filter(logits, t, m, "topk", k=4, temperature=temperature, seed=seeds.to(device),
                            return_stats=True)
    noisy = logits.float().cpu() + temperature * ref.gumbel_noise(seeds, 16, 64)
    top2 = noisy.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 1e-3
    expect = noisy.argmax(-1)
    assert int(clear.sum()) > 40
    assert torch.equal(out.predicted.cpu()[clear], expect[clear].to(torch.int32))
    conf = torch.softmax(logits.float().cpu(), -1).gather(-1, out.predicted.cpu().long().unsqueeze(-1))[..., 0]
    torch.testing.assert_close(out.confidence.cpu(), conf, atol=1e-5, rtol=1e-4)
    done = masked.cpu() & ~m.cpu()
    assert torch.equal(t.cpu()[done], out.predicted.cpu()[done].long())


def test_sampling_seeds_and_batch_independence(device):
    logits, tokens, masked = make_case(3, 16, 64, device, seed=32)
    seeds = torch.tensor([11, 12, 13], device=device)

    def run(lg, tk, mk, sd):
        tk, mk = tk.clone(), mk.clone()
        out = unmask_and_filter(lg, tk, mk, "threshold", threshold=0.4, temperature=1.0, seed=sd,
                                return_stats=True)
        return tk, mk, out

    a = run(logits, tokens, masked, seeds)
    b = run(logits, tokens, masked, seeds)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2].predicted, b[2].predicted)
    c = run(logits, tokens, masked, seeds + 100)
    assert not torch.equal(a[2].predicted, c[2].predicted)
    alone = run(logits[1:2].contiguous(), tokens[1:2].clone(), masked[1:2].clone(), seeds[1:2])
    assert torch.equal(alone[0][0], a[0][1]) and torch.equal(alone[1][0], a[1][1])
    assert torch.equal(alone[2].predicted[0], a[2].predicted[1])
    d = run(logits, tokens, masked, 7)  # an int seed: row b uses 7 + b
    e = run(logits, tokens, masked, torch.tensor([7, 8, 9], device=device))
    assert torch.equal(d[2].predicted, e[2].predicted)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampling_distribution(device, temperature):
    n = 4000
    base = torch.tensor([0.0, 1.0, 2.0, 0.5, -math.inf])
    logits = base.expand(n, 1, 5).contiguous().to(device)
    tokens = torch.zeros(n, 1, dtype=torch.long, device=device)
    masked = torch.ones(n, 1, dtype=torch.bool, device=device)
    out = unmask_and_filter(logits, tokens, masked, "topk", k=1, temperature=temperature,
                            seed=torch.arange(n, device=device) * 7919 + 1, return_stats=True)
    counts = torch.bincount(tokens[:, 0].cpu(), minlength=5).double()
    probs = torch.softmax(base.double() / temperature, -1)
    assert counts[4] == 0
    sigma = (probs * (1 - probs) / n).sqrt()
    assert bool(((counts / n - probs).abs() <= 4.5 * sigma + 1e-9).all()), (counts / n, probs)
    conf = torch.softmax(base, -1)[tokens[:, 0].cpu()]  # confidence ignores the temperature
    torch.testing.assert_close(out.confidence[:, 0].cpu(), conf, atol=1e-6, rtol=1e-5)


def test_batch_composition_does_not_change_rows(device):
    logits, tokens, masked = make_case(5, 20, 64, device, seed=41)
    starts = torch.tensor([0, 2, 4, 6, 8], dtype=torch.int32, device=device)
    for policy in POLICIES:
        kw = dict(k=2) if policy == "topk" else policy_kwargs(policy, 5, 12)
        t_all, m_all = tokens.clone(), masked.clone()
        out = unmask_and_filter(logits, t_all, m_all, policy, block_start=starts, block_end=starts + 12,
                                eos_id=EOS, eotp=True, revise=True, **kw)
        for b in (0, 3, 4):
            t_b, m_b = tokens[b:b + 1].clone(), masked[b:b + 1].clone()
            one = unmask_and_filter(logits[b:b + 1].contiguous(), t_b, m_b, policy, block_start=starts[b:b + 1],
                                    block_end=starts[b:b + 1] + 12, eos_id=EOS, eotp=True, revise=True, **kw)
            assert torch.equal(t_b[0], t_all[b]) and torch.equal(m_b[0], m_all[b])
            assert int(one.committed[0]) == int(out.committed[b]) and int(one.eot_pos[0]) == int(out.eot_pos[b])


# ----------------------------------------------------------------------------- NaN / inf

def test_neg_inf_logits_are_allowed(device):
    logits, tokens, masked = make_case(3, 12, 40, device, seed=51)
    logits[:, :, 20:] = -math.inf
    logits[1, 4, :] = -math.inf
    logits[1, 4, 7] = 0.0  # a single finite logit: confidence 1, entropy 0
    t, m, out = assert_matches_reference(logits, tokens, masked, "threshold", threshold=0.5,
                                         eos_id=EOS, eotp=True)
    assert bool((out.predicted < 20).all())
    assert float(out.confidence[1, 4]) == 1.0 and float(out.entropy[1, 4]) == 0.0


def test_invalid_logits_rejected_on_cpu():
    logits, tokens, masked = make_case(2, 10, 32, torch.device("cpu"), seed=52)
    for value, match in ((float("nan"), "needs finite logits"), (math.inf, "needs finite logits")):
        bad = logits.clone()
        bad[1, 5, 9] = value
        with pytest.raises(RuntimeError, match=match):
            unmask_and_filter(bad, tokens.clone(), masked.clone(), "topk", k=1)
    bad = logits.clone()
    bad[0, 2] = -math.inf
    with pytest.raises(RuntimeError, match="no finite value"):
        unmask_and_filter(bad, tokens.clone(), masked.clone(), "topk", k=1)
    # outside the window (and eotp off) the logits are never read
    bad = logits.clone()
    bad[0, 9, :] = float("nan")
    t1, m1, t2, m2 = tokens.clone(), masked.clone(), tokens.clone(), masked.clone()
    unmask_and_filter(bad, t1, m1, "topk", k=2, block_start=0, block_end=8)
    unmask_and_filter(logits, t2, m2, "topk", k=2, block_start=0, block_end=8)
    assert torch.equal(t1, t2) and torch.equal(m1, m2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_invalid_logits_never_commit_on_cuda():
    logits, tokens, masked = make_case(2, 10, 32, torch.device("cuda"), seed=53, masked_prob=1.0)
    logits[0, 3, 5] = float("nan")
    logits[1, 6] = -math.inf
    t, m = tokens.clone(), masked.clone()
    out = unmask_and_filter(logits, t, m, "threshold", threshold=0.0, return_stats=True)
    assert bool(m[0, 3]) and bool(m[1, 6])
    assert int(out.predicted[0, 3]) == -1 and math.isnan(float(out.confidence[0, 3]))
    assert out.committed.tolist() == [9, 9]


# ----------------------------------------------------------------------------- CUDA specifics

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("vocab", [32000, 126464])
def test_large_vocab_split_path(vocab):
    device = torch.device("cuda")
    logits, tokens, masked = make_case(2, 8, vocab, device, torch.bfloat16, seed=61)
    assert_matches_reference(logits, tokens, masked, "threshold", threshold=0.05, eos_id=EOS, eotp=True,
                             revise=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_capture():
    device = torch.device("cuda")
    logits, tokens, masked = make_case(4, 32, 1000, device, torch.bfloat16, seed=62)
    t_eager, m_eager = tokens.clone(), masked.clone()
    eager = unmask_and_filter(logits, t_eager, m_eager, "threshold", threshold=0.3, block_start=0, block_end=32)
    t_static, m_static = tokens.clone(), masked.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        unmask_and_filter(logits, t_static.clone(), m_static.clone(), "threshold", threshold=0.3)  # warm up
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = unmask_and_filter(logits, t_static, m_static, "threshold", threshold=0.3,
                                     block_start=0, block_end=32)
    t_static.copy_(tokens)
    m_static.copy_(masked)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(t_static, t_eager) and torch.equal(m_static, m_eager)
    assert torch.equal(captured.committed, eager.committed)


# ----------------------------------------------------------------------------- opcheck

def op_args(device, policy="learned", temperature=0.0):
    B, L, V = 2, 8, 24
    logits, tokens, masked = make_case(B, L, V, device, seed=71)
    i32 = dict(dtype=torch.int32, device=device)
    f32 = dict(dtype=torch.float32, device=device)
    w1, b1, w2, b2 = (w.to(device) for w in random_filter(8, 4, seed=3))
    ws = torch.empty(B * L * 8, **f32) if device.type == "cuda" else None
    seeds = torch.tensor([1, 2], dtype=torch.int64, device=device)
    return (logits, tokens, masked, torch.empty(B, **i32), torch.empty(B, L, **f32), torch.empty(B, **i32),
            torch.empty(B, L, **i32), torch.empty(B, L, **f32), torch.zeros(B, **i32), torch.full((B,), L, **i32),
            torch.tensor([2, 1], **i32), seeds, w1, b1, w2, b2, ws, policy, 0.9, 1.0, 0.02, temperature,
            EOS, PAD, True, 0.0, True, 1.0, 0.6, 1)


def test_opcheck(device):
    torch.library.opcheck(OPS.unmask_and_filter.default, op_args(device))
    torch.library.opcheck(OPS.unmask_and_filter.default, op_args(device, "topk", temperature=0.7))


def test_direct_op_matches_wrapper(device):
    args = list(op_args(device, "entropy"))
    logits, tokens, masked = args[0], args[1].clone(), args[2].clone()
    OPS.unmask_and_filter(*args)
    unmask_and_filter(logits, tokens, masked, "entropy", threshold=0.9, position_penalty=0.02, k=args[10],
                      eos_id=EOS, pad_id=PAD, eotp=True, revise=True)
    assert torch.equal(args[1], tokens) and torch.equal(args[2], masked)


# ----------------------------------------------------------------------------- bad inputs

def test_bad_inputs(device):
    logits, tokens, masked = make_case(2, 8, 16, device, seed=81)

    def call(**kw):
        a = dict(logits=logits, tokens=tokens.clone(), masked=masked.clone(), policy="topk", k=1)
        a.update(kw)
        return unmask_and_filter(a.pop("logits"), a.pop("tokens"), a.pop("masked"), a.pop("policy"), **a)

    with pytest.raises(ValueError, match="policy must be one of"):
        call(policy="greedy")
    with pytest.raises(ValueError, match="needs k"):
        call(k=None)
    with pytest.raises(ValueError, match="needs filter_weights"):
        call(policy="learned")
    with pytest.raises(TypeError, match="tokens must be int64 or int32"):
        call(tokens=tokens.float())
    with pytest.raises(TypeError, match="masked must be a bool"):
        call(masked=masked.to(torch.uint8))
    with pytest.raises(ValueError, match=r"logits must be a \[B, L, V\]"):
        call(logits=logits[0])
    with pytest.raises(RuntimeError, match=r"tokens must be \[B, L\]"):
        call(tokens=tokens[:, :5].contiguous())
    with pytest.raises(RuntimeError, match="masked must be contiguous"):
        call(masked=torch.ones(8, 2, dtype=torch.bool, device=device).t())
    with pytest.raises(RuntimeError, match="0 <= start <= end <= L"):
        call(block_start=0, block_end=9)
    with pytest.raises(RuntimeError, match="0 <= start <= end <= L"):
        call(block_start=torch.tensor([3, 0]), block_end=torch.tensor([2, 8]))
    with pytest.raises(RuntimeError, match="eotp=True needs eos_id"):
        call(eotp=True)
    with pytest.raises(RuntimeError, match="factor must be >= 0"):
        call(policy="factor", factor=-1.0)
    with pytest.raises(RuntimeError, match="temperature must be finite"):
        call(temperature=-1.0)
    with pytest.raises(TypeError, match="k must be an int32"):
        call(k=torch.tensor([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="k must be a"):
        call(k=torch.tensor([1, 2, 3]))
    w = random_filter(8, 4, seed=1)
    with pytest.raises(RuntimeError, match=r"filter_w2 must be \[F, H\]"):
        call(policy="learned", filter_weights=(w[0], w[1], w[2][:, :3], w[3]))
    with pytest.raises(RuntimeError, match="longer than the learned filter|more than the learned filter"):
        call(policy="learned", filter_weights=random_filter(4, 4, seed=1))
    args = list(op_args(device, "topk", temperature=0.5))
    args[11] = None
    with pytest.raises(RuntimeError, match="needs seeds"):
        OPS.unmask_and_filter(*args)
    args = list(op_args(device, "topk"))
    args[17] = "nope"
    with pytest.raises(RuntimeError, match="policy must be one of"):
        OPS.unmask_and_filter(*args)
    if device.type == "cuda":
        with pytest.raises(RuntimeError, match="same device"):
            call(tokens=tokens.cpu())


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_narrower_isa_builds(isa):
    """The greedy statistics pass is compiled for AVX-512, AVX2 and the baseline ISA and runs
    the widest the CPU has; LEAPDEC_CPU_ISA lowers it, so the other builds are checked here
    (vocabularies at and off the vector widths, a NaN row rejected)."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    here = Path(__file__).resolve().parent
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(here.parent)!r}, {str(here)!r}]
        import pytest, torch
        from test_unmask_and_filter import assert_matches_reference, make_case, policy_kwargs
        from leapdec.ops import unmask_and_filter
        for vocab in (4, 5, 8, 16, 37, 509):
            for policy in ("topk", "threshold", "entropy"):
                logits, tokens, masked = make_case(3, 9, vocab, "cpu", seed=vocab)
                assert_matches_reference(logits, tokens, masked, policy, **policy_kwargs(policy, 3, 9))
        logits, tokens, masked = make_case(1, 4, 37, "cpu")
        logits[0, :, 20] = float("nan")
        with pytest.raises(RuntimeError, match="logits"):
            unmask_and_filter(logits, tokens, torch.ones_like(masked), "topk", k=1)
    """)
    env = dict(os.environ, LEAPDEC_CPU_ISA=isa)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
