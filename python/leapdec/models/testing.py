"""Tiny random models for tests and examples (CPU, seconds to build).

``tiny_model`` builds a leapdec ``Transformer`` directly; ``save_hf_tiny`` builds the same kind
of model with ``transformers`` (a test dependency), saves it as a checkpoint directory and
returns the ``transformers`` model, for parity tests.
"""

from __future__ import annotations

import torch

from leapdec.models.config import ModelConfig
from leapdec.models.transformer import Transformer

_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def tiny_config(model_type: str = "llama", **overrides) -> ModelConfig:
    """A small ``ModelConfig`` (vocab 128, hidden 64, 2 layers, 4 query / 2 KV heads); Qwen3
    gets ``head_dim=24`` (not hidden/heads) unless overridden."""
    fields = dict(_TINY, model_type=model_type)
    if model_type == "qwen3":
        fields["head_dim"] = 24
    fields.update(overrides)
    return ModelConfig(**fields)


def _perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Make biases and norm weights non-trivial so that parity tests exercise them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))


def tiny_model(model_type: str = "llama", seed: int = 0, init_std: float = 0.1, device="cpu",
               dtype=torch.float32, **overrides) -> Transformer:
    """A random ``Transformer`` of ``tiny_config(model_type, **overrides)`` in eval mode.

    ``init_std=0.1`` (not the usual 0.02) gives peaked next-token distributions, so greedy
    decoding has no near-ties and exact-match tests are stable."""
    g = torch.Generator().manual_seed(seed)
    model = Transformer(tiny_config(model_type, **overrides), init_std=None)
    model.reset_parameters(init_std, generator=g)
    _perturb(model, g)
    return model.to(device=device, dtype=dtype).eval()


_HF = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


def save_hf_tiny(path, model_type: str = "llama", seed: int = 0, init_std: float = 0.1, **overrides):
    """Build a random ``transformers`` model of ``tiny_config(model_type, **overrides)`` (float32),
    save it to ``path`` with ``save_pretrained`` and return it (eval mode)."""
    import transformers

    cfg = tiny_config(model_type, **overrides)
    hf_fields = {k: v for k, v in cfg.to_hf_dict().items()
                 if k not in ("architectures", "model_type", "leapdec", "torch_dtype")}
    config_cls, model_cls = (getattr(transformers, n) for n in _HF[model_type])
    hf_config = config_cls(**hf_fields, initializer_range=init_std)
    torch.manual_seed(seed)
    model = model_cls(hf_config).float().eval()
    _perturb(model, torch.Generator().manual_seed(seed + 1))
    model.save_pretrained(str(path))
    return model
