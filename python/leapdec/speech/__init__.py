"""Audio-visual speech recognition: espeak-ng speech with a rendered mouth video
(``synthesize``), a fused audio-visual encoder with CTC and attention heads (``load``), and
hybrid CTC/attention decoding.

    import leapdec.speech as speech
    utt = speech.synthesize("open the file", snr_db=0, seed=1)
    utt.audio    # [samples] float, 16 kHz;  utt.video  [frames, 24, 24] float, 25 fps
    model = speech.load("espeak-avsr")
"""

from __future__ import annotations

from leapdec.speech.data import (FPS, SAMPLE_RATE, VOICES, Utterance, add_noise, check_audio,
                                 espeak_available, sentence_splits, synthesize)
from leapdec.speech.model import AVSRConfig, AVSRModel
from leapdec.speech.transcribe import METHODS, Transcription, transcribe


def load(name_or_path="espeak-avsr", device="cpu") -> AVSRModel:
    """A speech recogniser from a zoo name (``"espeak-avsr"``) or a checkpoint folder."""
    from leapdec import zoo
    from leapdec.speech import model as model_

    return model_.load(zoo.resolve(name_or_path), device=device)


__all__ = ["AVSRConfig", "AVSRModel", "FPS", "SAMPLE_RATE", "Utterance", "VOICES", "add_noise",
           "check_audio", "espeak_available", "load", "sentence_splits", "synthesize",
           "METHODS", "Transcription", "transcribe"]
