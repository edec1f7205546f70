"""Models: the Llama / Qwen2 / Qwen3 ``Transformer`` (plain and paged forwards), its
``ModelConfig``, Hugging Face checkpoint loading/saving and GGUF loading (``leapdec.models.gguf``)."""

from leapdec.models.config import ConfigError, ModelConfig
from leapdec.models.gguf import GGUFError, load_gguf, load_gguf_tokenizer
from leapdec.models.loading import CheckpointError, load_checkpoint, save_checkpoint
from leapdec.models.transformer import StepInput, Transformer

__all__ = ["CheckpointError", "ConfigError", "GGUFError", "ModelConfig", "StepInput", "Transformer",
           "load_checkpoint", "load_gguf", "load_gguf_tokenizer", "save_checkpoint"]
