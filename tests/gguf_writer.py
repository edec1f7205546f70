"""Writes GGUF files the way llama.cpp lays them out, for the GGUF loader and chat tests."""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

T = gguf.GGMLQuantizationType
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
_GGUF_NAMES = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}
_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
          "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}



def gguf_name(name: str) -> str:
    stem, suffix = name.rsplit(".", 1)
    if stem in _GGUF_NAMES:
        return f"{_GGUF_NAMES[stem]}.{suffix}"
    _, i, rest = stem.split(".", 2)
    return f"blk.{i}.{_LAYER[rest]}.{suffix}"


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of a Llama Q/K weight (what loading undoes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_kquant_rows(shape, qtype, rng) -> np.ndarray:
    """Random Q4_K/Q6_K blocks (gguf cannot quantize these types) with sane f16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    if qtype == T.Q4_K:          # d, dmin (f16) then 12 packed 6-bit scales/mins, then 128 nibbles
        raw[..., 0:2] = np.frombuffer(np.float16(4e-4).tobytes(), np.uint8)
        raw[..., 2:4] = np.frombuffer(np.float16(2e-4).tobytes(), np.uint8)
    else:                        # Q6_K: ql[128], qh[64], int8 scales[16], d (f16)
        raw[..., 208:210] = np.frombuffer(np.float16(1e-4).tobytes(), np.uint8)
    return raw.reshape(rows, -1)


def write_gguf(path, arch, model, qtype, vocab, chat_template=CHATML, drop=(), bad_type=None,
               write_arch=None, key_length=True, bos_token=None, eos_token="<|im_end|>"):
    """Write ``model`` (a leapdec Transformer) as llama.cpp would: GGUF names, Llama Q/K rows
    permuted, matrices as ``qtype`` (norms and biases F32); ``vocab`` is (tokens, token types,
    merges); ``bos_token`` / ``eos_token`` name the special tokens (bos default: token 0)."""
    tokens, types, merges = vocab
    cfg = model.config
    w = gguf.GGUFWriter(str(path), write_arch or arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    if key_length:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0 if bos_token is None else tokens.index(bos_token))
    w.add_eos_token_id(tokens.index(eos_token))
    w.add_add_bos_token(False)
    w.add_chat_template(chat_template)
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():
        gname = gguf_name(name)
        if gname in drop:
            continue
        a = p.detach().float().numpy().copy()
        proj = name.split(".")[-2]
        if arch == "llama" and proj in ("q_proj", "k_proj"):
            heads = cfg.num_attention_heads if proj == "q_proj" else cfg.num_key_value_heads
            a = permute_qk(a, heads)
        kind = bad_type if (bad_type is not None and gname == "blk.0.ffn_up.weight") else qtype
        if a.ndim == 1 or kind == T.F32:
            w.add_tensor(gname, a.astype(np.float32))
        elif kind == T.F16:
            w.add_tensor(gname, a.astype(np.float16))
        elif kind in (T.Q4_K, T.Q6_K):
            w.add_tensor(gname, random_kquant_rows(a.shape, kind, rng), raw_dtype=kind)
        else:
            w.add_tensor(gname, gguf.quants.quantize(a, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
