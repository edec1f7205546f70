import pytest
import torch

import leapdec.decoding as decoding
from leapdec.decoding import generate, methods, stream_generate
from leapdec.decoding.base import normalize_prompts, register_method, sample_next, warp_logits
from leapdec.models import load_checkpoint
from leapdec.models.testing import save_hf_tiny, tiny_model

PROMPTS = [[5, 6, 7, 8, 9], [3, 4], list(range(10, 31))]     # ragged, the last spans pages


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def hf_pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"ar_{request.param}")
    hf = save_hf_tiny(path, request.param, seed=3)
    return load_checkpoint(path), hf


def _hf_greedy(hf, prompt, n):
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_matches_transformers_batch1_and_ragged(hf_pair):
    model, hf = hf_pair
    refs = [_hf_greedy(hf, p, 24) for p in PROMPTS]
    single = generate(model, [PROMPTS[0]], method="ar", max_new_tokens=24, stop_tokens=[])
    assert single.tokens == [refs[0]]
    batch = generate(model, PROMPTS, method="ar", max_new_tokens=24, stop_tokens=[], page_size=4)
    assert batch.tokens == refs
    stats = batch.stats
    assert stats["model_calls"] == 24 and stats["new_tokens"] == 72 and stats["tokens_per_call"] == 1.0
    assert stats["wall_s"] > 0 and stats["tokens_per_s"] > 0


def test_left_padded_tensor_prompts(hf_pair):
    model, _ = hf_pair
    width = max(map(len, PROMPTS))
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(PROMPTS):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    padded = generate(model, ids, attention_mask=mask, max_new_tokens=8, stop_tokens=[])
    assert padded.tokens == generate(model, PROMPTS, max_new_tokens=8, stop_tokens=[]).tokens


def test_stop_tokens_end_rows_independently():
    model = tiny_model("llama", seed=1)
    free = generate(model, PROMPTS, max_new_tokens=12, stop_tokens=[]).tokens
    stop = free[1][3]                      # row 1 stops at its 4th token
    out = generate(model, PROMPTS, max_new_tokens=12, stop_tokens=[stop])
    for row, full in zip(out.tokens, free):
        expect = full[:full.index(stop)] if stop in full else full
        assert row == expect and stop not in row
    assert len(out.tokens[1]) == free[1].index(stop)
    # the model's eos is the default stop token
    model.config.eos_token_id = stop
    assert generate(model, PROMPTS, max_new_tokens=12).tokens == out.tokens


def test_sampling_is_reproducible_with_a_seed():
    model = tiny_model("qwen3", seed=2)
    kw = dict(max_new_tokens=16, temperature=1.0, top_k=20, top_p=0.9, stop_tokens=[])
    a = generate(model, PROMPTS, seed=7, **kw).tokens
    assert a == generate(model, PROMPTS, seed=7, **kw).tokens
    assert a != generate(model, PROMPTS, seed=8, **kw).tokens
    greedy = generate(model, PROMPTS, max_new_tokens=16, stop_tokens=[]).tokens
    assert generate(model, PROMPTS, seed=7, **dict(kw, top_k=1)).tokens == greedy


def test_streaming_callback_and_generator():
    model = tiny_model("qwen2", seed=4)
    final = generate(model, PROMPTS, max_new_tokens=6, stop_tokens=[])
    steps = []
    out = generate(model, PROMPTS, max_new_tokens=6, stop_tokens=[], stream=steps.append)
    assert out.tokens == final.tokens and len(steps) == out.stats["model_calls"]
    assert [sum((s[i] for s in steps), []) for i in range(3)] == final.tokens
    streamed = list(stream_generate(model, PROMPTS, max_new_tokens=6, stop_tokens=[]))
    assert streamed == steps
    gen = stream_generate(model, PROMPTS, max_new_tokens=50, stop_tokens=[])
    assert next(gen) == steps[0]
    gen.close()                            # stops the worker early without hanging


def test_edge_cases_and_bad_options():
    model = tiny_model("llama", seed=5)
    assert generate(model, [[1, 2]], max_new_tokens=0).tokens == [[]]
    assert len(generate(model, [[1, 2]], max_new_tokens=1, stop_tokens=[]).tokens[0]) == 1
    assert generate(model, [1, 2, 3], max_new_tokens=2, stop_tokens=[]).tokens == \
        generate(model, torch.tensor([1, 2, 3]), max_new_tokens=2, stop_tokens=[]).tokens
    with pytest.raises(ValueError, match="unknown decoding method 'nope'.*ar"):
        generate(model, [[1]], method="nope")
    with pytest.raises(TypeError, match="bogus"):
        generate(model, [[1]], bogus=1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [[1]], max_new_tokens=-1)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [[1]], temperature=-0.5)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [[1]], temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="cuda_graph"):
        generate(model, [[1]], cuda_graph=True)
    with pytest.raises(ValueError, match="causal"):
        generate(tiny_model("llama", causal=False), [[1]])
    assert "ar" in methods()


def test_normalize_prompts():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 1]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert normalize_prompts(ids, mask) == [[5, 6], [7, 8, 9, 1]]
    assert normalize_prompts([[1], [2, 3]]) == [[1], [2, 3]]
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        normalize_prompts([[], [1]])
    with pytest.raises(ValueError, match="token id 200"):
        normalize_prompts([[1, 200]], vocab_size=128)
    with pytest.raises(ValueError, match="attention_mask"):
        normalize_prompts(ids, mask[:, :3])
    with pytest.raises(TypeError, match="integer"):
        normalize_prompts(torch.zeros(1, 3))


def test_sample_next_and_warp():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0], [0.0, 0.0, 5.0, 0.0]])
    assert sample_next(logits).tolist() == [1, 2]
    warped = warp_logits(logits, 1.0, top_k=2)
    assert torch.isinf(warped[0, [0, 3]]).all() and torch.isfinite(warped[0, [1, 2]]).all()
    nucleus = warp_logits(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), 1.0, top_p=0.75)
    assert torch.isfinite(nucleus[0]).tolist() == [True, True, False, False]
    g = torch.Generator().manual_seed(0)
    draws = sample_next(torch.log(torch.tensor([[0.7, 0.3, 0.0]])).expand(4000, 3), 1.0, generator=g)
    assert 0.65 < (draws == 0).float().mean() < 0.75 and not (draws == 2).any()


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_method("ar")(lambda model, prompts: None)
    assert decoding.get_method("ar").__name__ == "autoregressive"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decode_matches_eager(dtype):
    """CUDA-graph decode steps (padded batch buckets, rows finishing early) give the eager tokens."""
    model = tiny_model("qwen3", seed=9, hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=64, device="cuda", dtype=dtype)
    free = generate(model, PROMPTS, max_new_tokens=40, stop_tokens=[], cuda_graph=False).tokens
    stop = free[0][10]
    eager = generate(model, PROMPTS, max_new_tokens=40, stop_tokens=[stop], cuda_graph=False)
    graph = generate(model, PROMPTS, max_new_tokens=40, stop_tokens=[stop], cuda_graph=True)
    assert graph.stats["cuda_graph"] and not eager.stats["cuda_graph"]
    assert graph.tokens == eager.tokens
    again = generate(model, PROMPTS, max_new_tokens=40, stop_tokens=[stop])     # graphs reused
    assert again.tokens == eager.tokens
    if dtype == torch.float32:
        cpu = tiny_model("qwen3", seed=9, hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=64)
        assert generate(cpu, PROMPTS, max_new_tokens=40, stop_tokens=[]).tokens == free
