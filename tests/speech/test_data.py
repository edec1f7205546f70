"""leapdec.speech.data: espeak-ng synthesis (shapes, rates, determinism), the phoneme timeline
and visemes, noise mixed at a measured SNR, the vocabulary-split sentences, and input errors."""

import math

import numpy as np
import pytest
import torch

from leapdec.speech import data

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not data.espeak_available(),
                                 reason=f"espeak-ng is not installed ({data.INSTALL_HINT})")]

TEXT = "open the file and read it"


@pytest.fixture(scope="module")
def utt():
    return data.synthesize(TEXT, seed=3)


def test_shapes_and_rates(utt):
    assert utt.text == TEXT and utt.sample_rate == 16_000 and utt.fps == 25
    assert utt.audio.dtype == torch.float32 and utt.audio.dim() == 1
    assert 0.8 < utt.duration < 4.0
    assert utt.video.shape == (math.ceil(utt.duration * 25), data.FRAME_SIZE, data.FRAME_SIZE)
    assert utt.video.min() >= 0 and utt.video.max() <= 1
    assert utt.voice in data.VOICES and data.SPEEDS[0] <= utt.speed <= data.SPEEDS[1]
    assert float(utt.audio.pow(2).mean().sqrt()) == pytest.approx(data.TARGET_RMS, rel=1e-3)


def test_phoneme_timeline(utt):
    starts = [s for _, s in utt.phonemes]
    assert len(starts) > 10 and starts == sorted(starts) and 0 <= starts[0] and starts[-1] <= utt.duration + 0.01
    names = {n for n, _ in utt.phonemes}
    assert "f" in names and "D" in names       # "file", "the"


def test_visemes_are_ambiguous_and_mouth_follows_speech():
    assert data.viseme_of("p") == data.viseme_of("b") == data.viseme_of("m") == "closed"
    assert data.viseme_of("t") == data.viseme_of("d") == data.viseme_of("n")
    assert data.viseme_of("aU") == "open" and data.viseme_of("_:") == "rest" and data.viseme_of("dZ") == "postalveolar"
    # the track follows the phonemes: "ah" opens the mouth, "bob" closes it between vowels
    ah = data.synthesize("ah ah ah", seed=0, voice="en-us")
    times = np.arange(0.0, ah.duration, 0.02)
    opening = data._viseme_track(ah.phonemes, ah.duration, times, blur_s=0.04)[:, 0]
    assert opening.max() > 0.7 and opening[-1] < 0.6        # open on the vowels, closing at the end
    bob = data.synthesize("bob bob bob", seed=0, voice="en-us")
    closing = data._viseme_track(bob.phonemes, bob.duration, np.arange(0.0, bob.duration, 0.02), blur_s=0.04)[:, 0]
    assert closing.min() < 0.1 and closing.mean() < opening.mean()
    # rendering: an open mouth (opening, teeth, tongue) looks unlike closed lips
    params = np.array([data.VISEMES["open"]] * 4 + [data.VISEMES["closed"]] * 4, dtype=np.float64)
    frames = data.render_mouth(params, np.random.default_rng(0))
    assert frames.shape == (8, data.FRAME_SIZE, data.FRAME_SIZE)
    assert (frames[:4].mean(0) - frames[4:].mean(0)).abs().mean() > 0.03


def test_same_seed_same_utterance_and_seeds_differ(utt):
    again = data.synthesize(TEXT, seed=3)
    assert torch.equal(again.audio, utt.audio) and torch.equal(again.video, utt.video)
    other = data.synthesize(TEXT, seed=4, voice=utt.voice, speed=utt.speed)
    assert not torch.equal(other.video, utt.video)


def test_voice_and_speed_change_the_audio():
    a = data.synthesize("hello there", voice="en-us", speed=150, seed=0)
    b = data.synthesize("hello there", voice="en+f2", speed=150, seed=0)
    c = data.synthesize("hello there", voice="en-us", speed=300, seed=0)
    assert not torch.equal(a.audio[:1000], b.audio[:1000])
    assert c.duration < 0.8 * a.duration


@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0])
def test_noise_is_mixed_at_the_requested_snr(utt, snr):
    noisy = data.synthesize(TEXT, seed=3, snr_db=snr)
    noise = noisy.audio - utt.audio
    measured = 10 * math.log10(float(utt.audio.pow(2).mean()) / float(noise.pow(2).mean()))
    assert measured == pytest.approx(snr, abs=1e-3)
    assert torch.equal(noisy.video, utt.video) and noisy.snr_db == snr


def test_resample_keeps_a_tone():
    t = np.arange(22050) / 22050
    out = data.resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), 22050, 16000)
    assert out.shape == (16000,)
    assert np.argmax(np.abs(np.fft.rfft(out))) == 1000


def test_sentence_splits_hold_out_words():
    splits = data.sentence_splits()
    train, held = splits["train"], splits["heldout"]
    assert len(train) > 5000 and len(held) > 1000
    vocab = {w for s in train for w in s.split()}
    for s in held[:500]:
        assert any(w not in vocab for w in s.split()), s
    for s in train[:500] + held[:500]:
        assert 3 <= len(s.split()) <= 10 and s == s.lower()


@pytest.mark.parametrize("text, err", [("", ValueError), ("   \n", ValueError), (None, TypeError), (3, TypeError)])
def test_bad_text(text, err):
    with pytest.raises(err, match="text"):
        data.synthesize(text)


@pytest.mark.parametrize("snr", [float("nan"), float("inf"), 100.0, -40.0])
def test_bad_snr(snr):
    with pytest.raises(ValueError, match="snr_db"):
        data.synthesize("hello there", snr_db=snr)
    with pytest.raises(TypeError, match="snr_db"):
        data.synthesize("hello there", snr_db="10")


def test_bad_voice_and_speed():
    with pytest.raises(ValueError, match="voice"):
        data.synthesize("hello there", voice="no-such-voice")
    with pytest.raises(ValueError, match="speed"):
        data.synthesize("hello there", speed=10)


def test_check_audio():
    good = torch.randn(1600) * 0.1
    assert torch.equal(data.check_audio(good, 16000), good)
    assert data.check_audio(np.zeros(10, np.int16)).dtype == torch.float32
    with pytest.raises(ValueError, match="empty"):
        data.check_audio(torch.zeros(0))
    with pytest.raises(ValueError, match="NaN"):
        data.check_audio(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="sample_rate.*16000.*8000"):
        data.check_audio(good, 8000)
    with pytest.raises(ValueError, match="mono"):
        data.check_audio(torch.zeros(2, 100))
    with pytest.raises(TypeError, match="audio"):
        data.check_audio([0.0, 1.0])
    with pytest.raises(ValueError, match="silent"):
        data.add_noise(torch.zeros(100), 0.0)


def test_missing_espeak_says_how_to_install(monkeypatch):
    from leapdec.speech import espeak

    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(espeak.ctypes, "CDLL", no_library)
    monkeypatch.setattr(data, "_engine", None)
    assert not data.espeak_available()
    with pytest.raises(data.EspeakNotFound, match="apt-get install -y espeak-ng"):
        data.synthesize("hello there")
