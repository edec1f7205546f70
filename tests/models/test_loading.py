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


def test_small_cpu_models_load_packed(hf_tiny, monkeypatch):
    """load_model keeps a packed copy of a small CPU model's linear weights (the few-row decode
    path reads it); above PACK_BY_DEFAULT_BYTES only when weight_dtype asks; outputs agree."""
    import leapdec.models.linear as linear_mod
    from leapdec.decoding import generate

    path, _ = hf_tiny("llama", tie_word_embeddings=True)
    packed = load_model(path)
    assert packed.lm_head.packed_weight() is not None
    assert packed.lm_head.weight is packed.embed_tokens.weight        # float32: still tied
    monkeypatch.setattr(linear_mod, "PACK_BY_DEFAULT_BYTES", 0)
    plain = load_model(path)
    assert plain.lm_head.packed_weight() is None
    assert load_model(path, weight_dtype="float32").lm_head.packed_weight() is not None
    with torch.no_grad():
        torch.testing.assert_close(packed.logits(IDS), plain.logits(IDS))
    prompts = [IDS[0].tolist()[:5], IDS[0].tolist()[:3]]
    assert generate(packed, prompts, method="ar", max_new_tokens=12).tokens == \
        generate(plain, prompts, method="ar", max_new_tokens=12).tokens


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


def test_tied_config_with_a_different_stored_head_keeps_the_head(tmp_path, hf_tiny):
    """transformers keeps a stored lm_head.weight that differs from the embeddings even when the
    config says tie_word_embeddings (and warns); loading it tied put the logits off."""
    import transformers

    path = _copy(hf_tiny("llama", tie_word_embeddings=True)[0], tmp_path / "ckpt")
    state = load_file(str(path / "model.safetensors"))
    state["lm_head.weight"] = state["model.embed_tokens.weight"] * -0.5 + 0.25
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="keeping the stored head untied"):
        model = load_checkpoint(path)
    assert model.lm_head.weight is not model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, state["lm_head.weight"])
    assert torch.equal(model.embed_tokens.weight, state["model.embed_tokens.weight"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path)).float().eval()
    with torch.no_grad():
        torch.testing.assert_close(model.logits(IDS), hf(IDS).logits, atol=1e-4, rtol=1e-4)
    # an equal stored copy stays tied, silently
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_checkpoint(path)
    assert model.lm_head.weight is model.embed_tokens.weight


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_unreadable_safetensors_name_the_file(tmp_path, hf_tiny, damage):
    path = _copy(hf_tiny("llama")[0], tmp_path / "ckpt")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a safetensors file" * 9,
                         "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"ckpt/model\.safetensors is not a readable safetensors file"):
        load_checkpoint(path)


def test_unreadable_companion_weights_name_the_file(tmp_path):
    from leapdec.models.drafter import FalconDrafter
    from leapdec.models.heads import MedusaHeads

    heads = tmp_path / "heads"
    heads.mkdir()
    (heads / "config.json").write_text(json.dumps(MedusaHeads(2, 64, 128, 1).config))
    (heads / "medusa_heads.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match=r"heads/medusa_heads\.safetensors is not a readable safetensors"):
        MedusaHeads.load(heads)
    model = tiny_model("llama", seed=1)
    drafter = FalconDrafter.for_base(model, num_layers=1, block_size=2).save(tmp_path / "drafter")
    weights = drafter / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"drafter/model\.safetensors is not a readable safetensors"):
        FalconDrafter.load(drafter)


def test_small_cpu_companions_load_packed(tmp_path):
    """The companions' loader packs a small CPU companion (the Falcon drafter's layers) and the
    output stays identical to greedy AR."""
    from leapdec.decoding import generate
    from leapdec.engine import companions
    from leapdec.models.drafter import FalconDrafter
    from leapdec.models.linear import Linear
    from leapdec.models.testing import tiny_model

    model = tiny_model(seed=0).eval()
    FalconDrafter.for_base(model, num_layers=1, block_size=2).save(tmp_path / "falcon")
    companions.clear()
    out = generate(model, [[5, 6, 7, 8]], method="falcon", drafter=str(tmp_path / "falcon"), max_new_tokens=16)
    loaded = next(v for k, v in companions._CACHE.items() if k[0] == "falcon")
    layers = [m for m in loaded.modules() if isinstance(m, Linear)]
    assert layers and all(m.packed_weight() is not None for m in layers)
    assert out.tokens == generate(model, [[5, 6, 7, 8]], method="ar", max_new_tokens=16).tokens
    companions.clear()
