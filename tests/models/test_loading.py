import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import leapdec.zoo as zoo
from leapdec.api import load_model, load_tokenizer
from leapdec.models import CheckpointError, ConfigError, load_checkpoint, save_checkpoint
from leapdec.models.testing import tiny_model

IDS = torch.tensor([[3, 17, 99, 4, 56, 21, 8]])


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_directory_config_and_weights(tmp_path, hf_tiny):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path)
    path = _copy(hf_tiny("llama")[0], tmp_path / "ckpt")
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="model.safetensors.*pytorch_model.bin"):
        load_checkpoint(path)


def test_unknown_architecture(tmp_path, hf_tiny):
    path = _copy(hf_tiny("llama")[0], tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="architectures.*MistralForCausalLM"):
        load_checkpoint(path)


def test_missing_and_mismatched_tensors(tmp_path, hf_tiny):
    path = _copy(hf_tiny("llama")[0], tmp_path / "ckpt")
    weights = load_file(str(path / "model.safetensors"))
    broken = {k: v for k, v in weights.items() if k != "model.layers.1.mlp.up_proj.weight"}
    save_file(broken, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) model\.layers\.1\.mlp\.up_proj\.weight"):
        load_checkpoint(path)
    broken = dict(weights, **{"model.layers.0.self_attn.k_proj.weight": torch.zeros(16, 64)})
    save_file(broken, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"k_proj\.weight.*shape \(16, 64\).*\(32, 64\)"):
        load_checkpoint(path)
    broken = dict(weights, **{"model.layers.2.mlp.up_proj.weight": torch.zeros(128, 64)})
    save_file(broken, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.mlp\.up_proj\.weight.*does not describe"):
        load_checkpoint(path)


def test_sharded_checkpoint_and_missing_shard(tmp_path, hf_tiny):
    _, hf = hf_tiny("qwen2")
    path = tmp_path / "sharded"
    hf.save_pretrained(str(path), max_shard_size="40KB")
    assert (path / "model.safetensors.index.json").is_file()
    model = load_checkpoint(path)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(IDS), hf(IDS).logits, atol=1e-4, rtol=1e-4)
    shard = sorted(path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        load_checkpoint(path)


def test_tied_embeddings_checkpoint(hf_tiny):
    path, hf = hf_tiny("qwen3", tie_word_embeddings=True)
    model = load_checkpoint(path)
    assert model.lm_head.weight is model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(model.logits(IDS), hf(IDS).logits, atol=1e-4, rtol=1e-4)


def test_dtype_option(hf_tiny):
    path, _ = hf_tiny("llama")
    assert load_checkpoint(path).dtype == torch.float32
    model = load_checkpoint(path, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with pytest.raises(ValueError, match="dtype"):
        load_checkpoint(path, dtype="int8")


@pytest.mark.parametrize("arch, extra", [("llama", {"tie_word_embeddings": True}),
                                         ("qwen2", {}), ("qwen3", {"causal": False, "mask_token_id": 127})])
def test_save_checkpoint_round_trip_readable_by_transformers(tmp_path, arch, extra):
    import transformers

    model = tiny_model(arch, seed=21, **extra)
    tokenizer = _tokenizer()
    save_checkpoint(model, tmp_path, tokenizer=tokenizer)
    again = load_checkpoint(tmp_path)
    assert again.config == model.config
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).float().eval()
    if model.config.causal:
        with torch.no_grad():
            torch.testing.assert_close(model.logits(IDS), hf(IDS).logits, atol=1e-4, rtol=1e-4)
    assert load_tokenizer(tmp_path).encode("a b").ids == tokenizer.encode("a b").ids


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_zoo_resolve_and_load_model(tmp_path, monkeypatch, hf_tiny):
    path, hf = hf_tiny("llama")
    assert zoo.resolve(path) == path.resolve()
    fake_zoo = tmp_path / "zoo"
    _copy(path, fake_zoo / "tiny-ar")
    (fake_zoo / "not-a-model").mkdir()
    monkeypatch.setattr(zoo, "ZOO_DIR", fake_zoo)
    assert zoo.available() == ["tiny-ar"]
    assert zoo.resolve("tiny-ar") == fake_zoo / "tiny-ar"
    model = load_model("tiny-ar")
    assert model.checkpoint_dir == (fake_zoo / "tiny-ar").resolve()
    with torch.no_grad():
        torch.testing.assert_close(model.logits(IDS), hf(IDS).logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(FileNotFoundError, match="unknown model 'stdlib-xx'.*tiny-ar"):
        load_model("stdlib-xx")
    with pytest.raises(FileNotFoundError, match="without a config.json"):
        zoo.resolve(fake_zoo / "not-a-model")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer("tiny-ar")
