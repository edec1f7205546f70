import json

import pytest

from leapdec.models import ConfigError, ModelConfig

BASE = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 100,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 512, "eos_token_id": 2, "bos_token_id": 1,
}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def test_transformers4_and_5_rope_layouts_agree():
    v4 = ModelConfig.from_hf_dict({**BASE, "rope_theta": 500000.0, "rope_scaling": LLAMA3})
    v5 = ModelConfig.from_hf_dict({**BASE, "rope_parameters": {"rope_theta": 500000.0, **LLAMA3}})
    assert v4 == v5
    assert v4.rope_theta == 500000.0 and v4.rope_scaling["rope_type"] == "llama3"
    default = ModelConfig.from_hf_dict({**BASE, "rope_parameters": {"rope_theta": 1e4, "rope_type": "default"}})
    assert default.rope_scaling is None and default.rope_theta == 1e4


def test_derived_fields_per_architecture():
    llama = ModelConfig.from_hf_dict(BASE)
    assert llama.head_dim == 16 and not llama.qkv_bias and not llama.qk_norm
    qwen2 = ModelConfig.from_hf_dict({**BASE, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"})
    assert qwen2.qkv_bias and not qwen2.o_bias and not qwen2.qk_norm
    qwen3 = ModelConfig.from_hf_dict({**BASE, "architectures": ["Qwen3ForCausalLM"], "head_dim": 32})
    assert qwen3.qk_norm and qwen3.head_dim == 32 and not qwen3.qkv_bias
    biased = ModelConfig.from_hf_dict({**BASE, "attention_bias": True})
    assert biased.qkv_bias and biased.o_bias
    assert ModelConfig.from_hf_dict({**BASE, "eos_token_id": [2, 5]}).stop_token_ids == [2, 5]


def test_leapdec_fields_round_trip(tmp_path):
    cfg = ModelConfig.from_hf_dict({**BASE, "leapdec": {"causal": False, "mask_token_id": 99, "block": 32}})
    assert cfg.causal is False and cfg.mask_token_id == 99 and cfg.extra == {"block": 32}
    cfg.save_json(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["leapdec"] == {"causal": False, "mask_token_id": 99, "block": 32}
    assert raw["architectures"] == ["LlamaForCausalLM"]
    assert ModelConfig.from_json(tmp_path) == cfg


@pytest.mark.parametrize("change, field", [
    ({"architectures": ["GPT2LMHeadModel"]}, "architectures"),
    ({"hidden_size": None}, "hidden_size"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"num_attention_heads": 3}, "num_attention_heads"),
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"num_key_value_heads": 0}, "num_key_value_heads"),
    ({"head_dim": 0}, "head_dim"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling.low_freq_factor"),
    ({"eos_token_id": 100}, "eos_token_id"),
    ({"leapdec": {"causal": "no"}}, "leapdec.causal"),
    ({"use_sliding_window": True}, "use_sliding_window"),
])
def test_bad_config_names_the_field(change, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ModelConfig.from_hf_dict({**BASE, **change})


def test_unknown_model_type_without_architectures():
    d = {k: v for k, v in BASE.items() if k != "architectures"}
    assert ModelConfig.from_hf_dict(d).model_type == "llama"
    with pytest.raises(ConfigError, match="model_type"):
        ModelConfig.from_hf_dict({**d, "model_type": "mistral"})


def test_from_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ModelConfig.from_json(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json(tmp_path)
