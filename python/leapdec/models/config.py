"""ModelConfig: the hyper-parameters of a Llama / Qwen2 / Qwen3 decoder, read from and written to
a Hugging Face ``config.json``.

leapdec's own fields (``causal``: False makes a LLaDA-style masked diffusion LM; ``mask_token_id``;
anything else in ``extra``) live under a ``"leapdec"`` key that ``transformers`` ignores.
Both rope layouts are read: transformers 4 (``rope_theta`` + ``rope_scaling``) and transformers 5
(``rope_parameters`` holding ``rope_theta`` and the scaling keys); the 4.x layout is written,
which both versions read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# architecture (config.json "architectures") -> model_type
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
MODEL_TYPES = {v: k for k, v in ARCHITECTURES.items()}
ROPE_TYPES = ("default", "linear", "llama3")


class ConfigError(ValueError):
    """A config.json that leapdec cannot turn into a model (names the offending field)."""


def _token_ids(value, name: str) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ConfigError(f"config field {name!r} must be a token id or a list of token ids, got {value!r}")
    return list(values)


@dataclass
class ModelConfig:
    """Shape and numerics of a decoder-only Transformer (names follow Hugging Face)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    model_type: str = "llama"                 # llama | qwen2 | qwen3
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None          # {"rope_type": "linear"|"llama3", "factor": ..., ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False              # llama/qwen3: bias on q,k,v,o (qwen2 always has q,k,v bias)
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    causal: bool = True                       # leapdec: False = bidirectional masked diffusion LM
    mask_token_id: int | None = None          # leapdec: the [MASK] token of a diffusion LM
    extra: dict = field(default_factory=dict)  # leapdec: other keys kept under "leapdec"

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.hidden_size and self.num_attention_heads:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def architecture(self) -> str:
        return MODEL_TYPES[self.model_type]

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias or self.model_type == "qwen2"

    @property
    def o_bias(self) -> bool:
        return self.attention_bias and self.model_type != "qwen2"

    @property
    def qk_norm(self) -> bool:
        """Qwen3 normalises each query and key head (RMSNorm over head_dim) before RoPE."""
        return self.model_type == "qwen3"

    @property
    def stop_token_ids(self) -> list[int]:
        return _token_ids(self.eos_token_id, "eos_token_id")

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"config field 'model_type' must be one of {sorted(MODEL_TYPES)}, "
                              f"got {self.model_type!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"config field 'num_attention_heads' ({self.num_attention_heads}) must be a "
                              f"multiple of 'num_key_value_heads' ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"config field 'head_dim' must be even for RoPE, got {self.head_dim}")
        if not self.rms_norm_eps > 0:
            raise ConfigError(f"config field 'rms_norm_eps' must be > 0, got {self.rms_norm_eps!r}")
        if not self.rope_theta > 0:
            raise ConfigError(f"config field 'rope_theta' must be > 0, got {self.rope_theta!r}")
        if self.mlp_bias and self.model_type != "llama":
            raise ConfigError(f"config field 'mlp_bias' is only supported for llama, not {self.model_type}")
        if self.rope_scaling is not None:
            self._validate_rope_scaling()
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id"):
            for tok in _token_ids(getattr(self, name), name):
                if tok >= self.vocab_size:
                    raise ConfigError(f"config field {name!r} = {tok} is outside the vocabulary "
                                      f"(vocab_size {self.vocab_size})")

    def _validate_rope_scaling(self) -> None:
        rs = self.rope_scaling
        if not isinstance(rs, dict):
            raise ConfigError(f"config field 'rope_scaling' must be a dict or null, got {rs!r}")
        kind = rs.get("rope_type", rs.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise ConfigError(f"config field 'rope_scaling.rope_type' = {kind!r} is not supported "
                              f"(supported: {', '.join(ROPE_TYPES)})")
        needed = {"linear": ["factor"],
                  "llama3": ["factor", "low_freq_factor", "high_freq_factor",
                             "original_max_position_embeddings"]}.get(kind, [])
        for key in needed:
            if not isinstance(rs.get(key), (int, float)):
                raise ConfigError(f"config field 'rope_scaling.{key}' is required for rope_type "
                                  f"{kind!r} and must be a number, got {rs.get(key)!r}")

    # ------------------------------------------------------------------ Hugging Face
    @classmethod
    def from_hf_dict(cls, d: dict) -> "ModelConfig":
        """Parse a Hugging Face ``config.json`` dict (Llama, Qwen2, Qwen3 causal LMs)."""
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
        archs = d.get("architectures")
        if archs:
            if not isinstance(archs, list) or archs[0] not in ARCHITECTURES:
                raise ConfigError(f"config field 'architectures' = {archs!r} is not supported "
                                  f"(supported: {', '.join(ARCHITECTURES)})")
            model_type = ARCHITECTURES[archs[0]]
        else:
            model_type = d.get("model_type")
            if model_type not in MODEL_TYPES:
                raise ConfigError(f"config field 'model_type' = {model_type!r} is not supported "
                                  f"(supported: {', '.join(MODEL_TYPES)}) and 'architectures' is missing")

        def req(name):
            if name not in d or d[name] is None:
                raise ConfigError(f"config.json is missing the required field {name!r}")
            return d[name]

        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"config field 'hidden_act' must be 'silu' (SwiGLU), got {act!r}")
        if d.get("use_sliding_window"):
            raise ConfigError("config field 'use_sliding_window' is true: sliding-window attention is not supported")
        if d.get("partial_rotary_factor", 1.0) != 1.0:
            raise ConfigError(f"config field 'partial_rotary_factor' must be 1.0, got {d['partial_rotary_factor']!r}")

        rope = d.get("rope_parameters")
        if isinstance(rope, dict):                     # transformers 5 layout
            theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        else:                                          # transformers 4 layout
            theta = d.get("rope_theta", 10000.0)
            scaling = dict(d["rope_scaling"]) if isinstance(d.get("rope_scaling"), dict) else d.get("rope_scaling")
        if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type", "default")) == "default":
            scaling = None

        ext = d.get("leapdec") or {}
        if not isinstance(ext, dict):
            raise ConfigError(f"config field 'leapdec' must be a JSON object, got {ext!r}")
        ext = dict(ext)
        causal = ext.pop("causal", True)
        if not isinstance(causal, bool):
            raise ConfigError(f"config field 'leapdec.causal' must be true or false, got {causal!r}")
        mask_token_id = ext.pop("mask_token_id", None)

        return cls(
            vocab_size=req("vocab_size"),
            hidden_size=req("hidden_size"),
            intermediate_size=req("intermediate_size"),
            num_hidden_layers=req("num_hidden_layers"),
            num_attention_heads=req("num_attention_heads"),
            num_key_value_heads=d.get("num_key_value_heads"),
            head_dim=d.get("head_dim"),
            model_type=model_type,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            rope_scaling=scaling,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
            causal=causal,
            mask_token_id=mask_token_id,
            extra=ext,
        )

    def to_hf_dict(self, dtype: str | None = None) -> dict:
        """A ``config.json`` dict that ``transformers`` (4.45+ and 5.x) loads as the same model."""
        d = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "use_cache": True,
        }
        if self.model_type == "llama":
            d["mlp_bias"] = self.mlp_bias
        if self.model_type in ("qwen2", "qwen3"):
            d["use_sliding_window"] = False
        if dtype is not None:
            d["torch_dtype"] = dtype
        d["leapdec"] = {"causal": self.causal, "mask_token_id": self.mask_token_id, **self.extra}
        return d

    @classmethod
    def from_json(cls, path) -> "ModelConfig":
        """Read ``config.json`` (a file, or a directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json at {path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        try:
            return cls.from_hf_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def save_json(self, path, dtype: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        path.write_text(json.dumps(self.to_hf_dict(dtype), indent=2) + "\n")
