"""The image data of ``leapdec.images``: scikit-learn's ``load_digits`` (1,797 8x8 images, grey
levels 0..16) upsampled to 16x16 (bilinear) and quantised to 16 levels, so an image is 256
tokens in 0..15; the class is a prefix token.

Token ids of the generator's vocabulary (27 ids):

* ``0..15``  grey levels (level q stands for the value ``q * 16 / 15`` on the digits' 0..16 scale)
* ``16``     the mask token
* ``17..26`` the class tokens of digits 0..9

``split_digits`` gives a fixed (seeded, stratified) train / held-out split; the recipe trains
on the first part only, and the benchmark scores samples against the held-out images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SIDE = 16                      # generated images are SIDE x SIDE tokens
NUM_PIXELS = SIDE * SIDE       # 256
LEVELS = 16                    # grey levels 0..15
MASK_ID = LEVELS               # 16
CLASS_OFFSET = LEVELS + 1      # class c is token 17 + c
NUM_CLASSES = 10
VOCAB_SIZE = CLASS_OFFSET + NUM_CLASSES   # 27
MAX_VALUE = 16.0               # the digits' scale: 0..16
HELDOUT_FRACTION = 0.2
SPLIT_SEED = 0


def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:   # pragma: no cover - depends on the environment
        raise ImportError("leapdec.images needs scikit-learn: pip install 'leapdec[images]'") from e
    return load_digits()


@dataclass
class DigitsSplit:
    """``images [n, 8, 8]`` float on 0..16 and ``labels [n]`` int64 of one split."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())


def split_digits(heldout_fraction: float = HELDOUT_FRACTION, seed: int = SPLIT_SEED
                 ) -> tuple[DigitsSplit, DigitsSplit]:
    """(train, held-out) splits of the 1,797 digits, stratified by class, fixed by ``seed``."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    d = _sklearn_digits()
    images = torch.tensor(d.images, dtype=torch.float32)
    labels = torch.tensor(d.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    train_idx, held_idx = [], []
    for c in range(NUM_CLASSES):                       # stratified: the same share of every class
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_held = round(idx.numel() * heldout_fraction)
        held_idx.append(idx[:n_held])
        train_idx.append(idx[n_held:])
    tr, he = torch.cat(train_idx).sort().values, torch.cat(held_idx).sort().values
    return DigitsSplit(images[tr], labels[tr]), DigitsSplit(images[he], labels[he])


def upsample(images_8x8: torch.Tensor) -> torch.Tensor:
    """``[n, 8, 8]`` on 0..16 -> ``[n, 16, 16]`` (bilinear, half-pixel centres)."""
    x = images_8x8.float().unsqueeze(1)
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False).squeeze(1)


def quantise(images: torch.Tensor) -> torch.Tensor:
    """Values on 0..16 -> grey-level tokens 0..15 (int64), the nearest level."""
    return torch.round(images.float().clamp(0, MAX_VALUE) * (LEVELS - 1) / MAX_VALUE).long()


def dequantise(tokens: torch.Tensor) -> torch.Tensor:
    """Grey-level tokens 0..15 -> float values on 0..16."""
    return tokens.float() * (MAX_VALUE / (LEVELS - 1))


def encode(images_8x8: torch.Tensor) -> torch.Tensor:
    """``[n, 8, 8]`` digits -> ``[n, 256]`` tokens (row-major 16x16)."""
    return quantise(upsample(images_8x8)).reshape(-1, NUM_PIXELS)


def decode(tokens: torch.Tensor) -> torch.Tensor:
    """``[n, 256]`` tokens -> ``[n, 16, 16]`` images on 0..16."""
    return dequantise(tokens).reshape(-1, SIDE, SIDE)


def pool_8x8(images_16: torch.Tensor) -> torch.Tensor:
    """``[n, 16, 16]`` -> ``[n, 8, 8]`` by 2x2 averages (the digits' own resolution)."""
    return F.avg_pool2d(images_16.float().unsqueeze(1), 2).squeeze(1)


def class_token(labels: torch.Tensor) -> torch.Tensor:
    return labels.long() + CLASS_OFFSET
