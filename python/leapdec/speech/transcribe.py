"""``transcribe``: decode utterances with a speech model, batched over utterances and beams.

The encoder runs once per batch; the attention decoder's cross-attention K/V are computed once
per utterance and its self-attention K/V live in a paged cache that is forked per beam
(``AVSRModel.init_decoder_state`` / ``reorder``); the search is ``leapdec.speech.search``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from leapdec.speech import model as model_
from leapdec.speech.search import beam_search, ctc_greedy

METHODS = ("ctc_attention", "ctc_greedy", "attention", "ctc_prefix")
"""ctc_attention: joint beam search (ctc_weight); attention: beam search on the decoder alone;
ctc_prefix: CTC prefix beam search; ctc_greedy: best path, no search."""


@dataclass
class Transcription:
    texts: list[str]
    tokens: list[list[int]]
    stats: dict = field(default_factory=dict)


def transcribe(model, utterances, method: str = "ctc_attention", modality: str = "av", beam: int = 10,
               ctc_weight: float = 0.3, penalty: float = 0.0, pre_beam_ratio: float = 1.5,
               scorer: str = "op", end_detection: bool = True) -> Transcription:
    """Texts of ``utterances`` (``leapdec.speech.Utterance`` objects, or one) decoded by
    ``method`` (one of :data:`METHODS`) from the ``modality`` streams ("av", "audio", "video").
    ``ctc_weight`` is the joint search's lambda (forced to 0 for "attention" and 1 for
    "ctc_prefix"); ``penalty`` is ESPnet's length bonus per character (0 as in ESPnet; attention
    alone wants one, or it may prefer a short or empty hypothesis: 0.25 suits ``espeak-avsr``,
    benchmarks/RESULTS.md). ``stats``: wall_s, encode_s, search_s (decoder_s and ctc_s within it),
    steps, frames and the options."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "ctc_attention" and not 0.0 < ctc_weight < 1.0:
        raise ValueError(f"ctc_attention needs 0 < ctc_weight < 1, got {ctc_weight} "
                         "(use method='attention' or 'ctc_prefix' for the ends)")
    if not isinstance(utterances, (list, tuple)):
        utterances = [utterances]
    if not utterances:
        raise ValueError("utterances: need at least one")
    weight = {"attention": 0.0, "ctc_prefix": 1.0}.get(method, ctc_weight)
    t0 = time.perf_counter()
    stats = {"method": method, "modality": modality, "utterances": len(utterances)}
    with torch.inference_mode():
        audio, audio_lens, video, video_lens = model_.batch_utterances(utterances, modality, model.device)
        encoded = model.encode(audio, audio_lens, video, video_lens, modality=modality)
        log_probs = model.ctc_log_probs(encoded)
        lens = encoded.lengths
        t1 = time.perf_counter()
        stats["encode_s"] = t1 - t0
        stats["frames"] = [int(n) for n in lens.tolist()]
        if method == "ctc_greedy":
            ids = ctc_greedy(log_probs, lens, model_.BLANK)
            stats["steps"] = 0
        else:
            state = None
            if weight < 1.0:
                # a hypothesis feeds at most one token per encoder frame: size the cache for that
                longest = min(max(stats["frames"]) + 1, model.config.max_text_len)
                state = model.init_decoder_state(encoded, rows=len(utterances) * beam, max_len=longest)
            results = beam_search(lens, log_probs if weight > 0 else None, model if weight < 1 else None, state,
                                  sos=model_.SOS, eos=model_.EOS, blank=model_.BLANK, beam=beam,
                                  ctc_weight=weight, penalty=penalty, pre_beam_ratio=pre_beam_ratio,
                                  max_len=model.config.max_text_len, end_detection=end_detection,
                                  scorer=scorer, stats=stats)
            ids = [r.tokens for r in results]
            stats.update(beam=beam, ctc_weight=weight, penalty=penalty)
        stats["search_s"] = time.perf_counter() - t1
    stats["wall_s"] = time.perf_counter() - t0
    return Transcription([model_.ids_to_text(i) for i in ids], ids, stats)


def read_wav(path) -> tuple[torch.Tensor, int]:
    """A PCM WAV file as float32 mono samples in [-1, 1] (channels averaged) and its sample rate."""
    import wave

    import numpy as np

    with wave.open(str(path), "rb") as f:
        width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
        raw = f.readframes(f.getnframes())
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise ValueError(f"{path}: {8 * width}-bit WAV is not supported (8, 16 or 32-bit PCM)")
    x = x.reshape(-1, channels).mean(1)
    return torch.from_numpy(np.ascontiguousarray(x)), rate


def read_video(path) -> torch.Tensor:
    """Mouth frames ``[frames, H, W]`` (float, 25 fps) from a ``.npy`` or ``.pt`` file."""
    import numpy as np

    path = str(path)
    if path.endswith(".npy"):
        return torch.from_numpy(np.load(path)).float()
    if path.endswith(".pt"):
        return torch.as_tensor(torch.load(path, map_location="cpu", weights_only=True)).float()
    raise ValueError(f"{path}: video must be a .npy or .pt file of [frames, H, W] mouth frames at 25 fps")


def load_utterances(wavs, videos=None) -> list:
    """``Utterance`` objects from WAV files (16 kHz mono) and optional matching mouth videos."""
    from leapdec.speech.data import Utterance

    videos = list(videos or [])
    if videos and len(videos) != len(wavs):
        raise ValueError(f"--video: one per audio file ({len(wavs)}), got {len(videos)}")
    out = []
    for i, w in enumerate(wavs):
        audio, rate = read_wav(w)
        video = read_video(videos[i]) if videos else None
        out.append(Utterance(audio=audio, video=video, text="", sample_rate=rate))
    return out
