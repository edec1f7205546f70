"""The audio-visual speech recogniser: two unimodal front ends, a fused encoder, a CTC head and a
small Transformer attention decoder over characters.

* audio: log-mel features (torch STFT + a mel filterbank written in torch, 100 frames/s), two
  stride-2 convolutions (25 frames/s) and a Transformer encoder;
* video: a frame CNN over each 24x24 mouth frame (25 frames/s) and a Transformer encoder;
* fusion: the two 25 Hz streams, aligned frame by frame, concatenated and projected, then a shared
  Transformer encoder. With ``conv_kernel > 0`` every encoder layer also has Conformer's
  convolution module (pointwise GLU, depthwise over time, pointwise) after its self-attention.
  A missing modality (``modality="audio"`` / ``"video"``, or modality dropout in training) is
  replaced by a learned "absent" vector;
* CTC head over the characters, and an attention decoder (causal self-attention, cross-attention
  to the encoder) trained with teacher forcing (``decoder_forward``, SDPA) and run step by step
  for beam search (``decoder_step``) with leapdec's ops: its self-attention K/V live in a
  ``PagedKVCache`` (``append_paged_kv`` + ``paged_attention`` causal), forked per beam by
  ``reorder`` (pages shared, copy-on-write); the cross-attention K/V of each utterance are
  computed once into a second cache and shared by all its beams (``paged_attention`` mask "none").

A checkpoint folder holds ``config.json``, ``model.safetensors`` and ``tokenizer.json`` (the
character vocabulary as a ``tokenizers`` word-level tokenizer, so the folder reads like every zoo
checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from leapdec.kv_cache import PagedKVCache
from leapdec.ops import append_paged_kv, paged_attention
from leapdec.speech import data

KIND = "avsr-ctc-attention"

# ----------------------------------------------------------------------------- characters

BLANK, SPACE, APOSTROPHE = 0, 1, 2
CHARS = ["<blank>", " ", "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["<eos>"]
EOS = SOS = len(CHARS) - 1          # ESPnet: one id starts and ends a hypothesis
VOCAB_SIZE = len(CHARS)             # 30
_CHAR_ID = {c: i for i, c in enumerate(CHARS)}


def text_to_ids(text: str) -> list[int]:
    """Character ids of ``text`` (lowercased, spaces collapsed); other characters are an error."""
    clean = " ".join(text.lower().split())
    bad = sorted({c for c in clean if c not in _CHAR_ID or len(c) != 1})
    if bad:
        raise ValueError(f"text has characters outside the vocabulary (a-z, space, apostrophe): {bad}")
    return [_CHAR_ID[c] for c in clean]


def ids_to_text(ids) -> str:
    """Text of character ids; blank, sos/eos are dropped."""
    return "".join(CHARS[i] for i in (int(x) for x in ids) if BLANK < i < EOS)


def vocabulary_tokenizer():
    """A ``tokenizers.Tokenizer`` naming the 30 ids (one token per character)."""
    from tokenizers import Regex, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Split

    tok = Tokenizer(WordLevel(dict(_CHAR_ID), unk_token="<blank>"))
    tok.pre_tokenizer = Split(Regex("."), behavior="isolated")
    return tok


# ----------------------------------------------------------------------------- config

@dataclass
class AVSRConfig:
    d_model: int = 128
    num_heads: int = 4
    decoder_heads: int = 2          # decoder head dim = d_model / decoder_heads (64: the paged ops' fast path)
    ffn: int = 512
    audio_layers: int = 2
    video_layers: int = 2
    fusion_layers: int = 2
    decoder_layers: int = 2
    n_mels: int = 40
    n_fft: int = 400
    hop: int = 160
    conv_channels: int = 16
    video_channels: int = 8
    conv_kernel: int = 0            # > 0: a Conformer convolution module of this kernel in each encoder layer
    frame_size: int = data.FRAME_SIZE
    max_text_len: int = 256
    dropout: float = 0.1
    vocab_size: int = VOCAB_SIZE

    def to_json(self) -> dict:
        return {"architectures": ["AVSRModel"], "model_type": "leapdec-avsr",
                "leapdec": {"speech": {"kind": KIND, **dataclasses.asdict(self),
                                       "sample_rate": data.SAMPLE_RATE, "fps": data.FPS,
                                       "chars": CHARS, "blank_id": BLANK, "sos_id": SOS, "eos_id": EOS}}}

    @classmethod
    def from_json(cls, d: dict) -> "AVSRConfig":
        info = (d.get("leapdec") or {}).get("speech") or {}
        if info.get("kind") != KIND:
            raise ValueError(f"not a {KIND} config (leapdec.speech.kind is {info.get('kind')!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in info.items() if k in names})


# ----------------------------------------------------------------------------- blocks

def sinusoid(length: int, dim: int, device=None) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return out


def length_mask(lengths: torch.Tensor, total: int) -> torch.Tensor:
    """``[B, total]`` bool, True on valid positions."""
    return torch.arange(total, device=lengths.device)[None] < lengths[:, None]


class MultiHeadAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, d // heads, dropout
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))

    def split(self, x):                          # [B, T, d] -> [B, H, T, Dh]
        return x.view(*x.shape[:2], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, memory=None, key_mask=None, causal=False):
        mem = x if memory is None else memory
        q, k, v = self.split(self.q_proj(x)), self.split(self.k_proj(mem)), self.split(self.v_proj(mem))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(x.shape))


class ConvModule(nn.Module):
    """Conformer's convolution module: pointwise (GLU) -> depthwise over time -> norm -> SiLU ->
    pointwise; ``x [B, T, d]``, padded frames (``mask [B, T]`` False) are zeroed before the depthwise conv."""

    def __init__(self, d: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pointwise_in = nn.Linear(d, 2 * d)
        self.depthwise = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.mid_norm = nn.LayerNorm(d)
        self.pointwise_out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):
        y = F.glu(self.pointwise_in(self.norm(x)), dim=-1)
        if mask is not None:
            y = y.masked_fill(~mask[..., None], 0.0)
        y = self.depthwise(y.transpose(1, 2)).transpose(1, 2)
        return self.drop(self.pointwise_out(F.silu(self.mid_norm(y))))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: AVSRConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.conv = ConvModule(cfg.d_model, cfg.conv_kernel, cfg.dropout) if cfg.conv_kernel > 0 else None
        self.ffn = nn.Sequential(nn.Linear(cfg.d_model, cfg.ffn), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.ffn, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask):
        x = x + self.drop(self.attn(self.norm1(x), key_mask=mask))
        if self.conv is not None:
            x = x + self.conv(x, mask)
        return x + self.drop(self.ffn(self.norm2(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: AVSRConfig, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x, mask):
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class LogMel(nn.Module):
    """``audio [B, S]`` -> per-utterance normalised log-mel ``[B, T, n_mels]`` (T = S // hop + 1)."""

    def __init__(self, cfg: AVSRConfig):
        super().__init__()
        self.n_fft, self.hop = cfg.n_fft, cfg.hop
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(cfg.n_mels, cfg.n_fft, data.SAMPLE_RATE), persistent=False)

    def frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return num_samples // self.hop + 1

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # centred frames, each utterance reflect-padded at its own ends (as torch.stft(center=True)
        # pads a lone utterance), so that a padded batch gives every utterance the frames it gets alone
        half = self.n_fft // 2
        padded = audio.new_zeros(audio.shape[0], audio.shape[1] + 2 * half)
        for i, n in enumerate(lengths.tolist()):
            if n <= half:
                raise ValueError(f"audio: utterance {i} has {n} samples; the model needs at least {half + 1} "
                                 f"({1000 * (half + 1) / data.SAMPLE_RATE:.1f} ms)")
            padded[i, : n + 2 * half] = F.pad(audio[i, :n][None, None], (half, half), mode="reflect")[0, 0]
        spec = torch.stft(padded, self.n_fft, self.hop, window=self.window, center=False, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2                          # [B, F, T]
        mel = torch.log(torch.einsum("mf,bft->btm", self.filters, power) + 1e-6)
        mask = length_mask(self.frames(lengths), mel.shape[1])[..., None].float()
        count = mask.sum(1, keepdim=True).clamp_min(1.0) * mel.shape[2]
        mean = (mel * mask).sum((1, 2), keepdim=True) / count
        std = (((mel - mean) ** 2 * mask).sum((1, 2), keepdim=True) / count).sqrt()
        return (mel - mean) / (std + 1e-5) * mask


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float = 20.0, fmax: float | None = None):
    """Triangular HTK-mel filters ``[n_mels, n_fft // 2 + 1]``."""
    fmax = fmax or sample_rate / 2

    def to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    mels = torch.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0)


class AudioFrontEnd(nn.Module):
    """log-mel (100 Hz) -> two stride-2 convolutions (25 Hz) -> d_model."""

    def __init__(self, cfg: AVSRConfig):
        super().__init__()
        c = cfg.conv_channels
        self.logmel = LogMel(cfg)
        self.conv = nn.Sequential(nn.Conv2d(1, c, 3, 2, 1), nn.GELU(), nn.Conv2d(c, c, 3, 2, 1), nn.GELU())
        freq = ((cfg.n_mels + 1) // 2 + 1) // 2
        self.proj = nn.Linear(c * freq, cfg.d_model)

    @staticmethod
    def subsampled(frames: torch.Tensor) -> torch.Tensor:
        return ((frames + 1) // 2 + 1) // 2

    def features(self, mel: torch.Tensor, mel_frames: torch.Tensor | None = None) -> torch.Tensor:
        """``mel [B, T, n_mels]`` -> ``[B, T/4, d]``; ``mel_frames [B]`` zeroes the first
        convolution's outputs past each utterance's end (the zero padding it sees alone)."""
        x = self.conv[1](self.conv[0](mel[:, None]))                    # [B, c, T/2, F/2]
        if mel_frames is not None:
            x = x * length_mask((mel_frames + 1) // 2, x.shape[2])[:, None, :, None]
        x = self.conv[3](self.conv[2](x))                                # [B, c, T/4, F/4]
        return self.proj(x.permute(0, 2, 1, 3).flatten(2))


class VisualFrontEnd(nn.Module):
    """A CNN over each mouth frame, then a depthwise temporal convolution; ``[B, T, H, W]`` -> ``[B, T, d]``."""

    def __init__(self, cfg: AVSRConfig):
        super().__init__()
        c = cfg.video_channels
        self.cnn = nn.Sequential(nn.Conv2d(1, c, 3, 2, 1), nn.GELU(), nn.Conv2d(c, 2 * c, 3, 2, 1), nn.GELU())
        side = ((cfg.frame_size + 1) // 2 + 1) // 2
        self.proj = nn.Linear(2 * c * side * side, cfg.d_model)
        self.temporal = nn.Conv1d(cfg.d_model, cfg.d_model, 5, padding=2, groups=cfg.d_model)

    def forward(self, video: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``lengths [B]`` zeroes padded frames' features before the temporal convolution."""
        b, t, h, w = video.shape
        x = self.cnn((video.reshape(b * t, 1, h, w) - 0.5) * 4.0)
        x = self.proj(x.flatten(1)).view(b, t, -1)
        if lengths is not None:
            x = x * length_mask(lengths, t)[..., None]
        return x + self.temporal(x.transpose(1, 2)).transpose(1, 2)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: AVSRConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = MultiHeadAttention(d, cfg.decoder_heads, cfg.dropout)
        self.cross_attn = MultiHeadAttention(d, cfg.decoder_heads, cfg.dropout)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.ffn, d))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, memory, memory_mask):
        x = x + self.drop(self.self_attn(self.norm1(x), causal=True))
        x = x + self.drop(self.cross_attn(self.norm2(x), memory=memory, key_mask=memory_mask))
        return x + self.drop(self.ffn(self.norm3(x)))


# ----------------------------------------------------------------------------- decoding state

@dataclass
class DecoderState:
    """Per-row decoder state for beam search: row i is self-attention cache sequence ``seqs[i]``
    and reads the encoder K/V of cache sequence ``cross_seqs[i]`` (its utterance's)."""

    self_cache: PagedKVCache
    cross_cache: PagedKVCache
    seqs: list[int]
    cross_seqs: list[int]

    def __len__(self) -> int:
        return len(self.seqs)


@dataclass
class Encoded:
    """Encoder output ``enc [B, T, d]`` with valid ``lengths [B]``."""

    enc: torch.Tensor
    lengths: torch.Tensor


MODALITIES = ("av", "audio", "video")


class AVSRModel(nn.Module):
    def __init__(self, config: AVSRConfig | None = None):
        super().__init__()
        cfg = self.config = config or AVSRConfig()
        d = cfg.d_model
        if d % cfg.num_heads or d % cfg.decoder_heads:
            raise ValueError(f"config: d_model {d} must be divisible by num_heads and decoder_heads")
        self.audio_front = AudioFrontEnd(cfg)
        self.audio_encoder = Encoder(cfg, cfg.audio_layers)
        self.video_front = VisualFrontEnd(cfg)
        self.video_encoder = Encoder(cfg, cfg.video_layers)
        self.absent = nn.Parameter(torch.zeros(2, d))          # stands for a missing audio / video stream
        self.fuse = nn.Linear(2 * d, d)
        self.fusion_encoder = Encoder(cfg, cfg.fusion_layers)
        self.ctc_head = nn.Linear(d, cfg.vocab_size)
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.pos_embed = nn.Parameter(torch.randn(cfg.max_text_len, d) * 0.02)
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.vocab_size)
        # heads used only by self-supervised pretraining (saved, unused after fine-tuning)
        self.audio_ssl_head = nn.Linear(d, 4 * cfg.n_mels)
        self.video_ssl_head = nn.Linear(d, cfg.frame_size * cfg.frame_size)
        self.checkpoint_dir: Path | None = None

    blank, sos, eos, vocab_size = BLANK, SOS, EOS, VOCAB_SIZE

    @property
    def device(self) -> torch.device:
        return self.absent.device

    # ---------------------------------------------------------------- encoders
    def audio_features(self, audio, audio_lens, mel_mask=None):
        """Log-mel -> conv -> audio encoder: ``([B, T, d], lengths [B], mel [B, 4T', n_mels])``.
        ``mel_mask [B, T_mel]`` (pretraining) zeroes masked mel frames before the convolutions."""
        mel = self.audio_front.logmel(audio, audio_lens)
        inp = mel if mel_mask is None else mel.masked_fill(mel_mask[..., None], 0.0)
        mel_frames = self.audio_front.logmel.frames(audio_lens)
        x = self.audio_front.features(inp, mel_frames)
        lens = self.audio_front.subsampled(mel_frames)
        x = x + sinusoid(x.shape[1], x.shape[2], x.device)
        return self.audio_encoder(x, length_mask(lens, x.shape[1])), lens, mel

    def video_features(self, video, video_lens, frame_mask=None):
        """Frame CNN -> video encoder: ``([B, T, d], lengths [B])``; ``frame_mask [B, T]`` blanks frames."""
        x = self.video_front(video, video_lens)
        if frame_mask is not None:
            x = x.masked_fill(frame_mask[..., None], 0.0)
        x = x + sinusoid(x.shape[1], x.shape[2], x.device)
        return self.video_encoder(x, length_mask(video_lens, x.shape[1])), video_lens

    def encode(self, audio=None, audio_lens=None, video=None, video_lens=None, modality: str = "av",
               keep_audio: torch.Tensor | None = None, keep_video: torch.Tensor | None = None) -> Encoded:
        """Fused encoder output. ``modality`` picks the streams used ("av", "audio", "video"); in
        training ``keep_audio`` / ``keep_video`` ``[B]`` bool drop a stream per utterance."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if modality in ("av", "audio") and audio is None:
            raise ValueError(f"modality {modality!r} needs audio")
        if modality in ("av", "video") and video is None:
            raise ValueError(f"modality {modality!r} needs video")
        streams, lens = [None, None], [None, None]
        if modality != "video":
            streams[0], lens[0], _ = self.audio_features(audio, audio_lens)
        if modality != "audio":
            streams[1], lens[1] = self.video_features(video, video_lens)
        lengths = torch.stack([n for n in lens if n is not None]).max(0).values
        total = max(s.shape[1] for s in streams if s is not None)
        b = lengths.shape[0]
        keeps = (keep_audio, keep_video)
        parts = []
        for i, s in enumerate(streams):
            absent = self.absent[i].expand(b, total, -1)
            if s is None:
                parts.append(absent)
                continue
            # zero past the stream's own end (a stream one frame shorter than the other is padded
            # with zeros alone, so it must be in a batch too)
            s = F.pad(s, (0, 0, 0, total - s.shape[1])) * length_mask(lens[i], total)[..., None]
            if keeps[i] is not None:
                s = torch.where(keeps[i][:, None, None], s, absent)
            parts.append(s)
        x = self.fuse(torch.cat(parts, -1))
        mask = length_mask(lengths, total)
        return Encoded(self.fusion_encoder(x, mask), lengths)

    def ctc_log_probs(self, encoded: Encoded) -> torch.Tensor:
        """``[B, T, V]`` CTC log-probabilities (float32)."""
        return F.log_softmax(self.ctc_head(encoded.enc).float(), -1)

    # ---------------------------------------------------------------- decoder (teacher forcing)
    def decoder_forward(self, encoded: Encoded, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L, V]`` of the next character after each prefix of ``tokens [B, L]``
        (``tokens[:, 0]`` is sos); plain SDPA, differentiable."""
        if tokens.shape[1] > self.config.max_text_len:
            raise ValueError(f"tokens: at most {self.config.max_text_len} positions, got {tokens.shape[1]}")
        x = self.embed(tokens) + self.pos_embed[: tokens.shape[1]]
        mask = length_mask(encoded.lengths, encoded.enc.shape[1])
        for layer in self.decoder_layers:
            x = layer(x, encoded.enc, mask)
        return self.out(self.decoder_norm(x))

    # ---------------------------------------------------------------- decoder (step by step, paged)
    def init_decoder_state(self, encoded: Encoded, rows: int | None = None, max_len: int | None = None,
                           page_size: int = 16) -> DecoderState:
        """A decoding state with one empty hypothesis per utterance. The cross-attention K/V of
        every utterance are computed here, once. ``rows``: the most hypotheses alive at once
        (default 16 per utterance), ``max_len``: the longest hypothesis (default max_text_len);
        they size the caches."""
        cfg = self.config
        b, t, d = encoded.enc.shape
        heads, hd = cfg.decoder_heads, d // cfg.decoder_heads
        rows = rows or 16 * b
        max_len = min(max_len or cfg.max_text_len, cfg.max_text_len)
        pages_per_row = -(-max_len // page_size) + 1
        kw = dict(page_size=page_size, dtype=encoded.enc.dtype, device=encoded.enc.device)
        self_cache = PagedKVCache(cfg.decoder_layers, heads, hd, 2 * rows * pages_per_row, **kw)
        cross_cache = PagedKVCache(cfg.decoder_layers, heads, hd, b * (-(-t // page_size)) + 1, **kw)
        cross_seqs = []
        lengths = encoded.lengths.tolist()
        for i in range(b):
            seq = cross_cache.new_sequence()
            slots = cross_cache.append([seq], [int(lengths[i])])
            mem = encoded.enc[i, : int(lengths[i])]
            for layer, kc, vc in zip(self.decoder_layers, cross_cache.k_caches, cross_cache.v_caches):
                attn = layer.cross_attn
                k = attn.k_proj(mem).view(-1, heads, hd).contiguous()
                v = attn.v_proj(mem).view(-1, heads, hd).contiguous()
                append_paged_kv(k, v, kc, vc, slots)
            cross_seqs.append(seq)
        seqs = [self_cache.new_sequence() for _ in range(b)]
        return DecoderState(self_cache, cross_cache, seqs, cross_seqs)

    def decoder_step(self, state: DecoderState, tokens: torch.Tensor) -> tuple[torch.Tensor, DecoderState]:
        """Feed one token per row (``tokens [N]``, N = len(state); sos first) and return the
        log-probabilities of the next character ``[N, V]`` (float32) and the state (grown in place)."""
        n = len(state)
        tokens = torch.as_tensor(tokens, device=self.device).reshape(-1)
        if tokens.numel() != n:
            raise ValueError(f"tokens: one per hypothesis row ({n}), got {tokens.numel()}")
        cfg = self.config
        heads, hd = cfg.decoder_heads, cfg.d_model // cfg.decoder_heads
        cache, cross = state.self_cache, state.cross_cache
        positions = [cache.seq_len(s) for s in state.seqs]
        if max(positions) >= cfg.max_text_len:
            raise ValueError(f"a hypothesis reached max_text_len ({cfg.max_text_len})")
        slots = cache.append(state.seqs, [1] * n)
        plan = cache.plan(state.seqs, [1] * n)
        cplan = cross.plan(state.cross_seqs, [1] * n)
        pos = torch.tensor(positions, device=self.device)
        x = self.embed(tokens.long()) + self.pos_embed[pos]
        for layer, kc, vc, ckc, cvc in zip(self.decoder_layers, cache.k_caches, cache.v_caches,
                                           cross.k_caches, cross.v_caches):
            h = layer.norm1(x)
            sa = layer.self_attn
            q = sa.q_proj(h).view(n, heads, hd).contiguous()
            append_paged_kv(sa.k_proj(h).view(n, heads, hd).contiguous(),
                            sa.v_proj(h).view(n, heads, hd).contiguous(), kc, vc, slots)
            out = paged_attention(q, kc, vc, plan.qo_indptr, plan.kv_indptr, plan.kv_indices,
                                  plan.kv_last_page_len, "causal", max_qo_len=1, max_kv_len=plan.max_kv_len)
            x = x + sa.o_proj(out.view(n, -1))
            h = layer.norm2(x)
            ca = layer.cross_attn
            q = ca.q_proj(h).view(n, heads, hd).contiguous()
            out = paged_attention(q, ckc, cvc, cplan.qo_indptr, cplan.kv_indptr, cplan.kv_indices,
                                  cplan.kv_last_page_len, "none", max_qo_len=1, max_kv_len=cplan.max_kv_len)
            x = x + ca.o_proj(out.view(n, -1))
            x = x + layer.ffn(layer.norm3(x))
        logits = self.out(self.decoder_norm(x))
        return F.log_softmax(logits.float(), -1), state

    def reorder(self, state: DecoderState, idx) -> DecoderState:
        """Keep rows ``idx`` (a row may repeat: a beam forks), in that order: each new row forks
        its source's cache sequence (pages shared, copied on the next write); old rows are freed."""
        idx = [int(i) for i in (idx.tolist() if isinstance(idx, torch.Tensor) else idx)]
        n = len(state)
        if any(not 0 <= i < n for i in idx):
            raise ValueError(f"idx: row indices must be in [0, {n}), got {idx}")
        seqs = [state.self_cache.fork(state.seqs[i]) for i in idx]
        for s in state.seqs:
            state.self_cache.free(s)
        return DecoderState(state.self_cache, state.cross_cache, seqs, [state.cross_seqs[i] for i in idx])

    def free_state(self, state: DecoderState) -> None:
        """Release the rows' cache pages."""
        for s in state.seqs:
            state.self_cache.free(s)
        state.seqs = []


# ----------------------------------------------------------------------------- batching and checkpoints

def batch_utterances(utterances, modality: str = "av", device="cpu"):
    """Pad a list of utterances: ``(audio [B, S], audio_lens, video [B, T, H, W], video_lens)``;
    streams the modality does not use are None."""
    audio = audio_lens = video = video_lens = None
    if modality in ("av", "audio"):
        waves = [data.check_audio(u.audio, getattr(u, "sample_rate", data.SAMPLE_RATE)) for u in utterances]
        audio_lens = torch.tensor([w.numel() for w in waves], device=device)
        audio = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True).to(device)
    if modality in ("av", "video"):
        clips = []
        for u in utterances:
            v = getattr(u, "video", None)
            if v is None:
                raise ValueError(f"modality {modality!r} needs a video for every utterance")
            v = torch.as_tensor(v, dtype=torch.float32)
            if v.dim() != 3 or v.shape[0] == 0:
                raise ValueError(f"video must be [frames, H, W] with at least one frame, got {tuple(v.shape)}")
            if not torch.isfinite(v).all():
                raise ValueError("video contains NaN or infinite values")
            clips.append(v)
        video_lens = torch.tensor([v.shape[0] for v in clips], device=device)
        video = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True).to(device)
    return audio, audio_lens, video, video_lens


def ctc_greedy_ids(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best-path CTC decoding of ``log_probs [B, T, V]``: argmax per frame, repeats merged, blanks dropped."""
    best = log_probs.argmax(-1).tolist()
    out = []
    for row, n in zip(best, lengths.tolist()):
        ids, prev = [], BLANK
        for t in row[: int(n)]:
            if t != prev and t != BLANK:
                ids.append(t)
            prev = t
        out.append(ids)
    return out


def count_parameters(model: nn.Module, inference_only: bool = True) -> int:
    skip = ("audio_ssl_head", "video_ssl_head") if inference_only else ()
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip))


def save(model: AVSRModel, directory) -> Path:
    """Write ``config.json``, ``model.safetensors`` (without the pretraining heads) and ``tokenizer.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config.to_json(), indent=2) + "\n")
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()
             if not k.startswith(("audio_ssl_head", "video_ssl_head"))}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt", "kind": KIND})
    vocabulary_tokenizer().save(str(directory / "tokenizer.json"))
    return directory


def describe(directory) -> dict:
    """The speech section of a checkpoint's config (empty when it is not a speech model)."""
    try:
        d = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    info = (d.get("leapdec") or {}).get("speech") if isinstance(d, dict) else None
    return info if isinstance(info, dict) and info.get("kind") == KIND else {}


def load(directory, device="cpu") -> AVSRModel:
    """An ``AVSRModel`` (eval mode) from a folder written by ``save``."""
    directory = Path(directory)
    if not describe(directory):
        raise ValueError(f"{directory} is not a speech recogniser checkpoint (config.json has no "
                         f"leapdec.speech.kind = {KIND!r})")
    config = AVSRConfig.from_json(json.loads((directory / "config.json").read_text()))
    model = AVSRModel(config)
    state = load_file(str(directory / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.startswith(("audio_ssl_head", "video_ssl_head"))]
    if missing or unexpected:
        raise ValueError(f"{directory}/model.safetensors does not match its config: missing {missing}, "
                         f"unexpected {unexpected}")
    model.checkpoint_dir = directory
    return model.to(device).eval()
