import pytest
import torch

from leapdec.models import StepInput, load_checkpoint
from leapdec.models.testing import tiny_model

ARCHS = ["llama", "qwen2", "qwen3"]
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}


def _ids(b, t, seed=0, vocab=128):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(hf_tiny, arch):
    path, hf = hf_tiny(arch)
    model = load_checkpoint(path)
    ids = _ids(2, 13)
    with torch.no_grad():
        ref = hf(ids).logits
    torch.testing.assert_close(model.logits(ids), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scaling", [LLAMA3, {"rope_type": "linear", "factor": 4.0}])
def test_rope_scaling_matches_transformers(hf_tiny, scaling):
    # llama3: positions beyond original_max_position_embeddings exercise every frequency band
    path, hf = hf_tiny("llama", rope_scaling=scaling, rope_theta=500000.0, head_dim=32,
                       num_attention_heads=2, num_key_value_heads=1)
    model = load_checkpoint(path)
    assert model.config.rope_scaling["rope_type"] == scaling["rope_type"]
    ids = _ids(1, 70, seed=1)
    with torch.no_grad():
        ref = hf(ids).logits
    torch.testing.assert_close(model.logits(ids), ref, atol=1e-4, rtol=1e-4)


def test_left_padding_is_transparent_and_matches_transformers(hf_tiny):
    path, hf = hf_tiny("qwen2")
    model = load_checkpoint(path)
    ids = _ids(2, 9, seed=2)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0
    logits = model.logits(ids, attention_mask=mask)
    alone = model.logits(ids[1:, 4:])
    torch.testing.assert_close(logits[1, 4:], alone[0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
    torch.testing.assert_close(logits[:, :][mask.bool()], ref[mask.bool()], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("page_size", [4, 16])
def test_paged_prefill_and_decode_match_plain_forward(arch, page_size):
    model = tiny_model(arch, seed=3)
    ids = _ids(3, 12, seed=4)
    ref = model.logits(ids)
    lens = [12, 5, 9]                               # ragged prompts, then decode the rest
    cache = model.new_cache(max_tokens=64, page_size=page_size)
    seqs = [cache.new_sequence() for _ in lens]
    with torch.no_grad():
        step = StepInput.extend(cache, seqs, [ids[i, :n].tolist() for i, n in enumerate(lens)])
        got = model.forward_paged(step, cache)
        torch.testing.assert_close(got, torch.cat([ref[i, :n] for i, n in enumerate(lens)]), atol=1e-5, rtol=1e-5)
        for pos in range(5, 12):
            live = [i for i, n in enumerate(lens) if pos >= n]
            step = StepInput.extend(cache, [seqs[i] for i in live], [[int(ids[i, pos])] for i in live])
            got = model.forward_paged(step, cache)
            torch.testing.assert_close(got, ref[live, pos], atol=1e-5, rtol=1e-5)


def test_paged_logits_indices_hidden_and_custom_mask():
    model = tiny_model("llama", seed=5)
    ids = _ids(1, 10, seed=6)
    ref_logits, ref_hidden = model(ids, return_hidden=True)
    cache = model.new_cache(max_tokens=32, page_size=4)
    seq = cache.new_sequence()
    with torch.no_grad():
        step = StepInput.extend(cache, [seq], [ids[0, :6].tolist()], logits="last")
        logits, hidden = model.forward_paged(step, cache, return_hidden=True)
        assert logits.shape == (1, 128) and hidden.shape == (6, 64)
        torch.testing.assert_close(logits[0], ref_logits[0, 5], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hidden, ref_hidden[0, :6], atol=1e-5, rtol=1e-5)
        # a causal custom mask over the 4 new tokens equals mask_mode="causal"
        tri = torch.ones(4, 4, dtype=torch.bool).tril()
        step = StepInput.extend(cache, [seq], [ids[0, 6:].tolist()], custom_mask=tri, logits=[1, 3])
        assert step.mask_mode == "custom"
        got = model.forward_paged(step, cache)
        torch.testing.assert_close(got, ref_logits[0, [7, 9]], atol=1e-5, rtol=1e-5)


def test_tree_positions_and_unwritten_slots():
    """Two sibling branches at the same logical position see only the prefix and themselves."""
    model = tiny_model("qwen3", seed=7)
    prefix, a, b = [5, 9, 17, 33], 40, 41
    ref_a = model.logits(torch.tensor([prefix + [a]]))[0, -1]
    ref_b = model.logits(torch.tensor([prefix + [b]]))[0, -1]
    cache = model.new_cache(max_tokens=16, page_size=4)
    seq = cache.new_sequence()
    with torch.no_grad():
        model.forward_paged(StepInput.extend(cache, [seq], [prefix]), cache)
        eye = torch.eye(2, dtype=torch.bool)
        step = StepInput.extend(cache, [seq], [[a, b]], positions=[[4, 4]], custom_mask=eye)
        got = model.forward_paged(step, cache)
    torch.testing.assert_close(got[0], ref_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], ref_b, atol=1e-5, rtol=1e-5)
    # a query with slot -1 leaves the cache untouched
    before = [k.clone() for k in cache.k_caches]
    step = StepInput.extend(cache, [seq], [[a]])
    step.slot_mapping = torch.full_like(step.slot_mapping, -1)
    with torch.no_grad():
        model.forward_paged(step, cache)
    assert all(torch.equal(x, y) for x, y in zip(before, cache.k_caches))


def test_bidirectional_model_paged_matches_plain():
    model = tiny_model("llama", seed=8, causal=False, mask_token_id=127)
    assert model.default_mask_mode == "none"
    ids = _ids(2, 7, seed=9)
    ref = model.logits(ids)
    causal_ref = model(ids, causal=True)
    assert not torch.allclose(ref, causal_ref, atol=1e-3)
    cache = model.new_cache(max_tokens=32, page_size=4)
    seqs = [cache.new_sequence(), cache.new_sequence()]
    with torch.no_grad():
        got = model.forward_paged(StepInput.extend(cache, seqs, ids.tolist()), cache)
    torch.testing.assert_close(got, ref.reshape(14, -1), atol=1e-5, rtol=1e-5)


def test_training_forward_is_differentiable_and_tied_weights_share_grad():
    model = tiny_model("llama", seed=10, tie_word_embeddings=True).train()
    assert model.lm_head.weight is model.embed_tokens.weight
    ids = _ids(2, 8, seed=11)
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 128), ids[:, 1:].reshape(-1))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bfloat16_paged_close_to_float32():
    model = tiny_model("qwen3", seed=12)
    ids = _ids(1, 9, seed=13)
    ref = model.logits(ids)[0]
    bf = tiny_model("qwen3", seed=12, dtype=torch.bfloat16)
    cache = bf.new_cache(max_tokens=16)
    assert cache.k_caches[0].dtype == torch.bfloat16
    seq = cache.new_sequence()
    with torch.no_grad():
        got = bf.forward_paged(StepInput.extend(cache, [seq], ids.tolist()), cache)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, atol=0.1, rtol=0.05)


def test_bad_inputs_raise_clear_errors():
    model = tiny_model("llama")
    with pytest.raises(TypeError, match="input_ids"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="exactly one"):
        model.new_cache()
    cache = model.new_cache(max_tokens=8, page_size=4)
    seq = cache.new_sequence()
    step = StepInput.extend(cache, [seq], [[1, 2]])
    step.mask_mode = "sliding"
    with pytest.raises(ValueError, match="mask_mode"):
        model.forward_paged(step, cache)
    step.mask_mode = None
    other = tiny_model("llama", num_hidden_layers=3).new_cache(max_tokens=8)
    with pytest.raises(ValueError, match="layers"):
        model.forward_paged(step, other)


def test_step_input_extend_rejects_bad_shapes_before_touching_the_cache():
    model = tiny_model("llama")
    cache = model.new_cache(max_tokens=16, page_size=4)
    seq = cache.new_sequence()
    with pytest.raises(ValueError, match="positions"):
        StepInput.extend(cache, [seq], [[1, 2]], positions=[[0]])
    with pytest.raises(ValueError, match="custom_mask"):
        StepInput.extend(cache, [seq], [[1, 2]], custom_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same length"):
        StepInput.extend(cache, [seq], [[1], [2]])
    assert cache.seq_len(seq) == 0


def test_logits_compile_without_graph_breaks():
    """torch.compile(model.logits) traces in one graph: no data-dependent RoPE table size."""
    from leapdec.models.testing import tiny_model

    model = tiny_model("llama", seed=3)
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    compiled = torch.compile(model.forward, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(ids), model(ids))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :2] = 0
    torch.testing.assert_close(compiled(ids, mask), model(ids, mask))


def test_paged_forward_fused_norms_match_torch_path_and_leave_inputs_alone():
    """Without autograd the paged forward keeps the residual stream apart and fuses each add into
    the next norm (the rms_norm ops, in place); with autograd it runs the torch modules. Both give
    the same logits, and a caller's inputs_embeds are never written."""
    model = tiny_model("qwen2", seed=9)
    ids = _ids(1, 7, seed=10)
    embeds = model.embed_tokens(ids[0]).detach()
    kept = embeds.clone()
    outs = []
    for grad in (False, True):
        cache = model.new_cache(max_tokens=16, page_size=4)
        seq = cache.new_sequence()
        step = StepInput.extend(cache, [seq], [ids[0].tolist()])
        with torch.set_grad_enabled(grad):
            import dataclasses
            outs.append(model.forward_paged(dataclasses.replace(step, inputs_embeds=embeds), cache).detach())
        assert torch.equal(embeds, kept)
    assert outs[1].shape == (7, 128)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
