"""Recipe ``avsr``: the audio-visual speech recogniser of ``leapdec.speech`` on synthetic
espeak-ng speech with rendered mouth video.

    python -m leapdec.train avsr --out DIR [--preset default|low-label] [--no-pretrain] [--finetune-steps N]
        [--video-ssl contrastive+masked_pixels|contrastive|masked_pixels] [--snr-range LOW HIGH] [--threads 1]

``low-label`` (500 labelled utterances, 1,500 fine-tuning steps) is the low-resource regime in
which the pretraining ablation is also measured (``benchmarks/RESULTS.md``).

1. Data: utterances of training sentences (``leapdec.speech.sentence_splits``) are synthesised
   once into the cache (``leapdec.train.corpus.cache_dir()``): a labelled set and an unlabelled
   set (its transcripts are never used), several voices, speeds and pitches.
2. Stage 1 (skipped with ``--no-pretrain``, the ablation): self-supervised pretraining of each
   front end on single-modality utterances of both sets: the audio encoder regresses masked
   log-mel frames (spans of 10 frames zeroed, ~40 %). The visual side (``--video-ssl``, default
   ``contrastive+masked_pixels``) first trains its front end (frame CNN + temporal convolution)
   by contrast, as the AVSR paper's MoCo v2 front end is: two augmented views of each clip (shift,
   scale, lighting, an erased box, noise), and each sampled frame of one view must pick out the
   same frame of the other among all sampled frames of the batch; then, the front end frozen, the
   video encoder learns to predict the pixels of masked frames (spans of 3 frames, ~30 %; mean
   squared error on masked frames only). ``contrastive`` alone leaves the video encoder untrained
   (it fuses worse with few labels); ``masked_pixels`` alone (the objective of the first zoo
   models) trains front end and encoder on the pixels and reads lips worse
   (``benchmarks/RESULTS.md``).
3. Stage 2: fused fine-tuning on the labelled set with ``0.3 * CTC + 0.7 * attention`` (label
   smoothing 0.1), modality dropout (AV 50 %, audio only 25 %, video only 25 %) and speech-shaped
   noise at random SNRs (75 % of utterances, -5..20 dB).

The card records each stage's steps and seconds, the held-out losses and the held-out CER of
greedy CTC decoding (clean, AV) on held-out sentences (words never seen in training).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from leapdec.speech import data
from leapdec.speech import model as model_
from leapdec.speech.metrics import char_error_rate
from leapdec.train import cards, corpus
from leapdec.train.budget import Budget, cosine_lr

DATA_VERSION = 2
CTC_WEIGHT = 0.3


@dataclass
class Preset:
    d_model: int = 128
    ffn: int = 512
    audio_layers: int = 2
    video_layers: int = 2
    fusion_layers: int = 2
    decoder_layers: int = 2
    conv_kernel: int = 15         # Conformer convolution module in each encoder layer (0: none)
    labelled: int = 3000          # labelled training utterances
    unlabelled: int = 3000        # extra unlabelled utterances (pretraining only)
    heldout: int = 100            # held-out utterances scored at the end
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 200
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    audio_pretrain_steps: int = 800
    video_pretrain_steps: int = 500
    finetune_steps: int = 5000
    noise_prob: float = 0.75
    snr_range: tuple = (-5.0, 20.0)
    modality_probs: tuple = (0.5, 0.25, 0.25)    # av, audio only, video only
    video_ssl: str = "contrastive+masked_pixels"  # or "contrastive", "masked_pixels" (see the module doc)
    eval_every: int = 200


VIDEO_SSL_OBJECTIVES = {
    "contrastive": "contrastive frames (front end only): InfoNCE between two augmented views of each sampled "
                   "frame (temperature 0.1)",
    "masked_pixels": "masked frame pixel prediction (MSE)",
    "contrastive+masked_pixels": "contrastive frames on the front end, then masked frame pixel prediction "
                                 "through the video encoder (the front end frozen)"}

PRESETS = {
    "default": Preset(),
    # the low-resource regime of the pretraining ablation: 500 labelled utterances (~16 min of speech)
    "low-label": Preset(labelled=500, finetune_steps=1500),
    "tiny": Preset(d_model=32, ffn=64, audio_layers=1, video_layers=1, fusion_layers=1, decoder_layers=1,
                   labelled=12, unlabelled=8, heldout=4, batch_size=4, warmup=2, audio_pretrain_steps=3,
                   video_pretrain_steps=3, finetune_steps=4, eval_every=2),
}


# ----------------------------------------------------------------------------- the data set

class UtteranceStore:
    """Utterances packed flat: int16 audio, uint8 video frames, texts."""

    def __init__(self, audio, audio_offsets, video, video_offsets, texts, voices):
        self.audio, self.audio_offsets = audio, audio_offsets
        self.video, self.video_offsets = video, video_offsets
        self.texts, self.voices = texts, voices

    @classmethod
    def build(cls, utterances) -> "UtteranceStore":
        audio = [torch.from_numpy(np.clip(u.audio.numpy() * 32768.0, -32768, 32767).astype(np.int16)) for u in utterances]
        video = [(u.video * 255.0).round().to(torch.uint8) for u in utterances]
        offs_a = torch.tensor([0] + [a.numel() for a in audio]).cumsum(0)
        offs_v = torch.tensor([0] + [v.shape[0] for v in video]).cumsum(0)
        return cls(torch.cat(audio), offs_a, torch.cat(video), offs_v,
                   [u.text for u in utterances], [u.voice for u in utterances])

    def state(self) -> dict:
        return dict(audio=self.audio, audio_offsets=self.audio_offsets, video=self.video,
                    video_offsets=self.video_offsets, texts=self.texts, voices=self.voices)

    def __len__(self) -> int:
        return len(self.texts)

    def num_frames(self, i: int) -> int:
        return int(self.video_offsets[i + 1] - self.video_offsets[i])

    def audio_of(self, i: int) -> torch.Tensor:
        return self.audio[self.audio_offsets[i]:self.audio_offsets[i + 1]].float() / 32768.0

    def video_of(self, i: int) -> torch.Tensor:
        return self.video[self.video_offsets[i]:self.video_offsets[i + 1]].float() / 255.0


def synthesise_set(sentences, seed: int, desc: str, progress: bool) -> UtteranceStore:
    utts = [data.synthesize(text, seed=seed + i)
            for i, text in enumerate(tqdm(sentences, desc=desc, disable=not progress, unit="utt"))]
    return UtteranceStore.build(utts)


def dataset(preset: Preset, progress: bool = True) -> dict:
    """``{"labelled", "unlabelled", "heldout": UtteranceStore, "info": dict}``, synthesised once
    and cached (``corpus.cache_dir()``)."""
    splits = data.sentence_splits()
    n_lab, n_unlab, n_held = preset.labelled, preset.unlabelled, preset.heldout
    train, held = splits["train"], splits["heldout"]
    if n_lab + n_unlab > len(train) or n_held > len(held):
        raise ValueError(f"preset asks for {n_lab}+{n_unlab} training and {n_held} held-out utterances; "
                         f"there are {len(train)} and {len(held)} sentences")
    path = corpus.cache_dir() / f"avsr-data-v{DATA_VERSION}-s{data.SENTENCE_VERSION}-{n_lab}-{n_unlab}-{n_held}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=False)
            return {k: (UtteranceStore(**v) if k != "info" else v) for k, v in saved.items()}
        except (OSError, RuntimeError, EOFError, KeyError, TypeError):
            pass
    rng = random.Random(0)
    order = list(range(len(train)))
    rng.shuffle(order)
    start = time.perf_counter()
    out = {"labelled": synthesise_set([train[i] for i in order[:n_lab]], 0, "labelled utterances", progress),
           "unlabelled": synthesise_set([train[i] for i in order[n_lab:n_lab + n_unlab]], 10_000_000,
                                        "unlabelled utterances", progress),
           "heldout": synthesise_set(held[:n_held], heldout_seed(0), "held-out utterances", progress)}
    info = dict(splits["info"], labelled_utterances=n_lab, unlabelled_utterances=n_unlab,
                heldout_utterances=n_held, voices=list(data.VOICES), speeds_wpm=list(data.SPEEDS),
                synthesis_s=round(time.perf_counter() - start, 1),
                labelled_hours=round(len(out["labelled"].audio) / data.SAMPLE_RATE / 3600, 3),
                unlabelled_hours=round(len(out["unlabelled"].audio) / data.SAMPLE_RATE / 3600, 3))
    out["info"] = info
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: (v.state() if k != "info" else v) for k, v in out.items()}, path)
    return out


def heldout_seed(i: int) -> int:
    """The synthesis seed of held-out sentence ``i`` (the benchmark uses the same)."""
    return 20_000_000 + i


# ----------------------------------------------------------------------------- batches

def length_batches(store: UtteranceStore, batch_size: int, rng: random.Random):
    """Endless batches of similar length: shuffle, sort chunks of 32 batches by length, split."""
    while True:
        order = list(range(len(store)))
        rng.shuffle(order)
        chunk = 32 * batch_size
        for c in range(0, len(order), chunk):
            part = sorted(order[c:c + chunk], key=store.num_frames)
            batches = [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
            rng.shuffle(batches)
            yield from batches


def make_batch(stores, items, preset: Preset | None, rng: np.random.Generator, device, noisy: bool):
    """Padded ``audio, audio_lens, video, video_lens, texts`` of ``items`` ((store, index) pairs);
    with ``noisy`` some utterances get noise at a random SNR."""
    waves, clips, texts = [], [], []
    for s, i in items:
        store = stores[s]
        wave = store.audio_of(i)
        if noisy and rng.random() < preset.noise_prob:
            wave = data.add_noise(wave, float(rng.uniform(*preset.snr_range)), seed=int(rng.integers(2 ** 31)))
        waves.append(wave)
        clips.append(store.video_of(i))
        texts.append(store.texts[i])
    audio_lens = torch.tensor([w.numel() for w in waves])
    video_lens = torch.tensor([c.shape[0] for c in clips])
    audio = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    video = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    return audio.to(device), audio_lens.to(device), video.to(device), video_lens.to(device), texts


def span_mask(lengths: torch.Tensor, total: int, start_prob: float, span: int, gen: torch.Generator) -> torch.Tensor:
    """``[B, total]`` bool: spans of ``span`` frames starting at each valid frame with ``start_prob``."""
    starts = torch.rand(len(lengths), total, generator=gen) < start_prob
    mask = torch.zeros_like(starts)
    for k in range(span):
        mask[:, k:] |= starts[:, : total - k]
    return mask & model_.length_mask(lengths.cpu(), total)


# ----------------------------------------------------------------------------- losses

def audio_ssl_loss(model, audio, audio_lens, gen) -> torch.Tensor:
    mel_frames = model.audio_front.logmel.frames(audio_lens)
    total = int(audio.shape[1] // model.config.hop + 1)
    mask = span_mask(mel_frames.cpu(), total, 0.05, 10, gen).to(audio.device)
    enc, _, mel = model.audio_features(audio, audio_lens, mel_mask=mask)
    b, t, _ = enc.shape
    pred = model.audio_ssl_head(enc).view(b, 4 * t, -1)[:, : mel.shape[1]]
    m = mask[:, : pred.shape[1]]
    return F.mse_loss(pred[m], mel[:, : pred.shape[1]][m])


def video_ssl_loss(model, video, video_lens, gen) -> torch.Tensor:
    mask = span_mask(video_lens.cpu(), video.shape[1], 0.1, 3, gen).to(video.device)
    enc, _ = model.video_features(video, video_lens, frame_mask=mask)
    pred = model.video_ssl_head(enc)
    target = ((video - 0.5) * 4.0).flatten(2)
    return F.mse_loss(pred[mask], target[mask])


def augment_frames(video: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random view of every frame of ``video [B, T, H, W]`` (0..1): a shift of up to 2 pixels
    and a scale of 0.9-1.1, brightness and contrast, an erased box on half the frames, pixel noise
    (the nuisances of the renderer: head jitter, lighting, occluders, sensor noise)."""
    b, t, h, w = video.shape
    n = b * t
    r = lambda *shape: torch.rand(*shape, generator=gen)         # noqa: E731
    scale = 0.9 + 0.2 * r(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = (r(n, 2) * 2 - 1) * (2 * 2.0 / w)           # +-2 pixels in [-1, 1] coordinates
    x = video.reshape(n, 1, h, w).cpu()
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    mean = x.mean((2, 3), keepdim=True)
    x = (x - mean) * (0.7 + 0.6 * r(n, 1, 1, 1)) + mean + (r(n, 1, 1, 1) - 0.5) * 0.2
    # erase a box of up to 40 % of each side on half the frames
    size = (0.1 + 0.3 * r(n, 2)) * torch.tensor([h, w])
    corner = r(n, 2) * (torch.tensor([h, w]) - size)
    ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    box = ((ys >= corner[:, 0, None, None]) & (ys < (corner[:, 0] + size[:, 0])[:, None, None])
           & (xs >= corner[:, 1, None, None]) & (xs < (corner[:, 1] + size[:, 1])[:, None, None])
           & (r(n) < 0.5)[:, None, None])
    x = torch.where(box[:, None], r(n, 1, 1, 1).expand_as(x), x)
    x = x + 0.03 * torch.randn(x.shape, generator=gen)
    return x.clamp(0.0, 1.0).view(b, t, h, w).to(video.device)


def video_contrastive_loss(model, video, video_lens, gen, head, anchors_per_clip: int = 8,
                           temperature: float = 0.1) -> torch.Tensor:
    """Contrastive pretraining of the visual front end (the AVSR paper pretrains its frame-level
    visual front end with MoCo v2): two augmented views of each clip go through the front end (the
    frame CNN and its temporal convolution); each sampled frame of one view must pick out the same
    frame of the other view among all sampled frames of the batch (InfoNCE, both directions).
    Through the video encoder as well, the loss fell to ~0.07 and lip reading did not gain
    (``benchmarks/RESULTS.md``)."""
    views = [augment_frames(video, gen) for _ in range(2)]
    feats = [model.video_front(v, video_lens) for v in views]           # 2 x [B, T, d]
    # sample anchor frames among each clip's valid frames
    lens = video_lens.cpu()
    order = torch.rand(len(lens), video.shape[1], generator=gen)
    order = order.masked_fill(~model_.length_mask(lens, video.shape[1]), 2.0)
    pick = order.argsort(1)[:, :min(anchors_per_clip, int(lens.min()))]     # distinct valid frames
    rows = torch.arange(len(lens))[:, None].expand_as(pick)
    z = [F.normalize(head(f[rows.reshape(-1), pick.reshape(-1)]), dim=-1) for f in feats]
    logits = z[0] @ z[1].T / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def text_targets(texts, device):
    ids = [model_.text_to_ids(t) for t in texts]
    flat = torch.tensor([c for row in ids for c in row], device=device)
    lens = torch.tensor([len(r) for r in ids], device=device)
    longest = max(len(r) for r in ids) + 1
    dec_in = torch.full((len(ids), longest), model_.EOS, device=device)
    dec_out = torch.full((len(ids), longest), -100, device=device)
    for b, row in enumerate(ids):
        dec_in[b, 1: len(row) + 1] = torch.tensor(row)
        dec_in[b, 0] = model_.SOS
        dec_out[b, : len(row)] = torch.tensor(row)
        dec_out[b, len(row)] = model_.EOS
    return flat, lens, dec_in, dec_out


def joint_loss(model, batch, keep_audio=None, keep_video=None, label_smoothing=0.0, modality="av"):
    """``(loss, ctc, attention)``: ``0.3 * CTC + 0.7 * attention cross-entropy`` per character."""
    audio, audio_lens, video, video_lens, texts = batch
    enc = model.encode(audio, audio_lens, video, video_lens, modality=modality,
                       keep_audio=keep_audio, keep_video=keep_video)
    flat, lens, dec_in, dec_out = text_targets(texts, audio.device)
    log_probs = model.ctc_log_probs(enc)
    ctc = F.ctc_loss(log_probs.transpose(0, 1), flat, enc.lengths, lens, blank=model_.BLANK,
                     reduction="sum", zero_infinity=True) / lens.sum()
    logits = model.decoder_forward(enc, dec_in)
    att = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), dec_out.reshape(-1),
                          ignore_index=-100, label_smoothing=label_smoothing)
    return CTC_WEIGHT * ctc + (1 - CTC_WEIGHT) * att, ctc, att


@torch.no_grad()
def evaluate(model, store: UtteranceStore, modality: str = "av", batch_size: int = 16) -> dict:
    """Held-out joint / CTC / attention losses and the greedy-CTC CER on ``store`` (clean)."""
    model.eval()
    items = sorted(range(len(store)), key=store.num_frames)
    totals, chars, refs, hyps = [0.0, 0.0, 0.0], 0, [], []
    for c in range(0, len(items), batch_size):
        batch = make_batch({0: store}, [(0, i) for i in items[c:c + batch_size]], None, None,
                           model.device, noisy=False)
        n = sum(len(t) for t in batch[4])
        losses = joint_loss(model, batch, modality=modality)
        totals = [a + float(b) * n for a, b in zip(totals, losses)]
        chars += n
        audio, audio_lens, video, video_lens, texts = batch
        enc = model.encode(audio, audio_lens, video, video_lens, modality=modality)
        hyps += [model_.ids_to_text(h) for h in model_.ctc_greedy_ids(model.ctc_log_probs(enc), enc.lengths)]
        refs += texts
    model.train()
    return {"loss": totals[0] / chars, "ctc_loss": totals[1] / chars, "attention_loss": totals[2] / chars,
            "cer_greedy": char_error_rate(refs, hyps)}


# ----------------------------------------------------------------------------- stages

def _optimizer(params, preset: Preset):
    return torch.optim.AdamW(params, lr=preset.lr, betas=(0.9, 0.98), weight_decay=preset.weight_decay)


def _run(desc, steps, preset, params, loss_fn, progress, log):
    """A budgeted loop of ``loss_fn(step)``; returns (steps done, seconds, last loss)."""
    params = [p for p in params if p.requires_grad]
    opt = _optimizer(params, preset)
    budget = Budget(steps, None, desc, progress)
    step, loss_ema = 0, None
    while (progress_share := budget.progress(step)) is not None:
        lr = cosine_lr(preset.lr, preset.warmup, preset.min_lr_ratio, step, progress_share)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        value = loss.item()
        loss_ema = value if loss_ema is None else 0.98 * loss_ema + 0.02 * value
        step += 1
        budget.tick()
        if log is not None:
            log(step, loss_ema)
    return step, budget.close(), loss_ema


def pretrain(model, sets, preset: Preset, seed: int, progress: bool) -> dict:
    """Stage 1: masked log-mel regression (audio front end + encoder), then the visual front end's
    objective (``preset.video_ssl``), each on single-modality utterances of both sets."""
    stores = {0: sets["labelled"], 1: sets["unlabelled"]}
    pool = [(s, i) for s in stores for i in range(len(stores[s]))]
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    audio_params = (list(model.audio_front.parameters()) + list(model.audio_encoder.parameters())
                    + list(model.audio_ssl_head.parameters()))
    masked_params = list(model.video_encoder.parameters()) + list(model.video_ssl_head.parameters())
    if preset.video_ssl not in VIDEO_SSL_OBJECTIVES:
        raise ValueError(f"video_ssl must be one of {sorted(VIDEO_SSL_OBJECTIVES)}, got {preset.video_ssl!r}")
    stages = [("audio", preset.audio_pretrain_steps, audio_params, audio_ssl_loss, ())]
    if preset.video_ssl.startswith("contrastive"):
        d = model.config.d_model        # the projection head is the recipe's, not saved
        head = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.GELU(), torch.nn.Linear(d, 64)).to(model.device)
        contrastive = lambda m, v, lens, g: video_contrastive_loss(m, v, lens, g, head)     # noqa: E731
        stages.append(("video" if preset.video_ssl == "contrastive" else "video_contrastive",
                       preset.video_pretrain_steps, list(model.video_front.parameters()) + list(head.parameters()),
                       contrastive, ()))
    if preset.video_ssl == "masked_pixels":
        stages.append(("video", preset.video_pretrain_steps, list(model.video_front.parameters()) + masked_params,
                       video_ssl_loss, ()))
    elif preset.video_ssl == "contrastive+masked_pixels":
        # the contrastive front end stays as it is; masked frames train the video encoder on top of it
        stages.append(("video_masked", preset.video_pretrain_steps, masked_params, video_ssl_loss,
                       tuple(model.video_front.parameters())))
    for name, steps, params, lossf, frozen in stages:
        if steps <= 0:
            continue

        def loss_fn(step, name=name, lossf=lossf):
            items = rng.sample(pool, preset.batch_size)
            items.sort(key=lambda it: stores[it[0]].num_frames(it[1]))
            batch = make_batch(stores, items, None, None, model.device, noisy=False)
            if name == "audio":
                return lossf(model, batch[0], batch[1], gen)
            return lossf(model, batch[2], batch[3], gen)

        for p in frozen:
            p.requires_grad_(False)
        try:
            done, secs, last = _run(f"pretrain {name}", steps, preset, params, loss_fn, progress, None)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        objective = {"audio": "masked log-mel frame regression (MSE)",
                     "video_contrastive": VIDEO_SSL_OBJECTIVES["contrastive"],
                     "video_masked": "masked frame pixel prediction (MSE), video encoder on the frozen front end"}
        out[name] = {"steps": done, "train_s": round(secs, 1), "final_loss": round(last, 4),
                     "objective": objective.get(name, VIDEO_SSL_OBJECTIVES[preset.video_ssl])}
    return out


def finetune(model, sets, preset: Preset, seed: int, progress: bool) -> dict:
    """Stage 2: fused CTC + attention training on the labelled set."""
    store = sets["labelled"]
    rng = random.Random(seed + 1)
    nrng = np.random.default_rng(seed + 2)
    batches = length_batches(store, preset.batch_size, rng)
    history, seen = [], {"chars": 0, "utterances": 0}
    start = time.perf_counter()

    def loss_fn(step):
        idx = next(batches)
        batch = make_batch({0: store}, [(0, i) for i in idx], preset, nrng, model.device, noisy=True)
        choice = nrng.choice(3, size=len(idx), p=list(preset.modality_probs))
        keep_audio = torch.tensor(choice != 2, device=model.device)
        keep_video = torch.tensor(choice != 1, device=model.device)
        seen["chars"] += sum(len(t) for t in batch[4])
        seen["utterances"] += len(idx)
        loss, _, _ = joint_loss(model, batch, keep_audio, keep_video, preset.label_smoothing)
        return loss

    def log(step, loss_ema):
        if step % preset.eval_every == 0 or step == preset.finetune_steps:
            ev = evaluate(model, sets["heldout"])
            history.append({"step": step, "tokens": seen["chars"], "seconds": time.perf_counter() - start,
                            "train_loss": round(loss_ema, 4), "heldout_loss": ev["loss"],
                            "heldout_cer_greedy": round(ev["cer_greedy"], 4)})
            tqdm.write(f"step {step}: train {loss_ema:.3f}, held-out {ev['loss']:.3f}, "
                       f"greedy CER {ev['cer_greedy']:.3f}")

    done, secs, last = _run("fine-tune", preset.finetune_steps, preset, list(model.parameters()), loss_fn,
                            progress, log)
    return {"steps": done, "train_s": round(secs, 1), "final_train_loss": round(last, 4),
            "tokens_seen": seen["chars"], "utterances_seen": seen["utterances"], "history": history}


# ----------------------------------------------------------------------------- the recipe

def train_avsr(out, preset_name: str = "default", pretrain_stages: bool = True, finetune_steps=None,
               pretrain_steps=None, device="cpu", seed: int = 0, threads=None, progress=True,
               name: str | None = None, tokenizer_from: str | None = None, video_ssl: str | None = None,
               snr_range: tuple | None = None) -> dict:
    """Train (and write) one recogniser with its card; returns the card. ``tokenizer_from``: a zoo
    name whose ``tokenizer.json`` this checkpoint shares (none is written here)."""
    if threads:
        torch.set_num_threads(threads)
    wall_start = time.perf_counter()
    preset = PRESETS[preset_name]
    if finetune_steps is not None:
        preset = dataclasses.replace(preset, finetune_steps=finetune_steps)
    if pretrain_steps is not None:
        preset = dataclasses.replace(preset, audio_pretrain_steps=pretrain_steps, video_pretrain_steps=pretrain_steps)
    if video_ssl is not None:
        preset = dataclasses.replace(preset, video_ssl=video_ssl)
    if snr_range is not None:
        lo, hi = (float(v) for v in snr_range)
        if not lo <= hi:
            raise ValueError(f"snr_range: low must not exceed high, got {snr_range}")
        preset = dataclasses.replace(preset, snr_range=(lo, hi))
    if not pretrain_stages:
        preset = dataclasses.replace(preset, audio_pretrain_steps=0, video_pretrain_steps=0)
    data_start = time.perf_counter()
    sets = dataset(preset, progress)
    data_s = time.perf_counter() - data_start
    torch.manual_seed(seed)
    config = model_.AVSRConfig(d_model=preset.d_model, ffn=preset.ffn, audio_layers=preset.audio_layers,
                               video_layers=preset.video_layers, fusion_layers=preset.fusion_layers,
                               decoder_layers=preset.decoder_layers, conv_kernel=preset.conv_kernel,
                               num_heads=4 if preset.d_model % 4 == 0 else 1,
                               decoder_heads=max(1, preset.d_model // 64))
    model = model_.AVSRModel(config).to(device)
    model.train()
    stage1 = pretrain(model, sets, preset, seed, progress) if pretrain_stages else {}
    stage2 = finetune(model, sets, preset, seed, progress)
    model.eval()
    ev = evaluate(model, sets["heldout"])
    ev_audio = evaluate(model, sets["heldout"], modality="audio")
    ev_video = evaluate(model, sets["heldout"], modality="video")
    out = Path(out)
    model_.save(model, out)
    train_s = stage2["train_s"] + sum(s["train_s"] for s in stage1.values())
    command = "python -m leapdec.train avsr " + shlex.join(
        ["--out", str(out), "--preset", preset_name] + ([] if pretrain_stages else ["--no-pretrain"])
        + ["--finetune-steps", str(preset.finetune_steps)]
        + (["--pretrain-steps", str(pretrain_steps)] if pretrain_steps is not None and pretrain_stages else [])
        + (["--video-ssl", video_ssl] if video_ssl is not None and pretrain_stages else [])
        + (["--snr-range", *(f"{v:g}" for v in preset.snr_range)] if snr_range is not None else [])
        + ["--device", str(device), "--seed", str(seed)] + (["--threads", str(threads)] if threads else [])
        + (["--tokenizer-from", tokenizer_from] if tokenizer_from else []))
    name = name or out.name
    tok = model_.vocabulary_tokenizer()
    from leapdec.train.tokenizer import tokenizer_hash
    card = {
        "name": name, "card_version": cards.CARD_VERSION,
        "summary": (f"Audio-visual speech recogniser (characters, CTC + attention) on synthetic espeak-ng speech "
                    f"with rendered mouth video, trained by leapdec.train.avsr "
                    f"({'with' if pretrain_stages else 'WITHOUT'} self-supervised pretraining of the front ends); "
                    f"decode with leapdec.speech.transcribe."),
        "objective": "avsr",
        "command": command, "date": cards.now_iso(), "machine": cards.machine_info(device),
        "recipe": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(preset).items()},
                   "preset": preset_name, "pretrain": pretrain_stages, "seed": seed, "ctc_weight": CTC_WEIGHT,
                   "optimizer": "AdamW(betas=(0.9, 0.98)), grad clip 1.0",
                   "schedule": "linear warmup, cosine to min_lr_ratio over each stage's steps",
                   "loss": "0.3 * CTC + 0.7 * attention CE (label smoothing) per character",
                   "augmentation": "speech-shaped noise at U(snr_range) dB on noise_prob of utterances; "
                                   "modality dropout (av, audio only, video only) with modality_probs"},
        "corpus": sets["info"],
        "training": {"steps": stage2["steps"] + sum(s["steps"] for s in stage1.values()),
                     "finetune_steps": stage2["steps"], "tokens_seen": stage2["tokens_seen"],
                     "utterances_seen": stage2["utterances_seen"], "pretraining": stage1,
                     "finetune_s": stage2["train_s"], "data_s": round(data_s, 1),
                     "train_s": round(train_s, 1), "wall_s": round(time.perf_counter() - wall_start, 1),
                     "final_train_loss": stage2["final_train_loss"], "history": stage2["history"]},
        "eval": {"heldout_loss": ev["loss"], "heldout_ctc_loss": ev["ctc_loss"],
                 "heldout_attention_loss": ev["attention_loss"],
                 "heldout_cer_greedy_av_clean": round(ev["cer_greedy"], 4),
                 "heldout_cer_greedy_audio_clean": round(ev_audio["cer_greedy"], 4),
                 "heldout_cer_greedy_video_clean": round(ev_video["cer_greedy"], 4),
                 "heldout_utterances": len(sets["heldout"]),
                 "note": "losses per character; held-out sentences each contain a word never seen in training"},
        "model": {"architecture": "AVSRModel", "kind": model_.KIND,
                  "parameters": model_.count_parameters(model), **dataclasses.asdict(config),
                  "storage_dtype": "float32", "tokenizer_sha256": tokenizer_hash(tok)},
    }
    files = ["config.json", "model.safetensors", "tokenizer.json"]
    if tokenizer_from:
        (out / "tokenizer.json").unlink()
        card["tokenizer_from"] = tokenizer_from
        files.remove("tokenizer.json")
    card["files"] = cards.file_entries(out, files)
    cards.write_card(out, card)
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leapdec.train avsr", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--no-pretrain", action="store_true", help="skip stage 1 (the ablation)")
    parser.add_argument("--finetune-steps", type=int, help="stage 2 optimizer steps")
    parser.add_argument("--pretrain-steps", type=int, help="stage 1 optimizer steps per front end")
    parser.add_argument("--video-ssl", choices=sorted(VIDEO_SSL_OBJECTIVES),
                        help="the visual side's pretraining objective (default: the preset's, contrastive+masked_pixels)")
    parser.add_argument("--snr-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="fine-tuning noise SNRs in dB, drawn uniformly (default: the preset's, -5 20)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--tokenizer-from", help="zoo model whose tokenizer.json this one shares (not copied)")
    args = parser.parse_args(argv)
    if not data.espeak_available():
        parser.error(f"espeak-ng is not installed: {data.INSTALL_HINT}")
    card = train_avsr(args.out, args.preset, not args.no_pretrain, args.finetune_steps, args.pretrain_steps,
                      args.device, args.seed, args.threads, not args.no_progress,
                      tokenizer_from=args.tokenizer_from, video_ssl=args.video_ssl, snr_range=args.snr_range)
    ev = card["eval"]
    print(f"{args.out}: {card['training']['steps']} steps, held-out loss {ev['heldout_loss']:.4f}, greedy CER "
          f"AV {ev['heldout_cer_greedy_av_clean']:.3f} / audio {ev['heldout_cer_greedy_audio_clean']:.3f} / "
          f"video {ev['heldout_cer_greedy_video_clean']:.3f}, {card['training']['wall_s']:.0f} s")
    return 0
