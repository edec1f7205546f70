"""Masked image generation: a class-conditional MaskGIT on scikit-learn's digits (16x16, 16 grey
levels) and two samplers, MaskGIT's and ReCAP's (context K/V reuse with cheap local steps).

    import leapdec.images
    model = leapdec.images.load("digits-maskgit")
    out = leapdec.images.sample(model, [0, 1, 2], method="recap", steps=16, seed=0)
    out.images        # [3, 16, 16] float on 0..16;  out.images_8x8: 2x2 averages
    out.stats         # model_calls, full_steps, local_steps, positions_evaluated, wall_s
"""

from __future__ import annotations

from pathlib import Path

from leapdec.images import data
from leapdec.images.model import MaskGIT, image_config
from leapdec.images.sampling import METHODS, OPTIONS, ImageSample, recap_groups, sample, unmask_counts


def load(name_or_path="digits-maskgit", device="cpu"):
    """An image generator from a zoo name (``"digits-maskgit"``) or a checkpoint folder."""
    import torch

    from leapdec import zoo
    from leapdec.images import model as model_

    path = zoo.resolve(name_or_path)
    if not model_.describe(path):
        raise ValueError(f"{name_or_path!r} is not an image generator (no leapdec.image section in its "
                         f"config.json); image models in the zoo: {', '.join(zoo_images()) or 'none'}")
    return model_.load(path, device=device, dtype=torch.float32)


def zoo_images() -> list[str]:
    """Zoo names of the image generators."""
    from leapdec import zoo
    from leapdec.images import model as model_

    return [n for n in zoo.available(include_gguf=False) if model_.describe(Path(zoo.ZOO_DIR) / n)]


def save_grid(images, path, ncol: int | None = None, labels=None, scale: int = 4) -> Path:
    """Write ``images [n, H, W]`` (0..16) as a PNG grid (white background, dark strokes)."""
    import math

    import numpy as np
    from PIL import Image

    imgs = images.detach().float().cpu().clamp(0, data.MAX_VALUE).numpy() / data.MAX_VALUE
    n, h, w = imgs.shape
    ncol = ncol or min(n, 10)
    nrow = math.ceil(n / ncol)
    pad = 1
    canvas = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad), dtype=np.float32) * 0.8
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = 1.0 - imgs[i]
    img = Image.fromarray((canvas * 255).astype(np.uint8), mode="L")
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    img.save(path)
    return path


__all__ = ["ImageSample", "METHODS", "MaskGIT", "OPTIONS", "data", "image_config", "load", "recap_groups",
           "sample", "save_grid", "unmask_counts", "zoo_images"]
