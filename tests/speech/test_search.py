"""Joint CTC/attention beam search (leapdec.speech.search) with a tiny deterministic fake decoder:
the op-based search equals the ESPnet-style pure-PyTorch scorer's; ctc_weight 1 equals a naive
CTC prefix beam search and 0 a naive attention beam search; batched equals one by one; the best
CTC prefix matches brute force on tiny inputs; ESPnet's end detection."""

import itertools
import math

import pytest
import torch

from leapdec.speech.espnet_scorer import ESPnetCTCPrefixScorer
from leapdec.speech.search import Hypothesis, beam_search, ctc_greedy, end_detect, make_scorer

BLANK, EOS = 0, 7
V = 8


class FakeDecoder:
    """An attention decoder whose next-token log-probs are a fixed pseudo-random function of
    (utterance, prefix); rows hold (utterance, prefix fed so far)."""

    def __init__(self, seed=0, eos_bias=0.0):
        self.seed, self.eos_bias = seed, eos_bias
        self.calls = 0

    def logp(self, u, prefix):
        gen = torch.Generator().manual_seed(hash((self.seed, u, tuple(prefix))) % (2**31))
        logits = 2.0 * torch.randn(V, generator=gen)
        logits[BLANK] -= 5.0
        logits[EOS] += self.eos_bias * len(prefix)
        return torch.log_softmax(logits, -1)

    def init_state(self, batch):
        return [(u, ()) for u in range(batch)]

    def decoder_step(self, state, tokens):
        self.calls += 1
        new = [(u, p + (int(t),)) for (u, p), t in zip(state, tokens.tolist())]
        return torch.stack([self.logp(u, p[1:]) for u, p in new]), new

    def reorder(self, state, idx):
        return [state[i] for i in idx]


def ctc_inputs(B, T, seed, lens=None):
    """CTC log-probs peaked on a random label sequence per utterance, with noise."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=gen)
    for b in range(B):
        labels = torch.randint(1, EOS, (T // 3,), generator=gen)
        for i, lab in enumerate(labels.tolist()):
            logits[b, 3 * i, lab] += 3.0
            logits[b, 3 * i + 1, BLANK] += 3.0
    lp = torch.log_softmax(logits, -1)
    lens = torch.tensor(lens if lens is not None else [T] * B)
    return lp, lens


def search(lp, lens, decoder=None, **kw):
    kw.setdefault("beam", 4)
    state = decoder.init_state(len(lens)) if decoder is not None else None
    return beam_search(lens, lp, decoder, state, sos=EOS, eos=EOS, blank=BLANK, **kw)


def assert_same_results(a, b, atol=1e-3):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert [h.tokens for h in x.nbest] == [h.tokens for h in y.nbest]
        for hx, hy in zip(x.nbest, y.nbest):
            assert abs(hx.score - hy.score) < atol


@pytest.mark.parametrize("ctc_weight", [0.3, 1.0])
def test_op_search_equals_espnet_scorer(ctc_weight):
    lp, lens = ctc_inputs(3, 24, 1, lens=[24, 17, 9])
    kw = dict(ctc_weight=ctc_weight, penalty=0.5, nbest=3)
    op = search(lp, lens, FakeDecoder(1), scorer="op", **kw)
    ref = search(lp, lens, FakeDecoder(1), scorer="espnet", **kw)
    assert_same_results(op, ref)
    assert all(r.nbest for r in op)


def test_scorers_agree_per_step():
    lp, lens = ctc_inputs(2, 30, 2, lens=[30, 19])
    utt = torch.tensor([0, 0, 1], dtype=torch.int32)
    op, es = make_scorer("op", lp, lens, BLANK, EOS), make_scorer("espnet", lp, lens, BLANK, EOS)
    r_op, r_es = op.initial_state(utt), es.initial_state(utt)
    torch.testing.assert_close(r_op, r_es)
    last = torch.tensor([-1, -1, -1], dtype=torch.int32)
    cand = torch.tensor([[1, 2, 7, 0], [3, 4, 5, 6], [1, 7, 2, 3]], dtype=torch.int32)
    for step in range(4):
        (ro, po), (re_, pe) = op(r_op, step, last, utt, cand), es(r_es, step, last, utt, cand)
        torch.testing.assert_close(po, pe, atol=1e-4, rtol=1e-5)
        live = re_ > -1e9
        torch.testing.assert_close(ro[live], re_[live], atol=1e-4, rtol=1e-5)
        r_op, r_es = ro[:, :, :, 0].contiguous(), re_[:, :, :, 0].contiguous()
        last = cand[:, 0].clone()
        cand = cand.roll(1, dims=1)


# ----------------------------------------------------------------------------- naive oracles

def prefix_and_end_logprob(lp, prefix):
    """log P(labels start with prefix), log P(labels == prefix) by the textbook CTC forward
    algorithm over the blank-extended label sequence (float64)."""
    T = lp.shape[0]
    ext = [BLANK]
    for c in prefix:
        ext += [c, BLANK]
    S = len(ext)
    neg = -math.inf
    alpha = [neg] * S
    alpha[0] = float(lp[0, BLANK])
    if S > 1:
        alpha[1] = float(lp[0, ext[1]])
    last = S - 2  # the last label's state
    enter = [alpha[last]] if prefix else []
    if not prefix:
        return 0.0, sum(float(lp[t, BLANK]) for t in range(T))
    for t in range(1, T):
        new = [neg] * S
        entering = neg
        for s in range(S):
            terms = [alpha[s]]
            into = [alpha[s - 1]] if s >= 1 else []
            if s >= 2 and ext[s] != BLANK and ext[s] != ext[s - 2]:
                into.append(alpha[s - 2])
            v = torch.logsumexp(torch.tensor(terms + into, dtype=torch.float64), 0).item()
            new[s] = v + float(lp[t, ext[s]])
            if s == last and into:
                entering = torch.logsumexp(torch.tensor(into, dtype=torch.float64), 0).item() + float(lp[t, ext[s]])
        enter.append(entering)
        alpha = new
    prefix_lp = torch.logsumexp(torch.tensor(enter, dtype=torch.float64), 0).item()
    end_lp = torch.logsumexp(torch.tensor(alpha[-2:], dtype=torch.float64), 0).item()
    return prefix_lp, end_lp


def naive_beam(score_of, maxlen, beam):
    """ESPnet's beam rules without end detection, per utterance, on absolute scores:
    score_of(prefix, token) is the hypothesis score after appending token."""
    running, ended = [((), 0.0)], []
    for step in range(maxlen):
        pool = []
        for prefix, _ in running:
            for c in range(1, V):  # blank is never an output
                pool.append((prefix + (c,), score_of(prefix, c)))
        pool.sort(key=lambda x: -x[1])
        running = []
        for toks, sc in pool[:beam]:
            if step == maxlen - 1 and toks[-1] != EOS:
                toks = toks + (EOS,)
            (ended if toks[-1] == EOS else running).append((toks, sc))
        if not running:
            break
    return sorted(ended, key=lambda x: -x[1])


def test_ctc_weight_one_is_ctc_prefix_beam_search():
    lp, lens = ctc_inputs(2, 12, 3, lens=[12, 8])
    got = search(lp, lens, None, ctc_weight=1.0, beam=3, nbest=3, end_detection=False)
    for b in range(2):
        lpb = lp[b, : int(lens[b])].double()
        cache = {}

        def score_of(prefix, c):
            key = prefix + (c,)
            if key not in cache:
                pre, end = prefix_and_end_logprob(lpb, list(prefix if c == EOS else key))
                cache[key] = -1e10 if c == BLANK else (end if c == EOS else pre)
            return cache[key]

        want = naive_beam(score_of, int(lens[b]), 3)[:3]
        assert [list(t) for t, _ in want] == [h.tokens for h in got[b].nbest]
        for (_, s), h in zip(want, got[b].nbest):
            assert abs(s - h.score) < 1e-3


def test_ctc_weight_zero_is_attention_beam_search():
    lp, lens = ctc_inputs(2, 10, 4, lens=[10, 6])
    dec = FakeDecoder(4, eos_bias=0.8)
    got = search(lp, lens, dec, ctc_weight=0.0, beam=3, nbest=3, penalty=0.3, end_detection=False)
    for b in range(2):
        oracle = FakeDecoder(4, eos_bias=0.8)

        def score_of(prefix, c, b=b):
            return sum(float(oracle.logp(b, prefix[:i])[prefix[i]]) + 0.3 for i in range(len(prefix))) \
                + float(oracle.logp(b, prefix)[c]) + 0.3

        want = naive_beam(score_of, int(lens[b]), 3)[:3]
        assert [list(t) for t, _ in want] == [h.tokens for h in got[b].nbest]
        for (_, s), h in zip(want, got[b].nbest):
            assert abs(s - h.score) < 1e-3
    # ctc_log_probs are not needed at all without CTC
    beam_search(lens, None, FakeDecoder(4), FakeDecoder(4).init_state(2), sos=EOS, eos=EOS, ctc_weight=0.0)


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3, 1.0])
def test_batch_equals_one_by_one(ctc_weight):
    lp, lens = ctc_inputs(4, 21, 5, lens=[21, 9, 15, 4])
    kw = dict(ctc_weight=ctc_weight, beam=5, nbest=2, penalty=0.2)
    batch = search(lp, lens, FakeDecoder(5, eos_bias=0.3), **kw)
    for b in range(4):
        T = int(lens[b])

        class Shifted(FakeDecoder):  # utterance 0 of the single run is utterance b
            def logp(self, u, prefix, b=b):
                return super().logp(b, prefix)

        one = search(lp[b:b + 1, :T], lens[b:b + 1], Shifted(5, eos_bias=0.3), **kw)
        assert_same_results(one, batch[b:b + 1])


def test_best_ctc_prefix_matches_brute_force():
    """With a beam covering every prefix, the CTC search finds the most probable label sequence."""
    T, n_labels = 4, 2  # labels 1, 2; eos 7 (a CTC column that is never likely)
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        logits = torch.randn(1, T, V, generator=gen)
        logits[..., 3:] -= 30.0  # only blank, 1, 2 carry mass
        lp = torch.log_softmax(logits, -1)
        probs = {}
        for path in itertools.product(range(n_labels + 1), repeat=T):
            labels, prev = [], None
            for s in path:
                if s != BLANK and s != prev:
                    labels.append(s)
                prev = s
            p = math.exp(sum(float(lp[0, t, s]) for t, s in enumerate(path)))
            probs[tuple(labels)] = probs.get(tuple(labels), 0.0) + p
        best = max(probs, key=probs.get)
        res = search(lp, torch.tensor([T]), None, ctc_weight=1.0, beam=64, end_detection=False)[0]
        assert tuple(res.tokens) == best, (seed, res.tokens, best)
        assert abs(res.nbest[0].score - math.log(probs[best])) < 1e-4


def test_end_detect_and_greedy():
    ended = [Hypothesis([1, EOS], 0.0)]  # yseq length 3 (sos, 1, eos)
    assert not end_detect(ended, 5)
    ended += [Hypothesis([1] * k + [EOS], -20.0) for k in (3, 4, 5)]  # lengths 5, 6, 7
    assert end_detect(ended, 7)
    assert not end_detect(ended, 8)
    assert not end_detect([], 3)
    lp = torch.log_softmax(torch.tensor([[[0, 5, 0], [0, 5, 0], [5, 0, 0], [0, 5, 0], [0, 0, 5.0]]]), -1)
    assert ctc_greedy(lp, [5]) == [[1, 1, 2]]
    assert ctc_greedy(lp, [2]) == [[1]]


def test_bad_arguments():
    lp, lens = ctc_inputs(2, 8, 6)
    with pytest.raises(ValueError, match="ctc_weight must be in"):
        search(lp, lens, FakeDecoder(), ctc_weight=1.5)
    with pytest.raises(ValueError, match="needs a decoder"):
        beam_search(lens, lp, None, None, sos=EOS, eos=EOS, ctc_weight=0.5)
    with pytest.raises(ValueError, match="needs ctc_log_probs"):
        beam_search(lens, None, FakeDecoder(), FakeDecoder().init_state(2), sos=EOS, eos=EOS, ctc_weight=0.5)
    with pytest.raises(ValueError, match="scorer must be"):
        search(lp, lens, FakeDecoder(), scorer="numpy")
    with pytest.raises(ValueError, match="frame_lens exceed"):
        search(lp, torch.tensor([8, 9]), FakeDecoder())
    with pytest.raises(ValueError, match="beam must be"):
        search(lp, lens, FakeDecoder(), beam=0)
    assert isinstance(make_scorer("espnet", lp, lens, BLANK, EOS), ESPnetCTCPrefixScorer)


# ----------------------------------------------------------------------------- transcribe (a real model)

@pytest.fixture(scope="module")
def tiny_model():
    from leapdec.speech.model import AVSRConfig, AVSRModel
    torch.manual_seed(0)
    cfg = AVSRConfig(d_model=64, num_heads=2, decoder_heads=1, ffn=128, audio_layers=1, video_layers=1,
                     fusion_layers=1, decoder_layers=1, max_text_len=40)
    return AVSRModel(cfg).eval()


def noise_utterances(n, seed=0):
    from leapdec.speech.data import FRAME_SIZE, Utterance
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        seconds = 0.4 + 0.3 * i
        out.append(Utterance(audio=0.1 * torch.randn(int(16000 * seconds), generator=gen),
                             video=torch.rand(int(25 * seconds), FRAME_SIZE, FRAME_SIZE, generator=gen), text=""))
    return out


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3, 1.0])
def test_model_search_batch_equals_one_by_one(tiny_model, ctc_weight):
    """The real decoder (paged self-attention forked per beam, cross K/V once per utterance):
    ragged utterances searched together equal each searched alone, on the same encoder output."""
    from leapdec.speech import model as M
    m = tiny_model
    utts = noise_utterances(3)
    with torch.inference_mode():
        encoded = m.encode(*M.batch_utterances(utts, "av"))
        lp = m.ctc_log_probs(encoded)
        kw = dict(sos=M.SOS, eos=M.EOS, blank=M.BLANK, beam=4, ctc_weight=ctc_weight, nbest=2, max_len=40)
        batch = beam_search(encoded.lengths, lp, m, m.init_decoder_state(encoded, rows=12), **kw)
        for i in range(3):
            n = int(encoded.lengths[i])
            one_enc = M.Encoded(encoded.enc[i:i + 1, :n], encoded.lengths[i:i + 1])
            one = beam_search(one_enc.lengths, lp[i:i + 1, :n], m, m.init_decoder_state(one_enc, rows=4), **kw)
            assert [h.tokens for h in one[0].nbest] == [h.tokens for h in batch[i].nbest]
            for a, b in zip(one[0].nbest, batch[i].nbest):
                assert abs(a.score - b.score) < 1e-3


@pytest.mark.parametrize("method", ["ctc_attention", "attention", "ctc_prefix"])
def test_transcribe_batch_equals_one_by_one(tiny_model, method):
    """Ragged utterances (the encoder pads them to the longest): batched equals one by one."""
    from leapdec.speech.transcribe import transcribe
    utts = noise_utterances(3)
    batch = transcribe(tiny_model, utts, method=method, beam=4)
    assert len(batch.texts) == 3 and all(isinstance(t, str) for t in batch.texts)
    assert batch.stats["steps"] >= 1 and batch.stats["wall_s"] > 0
    for i, u in enumerate(utts):
        one = transcribe(tiny_model, [u], method=method, beam=4)
        assert one.tokens[0] == batch.tokens[i]


def test_transcribe_scorers_and_methods(tiny_model):
    from leapdec.speech.transcribe import transcribe
    utts = noise_utterances(2, seed=1)
    op = transcribe(tiny_model, utts, beam=3, scorer="op")
    es = transcribe(tiny_model, utts, beam=3, scorer="espnet")
    assert op.tokens == es.tokens
    greedy = transcribe(tiny_model, utts, method="ctc_greedy", modality="audio")
    assert greedy.stats["steps"] == 0 and len(greedy.texts) == 2
    with pytest.raises(ValueError, match="method must be one of"):
        transcribe(tiny_model, utts, method="viterbi")
    with pytest.raises(ValueError, match="needs 0 < ctc_weight < 1"):
        transcribe(tiny_model, utts, ctc_weight=1.0)


def write_wav(path, samples, rate=16000):
    import wave

    import numpy as np
    pcm = (samples.clamp(-1, 1) * 32767).to(torch.int16).numpy()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(np.ascontiguousarray(pcm).tobytes())


def test_cli_transcribe(tiny_model, tmp_path, capsys):
    """`leapdec transcribe file.wav [--video file.npy]` prints what transcribe() returns; a wrong
    sample rate is a one-line error."""
    import numpy as np

    from leapdec import cli
    from leapdec.speech import model as M
    from leapdec.speech.transcribe import read_wav, transcribe
    ckpt = M.save(tiny_model, tmp_path / "avsr")
    utts = noise_utterances(2, seed=3)
    wavs = [tmp_path / f"u{i}.wav" for i in range(2)]
    vids = [tmp_path / f"u{i}.npy" for i in range(2)]
    for u, w, v in zip(utts, wavs, vids):
        write_wav(w, u.audio)
        np.save(v, u.video.numpy())
    audio, rate = read_wav(wavs[0])
    assert rate == 16000 and audio.shape == utts[0].audio.shape
    assert (audio - utts[0].audio).abs().max() < 1e-4
    for u in utts:
        u.audio = (u.audio.clamp(-1, 1) * 32767).to(torch.int16).float() / 32768.0
    want = transcribe(tiny_model, utts, beam=3)
    assert cli.main(["transcribe", *map(str, wavs), "--video", *map(str, vids), "--model", str(ckpt),
                     "--beam", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{w}\t{t}" for w, t in zip(wavs, want.texts)]
    write_wav(tmp_path / "8k.wav", torch.zeros(800), rate=8000)
    assert cli.main(["transcribe", str(tmp_path / "8k.wav"), "--model", str(ckpt)]) == 1
    assert "16000 Hz" in capsys.readouterr().err


def test_transcribe_bad_audio_is_a_clear_error(tiny_model):
    from leapdec.speech.data import Utterance
    from leapdec.speech.transcribe import transcribe
    good = noise_utterances(1)[0]
    cases = [(torch.zeros(0), 16000, "empty"), (torch.full((8000,), float("nan")), 16000, "NaN"),
             (good.audio, 8000, "16000 Hz")]
    for audio, rate, message in cases:
        bad = Utterance(audio=audio, video=good.video, text="", sample_rate=rate)
        with pytest.raises(ValueError, match=message):
            transcribe(tiny_model, [good, bad], modality="audio")


def test_bench_ctc_runs(tmp_path):
    """`leapdec bench ctc` on a small shape: both scorers, same hypotheses, outputs written."""
    import json

    from leapdec.bench.ctc import main
    assert main(["--shapes", "2x30", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "ctc.json").read_text())
    kinds = [r["kind"] for r in report["rows"]]
    assert kinds == ["step", "search"] and report["rows"][1]["same_output"]
    assert (tmp_path / "ctc.md").is_file() and (tmp_path / "ctc.png").stat().st_size > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("scorer", ["op", "espnet"])
def test_search_on_cuda_equals_cpu(scorer):
    lp, lens = ctc_inputs(3, 40, 7, lens=[40, 23, 31])
    kw = dict(ctc_weight=0.3, penalty=0.2, nbest=2, beam=5)
    cpu = search(lp, lens, FakeDecoder(7), scorer="op", **kw)
    gpu = search(lp.cuda(), lens, FakeDecoder(7), scorer=scorer, **kw)
    assert_same_results(cpu, gpu)
