"""Models: the Llama / Qwen2 / Qwen3 ``Transformer`` (plain and paged forwards), its
``ModelConfig`` and Hugging Face checkpoint loading/saving."""

from leapdec.models.config import ConfigError, ModelConfig
from leapdec.models.loading import CheckpointError, load_checkpoint, save_checkpoint
from leapdec.models.transformer import StepInput, Transformer

__all__ = ["CheckpointError", "ConfigError", "ModelConfig", "StepInput", "Transformer",
           "load_checkpoint", "save_checkpoint"]
