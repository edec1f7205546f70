"""ctc_prefix_score (AVSR joint decoding): the op against leapdec.reference on random, ragged and
odd inputs (repeated labels, eos / blank / padded candidates, prefixes longer than the
utterance, bfloat16 log-probs), the reference against a brute-force sum over every CTC
alignment on tiny inputs, opcheck and bad inputs."""

import itertools
import math

import pytest
import torch

from leapdec import reference as ref
from leapdec.ops import ctc_initial_state, ctc_prefix_score
from leapdec.ops.ctc import LOG_ZERO

OPS = torch.ops.leapdec
DEAD = -1e9  # values below this are "log-zero" (ESPnet's finite -1e10, give or take a few of them)


def random_log_probs(B, T, V, seed, dtype=torch.float32, sharp=2.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.log_softmax(sharp * torch.randn(B, T, V, generator=gen), -1).to(dtype)


def assert_scores_close(got, want, atol=2e-4, rtol=2e-5):
    got, want = got.cpu(), want.cpu()
    dead = want < DEAD
    assert bool((got[dead] < DEAD).all()), "op gives a live score where the reference has log-zero"
    assert bool((got[~dead] > DEAD).all()), "op gives log-zero where the reference has a live score"
    torch.testing.assert_close(got[~dead], want[~dead], atol=atol, rtol=rtol)


def run_both(log_probs, frame_lens, r_prev, prefix_len, last_token, hyp_utt, cand, blank, eos, **tol):
    out = ctc_prefix_score(log_probs, frame_lens, r_prev, prefix_len, last_token, hyp_utt, cand, blank, eos)
    r_ref, psi_ref = ref.ctc_prefix_score(log_probs.cpu(), frame_lens.cpu(), r_prev.cpu(), prefix_len.cpu(),
                                          last_token.cpu(), hyp_utt.cpu(), cand.cpu(), blank, eos)
    assert out.r.shape == r_ref.shape and out.psi.shape == psi_ref.shape
    assert out.r.dtype == torch.float32 and out.psi.dtype == torch.float32
    assert_scores_close(out.psi, psi_ref, **tol)
    assert_scores_close(out.r, r_ref, **tol)
    return out


def hypotheses_after(log_probs, frame_lens, hyp_utt, steps, seed, blank=0, eos=-1):
    """Forward variables of random real prefixes of `steps` tokens (through the reference), and
    their lengths and last tokens."""
    gen = torch.Generator().manual_seed(seed)
    V = log_probs.shape[2]
    r = ctc_initial_state(log_probs, frame_lens, hyp_utt, blank)
    N = hyp_utt.numel()
    last = torch.full((N,), -1, dtype=torch.int32)
    for step in range(steps):
        tokens = torch.randint(1, V, (N, 1), generator=gen, dtype=torch.int32)
        tokens[tokens == blank] = (blank + 1) % V
        if step % 2 == 1:
            tokens[0, 0] = last[0]  # a repeated label
        r_all, _ = ref.ctc_prefix_score(log_probs, frame_lens, r, torch.full((N,), step, dtype=torch.int32),
                                        last, hyp_utt, tokens, blank, eos)
        r = r_all[:, :, :, 0].contiguous()
        last = tokens[:, 0].clone()
    return r, torch.full((N,), steps, dtype=torch.int32), last


@pytest.mark.parametrize("B,T,V,C,steps", [(1, 1, 5, 3, 0), (2, 7, 6, 4, 1), (3, 40, 33, 15, 2),
                                           (2, 23, 9, 17, 3), (1, 5, 8, 9, 6)])
def test_random_ragged_against_reference(device, B, T, V, C, steps):
    seed = B * 1000 + T * 10 + C
    log_probs = random_log_probs(B, T, V, seed)
    gen = torch.Generator().manual_seed(seed)
    frame_lens = torch.randint(1, T + 1, (B,), generator=gen, dtype=torch.int32)
    frame_lens[0] = T
    hyp_utt = torch.arange(B, dtype=torch.int32).repeat_interleave(3)  # 3 hypotheses per utterance
    N = hyp_utt.numel()
    blank, eos = 0, V - 1
    r_prev, prefix_len, last = hypotheses_after(log_probs, frame_lens, hyp_utt, steps, seed, blank, eos)
    cand = torch.randint(-1, V, (N, C), generator=gen, dtype=torch.int32)
    cand[:, 0] = last.clamp(min=1)   # the repeated-label rule
    if C > 2:
        cand[:, 1] = eos
        cand[:, 2] = blank
    args = [t.to(device) for t in (log_probs, frame_lens, r_prev, prefix_len, last, hyp_utt, cand)]
    run_both(*args, blank, eos)


def test_mixed_prefix_lengths_and_long_prefixes(device):
    """Hypotheses of different lengths in one call, some longer than their utterance."""
    B, T, V = 2, 12, 7
    log_probs = random_log_probs(B, T, V, 5)
    frame_lens = torch.tensor([12, 4], dtype=torch.int32)
    hyp_utt = torch.tensor([0, 0, 1, 1, 1, 0], dtype=torch.int32)
    r_prev, _, last = hypotheses_after(log_probs, frame_lens, hyp_utt, 2, 6)
    prefix_len = torch.tensor([0, 2, 2, 4, 9, 13], dtype=torch.int32)
    cand = torch.tensor([[1, 2, 3, 4, 5, 6, -1]] * 6, dtype=torch.int32)
    args = [t.to(device) for t in (log_probs, frame_lens, r_prev, prefix_len, last, hyp_utt, cand)]
    out = run_both(*args, 0, 6)
    assert bool((out.psi[4:, :5].cpu() < DEAD).all())  # 10+ tokens cannot fit 4 (or 12) frames


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_log_probs(device, dtype):
    log_probs = random_log_probs(2, 30, 12, 7, dtype=dtype)
    frame_lens = torch.tensor([30, 21], dtype=torch.int32)
    hyp_utt = torch.tensor([0, 1, 1], dtype=torch.int32)
    r_prev, prefix_len, last = hypotheses_after(log_probs.float(), frame_lens, hyp_utt, 2, 8)
    cand = torch.arange(12, dtype=torch.int32).expand(3, -1).contiguous()
    args = [t.to(device) for t in (log_probs, frame_lens, r_prev, prefix_len, last, hyp_utt, cand)]
    run_both(*args, 0, 11)  # the reference reads the same 16-bit values


def test_empty_batch(device):
    log_probs = random_log_probs(1, 4, 5, 9).to(device)
    lens = torch.tensor([4], dtype=torch.int32, device=device)
    r_prev = torch.zeros(4, 2, 0, device=device)
    none = torch.zeros(0, dtype=torch.int32, device=device)
    out = ctc_prefix_score(log_probs, lens, r_prev, none, none, none, torch.zeros(0, 3, dtype=torch.int32, device=device))
    assert out.r.shape == (4, 2, 0, 3) and out.psi.shape == (0, 3)


# ----------------------------------------------------------------------------- brute force

def collapse(path, blank):
    out = []
    prev = None
    for s in path:
        if s != blank and s != prev:
            out.append(s)
        prev = s
    return out


def brute_force(lp, length, prefix, blank):
    """P(collapse(alignment) starts with prefix), P(collapse == prefix) over alignments of `length`
    frames, and the forward variables r[t, {label, blank}] of `prefix`, by enumeration."""
    V = lp.shape[1]
    starts = ends = 0.0
    r = torch.zeros(length, 2, dtype=torch.float64)
    for t in range(length):
        for path in itertools.product(range(V), repeat=t + 1):
            if collapse(path, blank) == prefix:
                p = math.exp(sum(float(lp[i, s]) for i, s in enumerate(path)))
                r[t, 1 if path[-1] == blank else 0] += p
    for path in itertools.product(range(V), repeat=length):
        labels = collapse(path, blank)
        p = math.exp(sum(float(lp[i, s]) for i, s in enumerate(path)))
        if labels[:len(prefix)] == prefix:
            starts += p
        if labels == prefix:
            ends += p
    return starts, ends, r


@pytest.mark.parametrize("length,V,blank", [(1, 3, 0), (3, 3, 0), (4, 4, 0), (5, 3, 2), (5, 4, 0)])
def test_reference_equals_brute_force(length, V, blank):
    """Chain reference steps along every prefix of up to 3 labels; each psi, end score and forward
    variable equals the sum over all alignments (utterance padded to 6 frames)."""
    T = 6
    lp = random_log_probs(1, T, V, length * 10 + V, dtype=torch.float64, sharp=1.0).float()
    lens = torch.tensor([length], dtype=torch.int32)
    eos = V  # outside the CTC vocabulary: only the end score column below uses it
    labels = [v for v in range(V) if v != blank]
    states = {(): ctc_initial_state(lp, lens, torch.zeros(1, dtype=torch.int32), blank)}
    for depth in range(3):
        for prefix in [p for p in states if len(p) == depth]:
            cand = torch.tensor([labels], dtype=torch.int32)
            last = torch.tensor([prefix[-1] if prefix else -1], dtype=torch.int32)
            r, psi = ref.ctc_prefix_score(lp, lens, states[prefix], torch.tensor([depth], dtype=torch.int32), last,
                                          torch.zeros(1, dtype=torch.int32), cand, blank, eos)
            for j, c in enumerate(labels):
                h = prefix + (c,)
                starts, ends, r_bf = brute_force(lp[0, :length], length, list(h), blank)
                got = float(psi[0, j])
                assert (got < DEAD) if starts == 0 else abs(got - math.log(starts)) < 1e-4, (h, got, starts)
                live = r_bf > 0
                torch.testing.assert_close(r[:length, :, 0, j][live].double(), r_bf[live].log(), atol=1e-4, rtol=1e-5)
                assert bool((r[:length, :, 0, j][~live] < DEAD).all())
                states[h] = r[:, :, :, j].contiguous()
                # the end score of h (its eos candidate next step) is P(collapse == h)
                _, end = ref.ctc_prefix_score(lp, lens, states[h], torch.tensor([depth + 1], dtype=torch.int32),
                                              torch.tensor([c], dtype=torch.int32), torch.zeros(1, dtype=torch.int32),
                                              torch.tensor([[labels[0]]], dtype=torch.int32), blank, labels[0])
                assert (float(end) < DEAD) if ends == 0 else abs(float(end) - math.log(ends)) < 1e-4


def test_op_equals_brute_force_end_to_end(device):
    """The compiled op chained over two steps on a tiny input, against enumeration."""
    T, V, blank = 5, 4, 0
    lp = random_log_probs(1, T, V, 77, sharp=1.0)
    lens = torch.tensor([T], dtype=torch.int32)
    utt = torch.zeros(1, dtype=torch.int32)
    r0 = ctc_initial_state(lp, lens, utt, blank)
    one = ctc_prefix_score(lp.to(device), lens.to(device), r0.to(device), torch.zeros(1, dtype=torch.int32),
                           torch.tensor([-1], dtype=torch.int32), utt, torch.tensor([[2]], dtype=torch.int32), blank)
    two = ctc_prefix_score(lp.to(device), lens.to(device), one.r[:, :, :, 0].contiguous(),
                           torch.ones(1, dtype=torch.int32), torch.tensor([2], dtype=torch.int32), utt,
                           torch.tensor([[1, 2, 3, 0]], dtype=torch.int32), blank, 3)
    for j, h in enumerate([[2, 1], [2, 2]]):
        starts, _, _ = brute_force(lp[0], T, h, blank)
        assert abs(float(two.psi[0, j]) - math.log(starts)) < 1e-4
    _, ends, _ = brute_force(lp[0], T, [2], blank)
    assert abs(float(two.psi[0, 2]) - math.log(ends)) < 1e-4  # eos: the utterance is exactly "2"
    assert float(two.psi[0, 3]) == LOG_ZERO                    # blank is never a label


# ----------------------------------------------------------------------------- contract

def test_opcheck(device):
    log_probs = random_log_probs(2, 9, 6, 11).to(device)
    lens = torch.tensor([9, 5], dtype=torch.int32, device=device)
    utt = torch.tensor([0, 1, 1], dtype=torch.int32, device=device)
    r_prev = ctc_initial_state(log_probs, lens, utt).to(device)
    plen = torch.zeros(3, dtype=torch.int32, device=device)
    last = torch.full((3,), -1, dtype=torch.int32, device=device)
    cand = torch.tensor([[1, 2, 5], [3, 4, -1], [0, 1, 2]], dtype=torch.int32, device=device)
    outs = (torch.empty(9, 2, 3, 3, device=device), torch.empty(3, 3, device=device))
    torch.library.opcheck(OPS.ctc_prefix_score.default, (*outs, log_probs, lens, r_prev, plen, last, utt, cand, 0, 5))


def test_bad_inputs(device):
    log_probs = random_log_probs(2, 6, 5, 12).to(device)
    lens = torch.tensor([6, 3], dtype=torch.int32, device=device)
    utt = torch.tensor([0, 1], dtype=torch.int32, device=device)
    r_prev = ctc_initial_state(log_probs, lens, utt).to(device)
    plen = torch.zeros(2, dtype=torch.int32, device=device)
    last = torch.full((2,), -1, dtype=torch.int32, device=device)
    cand = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32, device=device)
    good = dict(log_probs=log_probs, frame_lens=lens, r_prev=r_prev, prefix_len=plen, last_token=last,
                hyp_utt=utt, cand=cand, blank=0, eos=4)

    def call(**changes):
        return ctc_prefix_score(**{**good, **changes})

    call()
    with pytest.raises(ValueError, match=r"log_probs must be a \[B, T, V\]"):
        call(log_probs=log_probs[0])
    with pytest.raises(RuntimeError, match="log_probs must be float32, bfloat16 or float16"):
        call(log_probs=log_probs.double())
    with pytest.raises(TypeError, match="r_prev must be a float32"):
        call(r_prev=r_prev.double())
    with pytest.raises(RuntimeError, match=r"r_prev must be \[T=6, 2, N\]"):
        call(r_prev=r_prev[:5])
    with pytest.raises(RuntimeError, match="frame_lens must have 2 entries"):
        call(frame_lens=lens[:1])
    with pytest.raises(TypeError, match="hyp_utt must be an int32"):
        call(hyp_utt=utt.float())
    with pytest.raises(RuntimeError, match="cand must have N=2 rows"):
        call(cand=cand[:1])
    with pytest.raises(RuntimeError, match="prefix_len must have 2 entries"):
        call(prefix_len=plen[:1])
    with pytest.raises(RuntimeError, match=r"blank must be in \[0, V=5\)"):
        call(blank=5)
    with pytest.raises(RuntimeError, match="eos must differ from blank"):
        call(eos=0)
    with pytest.raises(RuntimeError, match=r"frame_lens.* must be in \[1, T=6\]"):
        call(frame_lens=torch.tensor([6, 7], dtype=torch.int32, device=device))
    with pytest.raises(RuntimeError, match=r"frame_lens.* must be in \[1, T=6\]"):
        call(frame_lens=torch.tensor([0, 3], dtype=torch.int32, device=device))
    with pytest.raises(RuntimeError, match=r"hyp_utt.* must be in \[0, B=2\)"):
        call(hyp_utt=torch.tensor([0, 2], dtype=torch.int32, device=device))
    with pytest.raises(RuntimeError, match=r"cand.* must be in \[-1, V=5\)"):
        call(cand=torch.tensor([[1, 5], [3, 4]], dtype=torch.int32, device=device))
    with pytest.raises(RuntimeError, match=r"cand.* must be in \[-1, V=5\)"):
        call(cand=torch.tensor([[1, -2], [3, 4]], dtype=torch.int32, device=device))
    with pytest.raises(RuntimeError, match="prefix_len.* must be >= 0"):
        call(prefix_len=torch.tensor([0, -1], dtype=torch.int32, device=device))
    with pytest.raises(RuntimeError, match="outside the int32 range"):
        call(cand=torch.tensor([[1, 2**33], [3, 4]], device=device))
    outs = [torch.empty(6, 2, 2, 2, device=device), torch.empty(2, 2, device=device)]
    with pytest.raises(RuntimeError, match=r"r_out must be \[T, 2, N, C\]"):
        OPS.ctc_prefix_score(torch.empty(6, 2, 2, 3, device=device), outs[1], log_probs, lens, r_prev, plen, last,
                             utt, cand, 0, 4)
    with pytest.raises(RuntimeError, match="psi must have dtype"):
        OPS.ctc_prefix_score(outs[0], outs[1].double(), log_probs, lens, r_prev, plen, last, utt, cand, 0, 4)
    with pytest.raises(RuntimeError, match="log_probs must be contiguous"):
        OPS.ctc_prefix_score(*outs, log_probs.transpose(0, 1).contiguous().transpose(0, 1), lens, r_prev, plen,
                             last, utt, cand, 0, 4)
    if device.type == "cuda":
        with pytest.raises(RuntimeError, match="must be on the same device as log_probs"):
            OPS.ctc_prefix_score(*outs, log_probs, lens.cpu(), r_prev, plen, last, utt, cand, 0, 4)


# ----------------------------------------------------------------------------- the CUDA kernel's thread work on the host

def test_cuda_column_kernel_emulated(tmp_path):
    """ctc::score_column, the per-thread body of the CUDA kernel, compiled for the host with g++
    and run for every (hypothesis, candidate): equal to the reference (this machine has no GPU)."""
    import shutil
    import subprocess
    from pathlib import Path

    import numpy as np

    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    root = Path(__file__).resolve().parents[2]
    exe = tmp_path / "ctc_columns"
    subprocess.run(["g++", "-std=c++20", "-O1", "-fsanitize=address", "-I", str(root / "csrc" / "include"),
                    str(Path(__file__).parent / "cuda_emulation" / "ctc_columns.cpp"), "-o", str(exe)], check=True)
    B, T, V = 3, 17, 9
    log_probs = random_log_probs(B, T, V, 21)
    frame_lens = torch.tensor([17, 6, 11], dtype=torch.int32)
    hyp_utt = torch.tensor([0, 0, 1, 2, 2, 1, 0], dtype=torch.int32)
    r_prev, _, last = hypotheses_after(log_probs, frame_lens, hyp_utt, 2, 22)
    prefix_len = torch.tensor([2, 0, 2, 2, 5, 7, 16], dtype=torch.int32)
    gen = torch.Generator().manual_seed(23)
    cand = torch.randint(-1, V, (7, 11), generator=gen, dtype=torch.int32)
    cand[:, 0], cand[:, 1], cand[:, 2] = last, 8, 0
    for name, t in dict(log_probs=log_probs, frame_lens=frame_lens, r_prev=r_prev, prefix_len=prefix_len,
                        last_token=last, hyp_utt=hyp_utt, cand=cand).items():
        t.contiguous().numpy().tofile(tmp_path / name)
    subprocess.run([str(exe), str(tmp_path), str(B), str(T), str(V), "7", "11", "0", "8"], check=True)
    r = torch.from_numpy(np.fromfile(tmp_path / "r_out", dtype=np.float32)).view(T, 2, 7, 11)
    psi = torch.from_numpy(np.fromfile(tmp_path / "psi", dtype=np.float32)).view(7, 11)
    r_ref, psi_ref = ref.ctc_prefix_score(log_probs, frame_lens, r_prev, prefix_len, last, hyp_utt, cand, 0, 8)
    assert_scores_close(psi, psi_ref)
    assert_scores_close(r, r_ref)


def test_preallocated_outputs(device):
    log_probs = random_log_probs(2, 10, 6, 31).to(device)
    lens = torch.tensor([10, 7], dtype=torch.int32, device=device)
    utt = torch.tensor([0, 1, 1], dtype=torch.int32, device=device)
    r_prev = ctc_initial_state(log_probs, lens, utt)
    plen = torch.zeros(3, dtype=torch.int32, device=device)
    last = torch.full((3,), -1, dtype=torch.int32, device=device)
    cand = torch.tensor([[1, 2], [3, 5], [4, 0]], dtype=torch.int32, device=device)
    fresh = ctc_prefix_score(log_probs, lens, r_prev, plen, last, utt, cand, 0, 5)
    out = (torch.full((10, 2, 3, 2), 7.0, device=device), torch.full((3, 2), 7.0, device=device))
    got = ctc_prefix_score(log_probs, lens, r_prev, plen, last, utt, cand, 0, 5, out=out)
    assert got.r.data_ptr() == out[0].data_ptr() and got.psi.data_ptr() == out[1].data_ptr()
    assert torch.equal(got.r, fresh.r) and torch.equal(got.psi, fresh.psi)
    with pytest.raises(RuntimeError, match=r"r_out must be \[T, 2, N, C\]"):
        ctc_prefix_score(log_probs, lens, r_prev, plen, last, utt, cand, 0, 5, out=(out[0][:5], out[1]))
