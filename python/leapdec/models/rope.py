"""The RoPE table the models and the fused RoPE op read: cos and sin of every (position,
frequency), with Hugging Face ``rope_scaling`` (``linear``, ``llama3``)."""

from __future__ import annotations

import math

import torch


def rope_cos_sin_cache(max_positions, rotary_dim, theta=10000.0, scaling=None, dtype=torch.float32):
    """``[max_positions, rotary_dim]``: cos of each (position, frequency) then sin (vLLM layout).

    ``scaling`` is a Hugging Face ``rope_scaling`` dict (``linear`` and ``llama3`` supported).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    pos = torch.arange(max_positions, dtype=torch.float64)
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind == "linear":
            pos = pos / float(scaling["factor"])
        elif kind == "llama3":
            factor = float(scaling["factor"])
            low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
            old_ctx = float(scaling["original_max_position_embeddings"])
            wavelen = 2 * math.pi / inv_freq
            smooth = (old_ctx / wavelen - low) / (high - low)
            scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
            mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
            is_mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
            inv_freq = torch.where(is_mid, mid, scaled)
        elif kind not in (None, "default"):
            raise ValueError(f"unsupported rope_scaling type {kind!r}")
    freqs = torch.outer(pos, inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(dtype)
