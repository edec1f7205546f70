"""Synthetic audio-visual speech: espeak-ng speech (16 kHz) and a rendered mouth region (25 fps).

* Audio: espeak-ng (the Debian package ``espeak-ng``; its library ``libespeak-ng.so.1`` is driven
  through ``ctypes``) synthesises the text with one of several voices, speeds and pitches; its
  22.05 kHz output is resampled to 16 kHz (band-limited FFT resampling) and normalised to a fixed
  RMS. ``add_noise`` mixes speech-shaped, syllable-rate-modulated noise at a chosen SNR.
* Video: espeak-ng reports every phoneme with its audio position (synthesis callback events);
  each phoneme maps to a viseme (mouth opening, width, rounding, teeth, tongue), the targets are
  blurred over neighbours (co-articulation), and every 40 ms frame is rendered as a grey
  ``[H, W]`` mouth image with head jitter, speaker variation, pixel noise, dropped frames and
  occluders. Many phonemes share a viseme (p/b/m, t/d/n/s/z, k/g/h ...), so vision alone is
  ambiguous, as lips are.
* Text: short lowercase English phrases (3-10 plain words) from the comments and docstrings of the
  Python standard library (``leapdec.train.corpus``), split by vocabulary: every held-out
  sentence has at least one word that no training sentence contains.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from leapdec.speech.espeak import ESPEAK_RATE, INSTALL_HINT, EspeakNotFound, Synthesizer, load_library

SAMPLE_RATE = 16_000
FPS = 25
FRAME_SIZE = 24                 # video frames are FRAME_SIZE x FRAME_SIZE
VOICES = ("en-us", "en", "en-us+m3", "en+f2", "en-us+f4", "en+m7")
SPEEDS = (140, 190)             # words per minute, drawn uniformly
TARGET_RMS = 0.1

# ----------------------------------------------------------------------------- espeak-ng

_engine: Synthesizer | None = None


def _get_engine() -> Synthesizer:
    global _engine
    if _engine is None:
        load_library()                 # EspeakNotFound (with the install hint) when it is missing
        _engine = Synthesizer()
    return _engine


def _synth(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """int16 samples at 22.05 kHz and ``(phoneme, start sample)`` events, exactly reproducible."""
    try:
        raw, events = _get_engine().synth(text, voice, speed, pitch)
    except ValueError as e:
        raise ValueError(f"{e} (voices used in training: {', '.join(VOICES)})") from None
    return np.frombuffer(raw, dtype="<i2").copy(), events


def espeak_available() -> bool:
    """Whether espeak-ng's library can be loaded here."""
    try:
        load_library()
        return True
    except EspeakNotFound:
        return False


# ----------------------------------------------------------------------------- audio helpers

def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling of a 1-D signal by FFT (numpy)."""
    n_out = int(round(len(x) * rate_out / rate_in))
    if len(x) == 0 or n_out == 0:
        return np.zeros(n_out, np.float32)
    spec = np.fft.rfft(x.astype(np.float64))
    keep = n_out // 2 + 1
    out = np.zeros(keep, np.complex128)
    m = min(keep, len(spec))
    out[:m] = spec[:m]
    return (np.fft.irfft(out, n=n_out) * (n_out / len(x))).astype(np.float32)


def check_audio(audio, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``audio`` as a float32 ``[samples]`` tensor, or a ``ValueError`` naming the problem:
    not 1-D (mono), empty, NaN/infinite values, or a sample rate other than 16 kHz."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise TypeError(f"sample_rate must be an int (Hz), got {type(sample_rate).__name__}")
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"sample_rate: the models take {SAMPLE_RATE} Hz audio, got {sample_rate} Hz "
                         f"(resample it to {SAMPLE_RATE} Hz first)")
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"audio must be a tensor or numpy array of samples, got {type(audio).__name__}")
    if audio.dim() == 2 and 1 in audio.shape:
        audio = audio.reshape(-1)
    if audio.dim() != 1:
        raise ValueError(f"audio must be mono [samples], got shape {tuple(audio.shape)}")
    if audio.numel() == 0:
        raise ValueError("audio is empty (0 samples)")
    if not (audio.is_floating_point() or audio.dtype == torch.int16):
        raise TypeError(f"audio must be float (or int16 PCM), got {audio.dtype}")
    audio = audio.float() / 32768.0 if audio.dtype == torch.int16 else audio.float()
    if not torch.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples")
    return audio.contiguous()


def _speech_shaped_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with a speech-like long-term spectrum (flat to 500 Hz, then -6 dB/octave) whose
    loudness swings at syllable rates (3-6 Hz), unit RMS."""
    white = rng.standard_normal(n)
    spec = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spec *= 1.0 / np.maximum(freqs / 500.0, 1.0)
    noise = np.fft.irfft(spec, n=n)
    t = np.arange(n) / SAMPLE_RATE
    rate = rng.uniform(3.0, 6.0)
    noise *= 1.0 + 0.6 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    return (noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)).astype(np.float32)


def add_noise(audio, snr_db: float, seed: int = 0) -> torch.Tensor:
    """``audio`` plus speech-shaped noise scaled to ``snr_db`` dB (signal power over noise power,
    both over the whole utterance)."""
    audio = check_audio(audio)
    snr_db = _check_snr(snr_db)
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(_speech_shaped_noise(audio.numel(), rng))
    power = float(audio.pow(2).mean())
    if power == 0.0:
        raise ValueError("audio is silent: an SNR is undefined for it")
    scale = math.sqrt(power / (10.0 ** (snr_db / 10.0)))
    return audio + scale * noise


def _check_snr(snr_db) -> float:
    if isinstance(snr_db, bool) or not isinstance(snr_db, (int, float, np.floating, np.integer)):
        raise TypeError(f"snr_db must be a number (dB) or None, got {type(snr_db).__name__}")
    if not math.isfinite(snr_db) or not -30.0 <= snr_db <= 60.0:
        raise ValueError(f"snr_db must be a finite value in [-30, 60] dB, got {snr_db}")
    return float(snr_db)


# ----------------------------------------------------------------------------- visemes

# viseme -> (opening 0..1, width 0..1, rounding 0..1, teeth 0/1, tongue 0/1)
VISEMES = {
    "rest":   (0.05, 0.50, 0.0, 0, 0),
    "closed": (0.00, 0.48, 0.1, 0, 0),   # p b m
    "labiodental": (0.12, 0.52, 0.0, 1, 0),   # f v
    "dental": (0.25, 0.52, 0.0, 1, 1),   # T D
    "alveolar": (0.22, 0.55, 0.0, 1, 0),   # t d n l s z
    "postalveolar": (0.25, 0.38, 0.6, 1, 0),   # S Z tS dZ
    "velar": (0.35, 0.50, 0.0, 0, 1),   # k g N h
    "r": (0.25, 0.36, 0.6, 0, 0),
    "w": (0.15, 0.26, 1.0, 0, 0),
    "j": (0.20, 0.62, 0.0, 1, 0),
    "open": (0.80, 0.55, 0.0, 1, 1),   # a A V aI aU
    "mid": (0.45, 0.52, 0.1, 0, 1),   # @ 3
    "front": (0.50, 0.66, 0.0, 1, 1),   # e E eI
    "spread": (0.25, 0.72, 0.0, 1, 0),   # i I
    "round": (0.55, 0.34, 0.8, 0, 0),   # 0 O oU OI
    "close_round": (0.25, 0.28, 1.0, 0, 0),   # u U
}
_CONSONANTS = {
    "p": "closed", "b": "closed", "m": "closed",
    "f": "labiodental", "v": "labiodental",
    "T": "dental", "D": "dental",
    "t": "alveolar", "d": "alveolar", "n": "alveolar", "l": "alveolar", "s": "alveolar", "z": "alveolar",
    "S": "postalveolar", "Z": "postalveolar", "tS": "postalveolar", "dZ": "postalveolar",
    "k": "velar", "g": "velar", "N": "velar", "h": "velar", "x": "velar", "?": "velar",
    "r": "r", "R": "r", "w": "w", "j": "j",
}
_VOWELS = (("a", "open"), ("A", "open"), ("V", "open"), ("@", "mid"), ("3", "mid"), ("e", "front"),
           ("E", "front"), ("i", "spread"), ("I", "spread"), ("0", "round"), ("O", "round"),
           ("o", "round"), ("u", "close_round"), ("U", "close_round"))


def viseme_of(phoneme: str) -> str:
    """The viseme of an espeak-ng phoneme mnemonic (``"aU"``, ``"dZ"``, ``"@2"``, ``"_:"``)."""
    name = phoneme.strip().lstrip("'',%=")
    if not name or name.startswith("_"):
        return "rest"
    for length in (2, 1):
        if name[:length] in _CONSONANTS and (length == 2 or name[:2] not in _CONSONANTS):
            return _CONSONANTS[name[:length]]
    for prefix, vis in _VOWELS:
        if name.startswith(prefix):
            return vis
    return "mid"


def _viseme_track(phonemes: list[tuple[str, float]], duration: float, times: np.ndarray,
                  blur_s: float) -> np.ndarray:
    """Viseme parameters ``[len(times), 5]`` at ``times``: each phoneme's target held over its
    span, then Gaussian-blurred over neighbours (co-articulation)."""
    step = 0.005
    grid = np.arange(0.0, duration + step, step)
    track = np.tile(np.array(VISEMES["rest"], np.float64), (len(grid), 1))
    for i, (name, start) in enumerate(phonemes):
        end = phonemes[i + 1][1] if i + 1 < len(phonemes) else duration
        track[(grid >= start) & (grid < end)] = VISEMES[viseme_of(name)]
    radius = int(3 * blur_s / step)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) * step / blur_s) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(track, ((radius, radius), (0, 0)), mode="edge")
    smooth = np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(track.shape[1])], 1)
    idx = np.clip(np.round(times / step).astype(int), 0, len(grid) - 1)
    return smooth[idx]


def render_mouth(params: np.ndarray, rng: np.random.Generator, size: int = FRAME_SIZE) -> torch.Tensor:
    """Grey mouth-region frames ``[F, size, size]`` in [0, 1] from viseme parameters ``[F, 5]``,
    with this speaker's look, head jitter, pixel noise, dropped frames and occluders drawn from ``rng``."""
    f = len(params)
    p = torch.from_numpy(params).float()
    opening, width, rounding, teeth, tongue = p.unbind(1)
    # the speaker: lip size and thickness, skin and lip tones
    width_scale, thick = rng.uniform(0.85, 1.15), rng.uniform(0.10, 0.18)
    skin, lip = rng.uniform(0.55, 0.8), rng.uniform(0.25, 0.45)
    # head motion: a smooth random walk of the mouth centre and scale
    walk = np.cumsum(rng.normal(0, 0.03, (f, 3)), 0)
    walk -= walk.mean(0)
    cx = torch.from_numpy(np.clip(walk[:, 0], -0.2, 0.2)).float()
    cy = torch.from_numpy(np.clip(walk[:, 1], -0.15, 0.15) + 0.05).float()
    scale = torch.from_numpy(1.0 + np.clip(walk[:, 2], -0.12, 0.12)).float()
    axis = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    x = (x[None] - cx[:, None, None]) / scale[:, None, None]
    y = (y[None] - cy[:, None, None]) / scale[:, None, None]
    a = (0.25 + 0.6 * width * width_scale)[:, None, None]
    b_in = (0.45 * opening)[:, None, None] + 1e-3
    b_out = b_in + thick * (1.0 + 0.6 * rounding[:, None, None])
    edge = 0.08

    def inside(ax, bx):
        return torch.sigmoid((1.0 - torch.sqrt((x / ax) ** 2 + (y / bx) ** 2)) / edge)

    outer = inside(a + thick, b_out)
    inner = inside(a * 0.85, b_in)
    img = skin + (lip - skin) * outer
    img = img + (0.06 - img) * inner
    top = torch.sigmoid((-y - 0.35 * b_in) / 0.05)           # upper part of the opening
    bottom = torch.sigmoid((y - 0.25 * b_in) / 0.05)         # lower part
    img = img + inner * teeth[:, None, None] * top * (0.9 - img)
    img = img + inner * tongue[:, None, None] * bottom * (0.5 - img)
    # lighting gradient, pixel noise
    light = rng.uniform(-0.15, 0.15) * x[0:1] + rng.uniform(-0.1, 0.1)
    img = img + light
    img = img + torch.from_numpy(rng.normal(0, 0.04, img.shape)).float()
    # dropped frames (the previous frame repeats)
    for i in range(1, f):
        if rng.random() < 0.05:
            img[i] = img[i - 1]
    # an occluder (a hand, a microphone) over part of the mouth for a stretch of frames
    if f > 2 and rng.random() < 0.35:
        span = max(1, int(f * rng.uniform(0.2, 0.5)))
        start = int(rng.integers(0, f - span + 1))
        h, w = int(size * rng.uniform(0.3, 0.6)), int(size * rng.uniform(0.3, 0.6))
        r0, c0 = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        img[start:start + span, r0:r0 + h, c0:c0 + w] = float(rng.uniform(0.2, 0.9))
    return img.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- utterances

@dataclass
class Utterance:
    """One synthesised utterance: ``audio [samples]`` float at 16 kHz, ``video [frames, H, W]``
    float in [0, 1] at 25 fps, the ``text``, and how it was made."""

    audio: torch.Tensor
    video: torch.Tensor
    text: str
    voice: str = ""
    speed: int = 0
    snr_db: float | None = None
    phonemes: list = field(default_factory=list)     # (espeak mnemonic, start seconds)
    sample_rate: int = SAMPLE_RATE
    fps: int = FPS

    @property
    def duration(self) -> float:
        return self.audio.numel() / self.sample_rate


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    clean = " ".join(text.split())
    if not clean:
        raise ValueError("text is empty: nothing to synthesise")
    if len(clean) > 1000:
        raise ValueError(f"text is too long ({len(clean)} characters, at most 1000)")
    return clean


def synthesize(text: str, voice: str | None = None, snr_db: float | None = None, seed: int = 0,
               speed: int | None = None) -> Utterance:
    """Speak ``text`` with espeak-ng and render the matching mouth video.

    ``voice``: an espeak-ng voice (``VOICES`` lists those used in training); None draws one from
    ``seed``, as are the speed (``SPEEDS`` wpm, unless given), the pitch and the look of the mouth.
    ``snr_db``: mix speech-shaped noise at this SNR (None: clean). Same arguments, same utterance.
    """
    text = _check_text(text)
    if snr_db is not None:
        snr_db = _check_snr(snr_db)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 1])
    drawn_voice = VOICES[int(rng.integers(len(VOICES)))]
    voice = drawn_voice if voice is None else voice
    if not isinstance(voice, str) or not voice:
        raise ValueError(f"voice must be an espeak-ng voice name, got {voice!r}")
    drawn_speed = int(rng.integers(SPEEDS[0], SPEEDS[1] + 1))
    speed = drawn_speed if speed is None else int(speed)
    if not 80 <= speed <= 450:
        raise ValueError(f"speed must be 80..450 words per minute, got {speed}")
    pitch = int(rng.integers(35, 66))
    raw, events = _synth(text, voice, speed, pitch)
    if raw.size == 0:
        raise ValueError(f"text: espeak-ng produced no audio for {text!r}")
    audio = resample(raw.astype(np.float32) / 32768.0, ESPEAK_RATE, SAMPLE_RATE)
    rms = float(np.sqrt(np.mean(audio ** 2)))
    audio = audio * (TARGET_RMS / max(rms, 1e-8))
    duration = len(audio) / SAMPLE_RATE
    phonemes = [(name, s / ESPEAK_RATE) for name, s in events]
    frames = max(1, int(math.ceil(duration * FPS)))
    times = (np.arange(frames) + 0.5) / FPS
    params = _viseme_track(phonemes, duration, times, blur_s=float(rng.uniform(0.03, 0.05)))
    video = render_mouth(params, rng)
    audio_t = torch.from_numpy(audio)
    if snr_db is not None:
        audio_t = add_noise(audio_t, snr_db, seed=int(rng.integers(2 ** 31)))
    return Utterance(audio_t, video, text, voice, speed, snr_db, phonemes)


# ----------------------------------------------------------------------------- sentences

SENTENCE_VERSION = 2
HELDOUT_WORD_FRACTION = 0.15
ALWAYS_TRAIN_WORDS = 200      # the most frequent words are never held out
_WORD = re.compile(r"^[a-z]+(?:'[a-z]+)?$")
_COMMENT = re.compile(r"#+\s*([^\n]+)")
_DOCSTRING = re.compile(r'"""(.*?)"""', re.S)
_SENT_SPLIT = re.compile(r"[.!?;:](?:\s|$)|[()\[\]{}\"`]|\n\s*\n|\s-\s|--")


def _phrases(text: str):
    for block in _COMMENT.findall(text) + _DOCSTRING.findall(text):
        for piece in _SENT_SPLIT.split(block):
            words = piece.replace(",", " ").split()
            if not 3 <= len(words) <= 10:
                continue
            # plain words only: lowercase (a leading capital allowed), letters and apostrophes
            if not all(_WORD.match(w.lower()) and (w.islower() or (w[0].isupper() and w[1:].islower()) or w == "I")
                       for w in words):
                continue
            words = [w.lower() for w in words]
            if any(len(w) == 1 and w not in ("a", "i") for w in words):
                continue
            yield " ".join(words)


def _heldout_word(word: str) -> bool:
    digest = hashlib.sha1(b"avsr-word:" + word.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < HELDOUT_WORD_FRACTION


def sentence_splits(cache: bool = True) -> dict:
    """``{"train": [...], "heldout": [...], "info": {...}}``: the phrases of the stdlib's comments
    and docstrings, split by vocabulary. Held-out words are a stable hash-chosen 15 % of the word
    types outside the 200 most frequent; a phrase with a held-out word is held out, every other
    phrase is for training, so no held-out word is ever seen in training. Cached as JSON."""
    from leapdec.train import corpus

    path = corpus.cache_dir() / f"avsr-sentences-v{SENTENCE_VERSION}.json"
    if cache and path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    seen, phrases = set(), []
    for split in corpus.SPLITS:
        for text in corpus.read_corpus(split):
            for p in _phrases(text):
                if p not in seen:
                    seen.add(p)
                    phrases.append(p)
    counts: dict[str, int] = {}
    for p in phrases:
        for w in p.split():
            counts[w] = counts.get(w, 0) + 1
    common = set(sorted(counts, key=lambda w: (-counts[w], w))[:ALWAYS_TRAIN_WORDS])
    heldout_words = {w for w in counts if w not in common and _heldout_word(w)}
    order = sorted(phrases, key=lambda p: hashlib.sha1(p.encode()).digest())
    train = [p for p in order if not any(w in heldout_words for w in p.split())]
    heldout = [p for p in order if any(w in heldout_words for w in p.split())]
    train_words = {w for p in train for w in p.split()}
    unseen = sum(w not in train_words for p in heldout for w in p.split())
    info = {"source": "comments and docstrings of the Python standard library (leapdec.train.corpus)",
            "phrases": len(phrases), "train": len(train), "heldout": len(heldout),
            "word_types": len(counts), "heldout_word_types": len(heldout_words),
            "heldout_unseen_word_share": round(unseen / max(1, sum(len(p.split()) for p in heldout)), 4),
            "rule": f"3-10 plain lowercase words; held-out words: sha1 hash < {HELDOUT_WORD_FRACTION} "
                    f"outside the {ALWAYS_TRAIN_WORDS} most frequent words"}
    out = {"train": train, "heldout": heldout, "info": info}
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out))
    return out
