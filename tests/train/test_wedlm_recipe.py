"""The WeDLM recipe: the dual-stream mask and the block masking/reordering, the attention
isolation they imply, and the tiny preset end to end (CLI, checkpoint, card, decoding)."""

import json

import pytest
import torch

from leapdec.decoding import generate
from leapdec.models import load_checkpoint
from leapdec.models.testing import tiny_model
from leapdec.train import cards, corpus, lm, wedlm
from leapdec.train import tokenizer as tokenizers_
from leapdec.train.__main__ import main as train_main
from leapdec.zoo import ZOO_DIR, available


def test_dual_stream_mask_by_hand():
    # L = 4, blocks of 2: clean 0..3 (c0..c3), noisy 4..7 (n0 n1 | n2 n3)
    m = wedlm.dual_stream_mask(4, 2).int().tolist()
    assert m == [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0, 0],     # noisy block 0: no clean prefix, causal inside the block
        [0, 0, 0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0, 1, 0],     # noisy block 1: clean block 0, then causal inside
        [1, 1, 0, 0, 0, 0, 1, 1],
    ]
    with pytest.raises(ValueError, match="block_size"):
        wedlm.dual_stream_mask(4, 0)


def test_noisy_stream_masks_and_reorders_within_blocks():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(5, 100, (3, 32))
    tokens, targets, positions, masked, share = wedlm.noisy_stream(x0, 8, mask_id=1, generator=g)
    assert torch.equal(targets, x0.gather(1, positions))                 # logical positions travel
    assert torch.equal(tokens, torch.where(masked, torch.ones_like(targets), targets))
    for b in range(3):
        for k in range(4):
            blk = slice(8 * k, 8 * k + 8)
            pos, m = positions[b, blk].tolist(), masked[b, blk].tolist()
            assert sorted(pos) == list(range(8 * k, 8 * k + 8))          # a permutation of the block
            n_obs = m.count(False)
            assert m == [False] * n_obs + [True] * (8 - n_obs)           # observed first
            assert pos[:n_obs] == sorted(pos[:n_obs]) and pos[n_obs:] == sorted(pos[n_obs:])
            p = share[b, blk].max().item()
            assert 8 - n_obs == round(p * 8) if n_obs < 8 else p == 0
    assert masked.any() and (~masked).any()
    with pytest.raises(ValueError, match="multiple of block_size"):
        wedlm.noisy_stream(x0[:, :30], 8, 1, g)


def test_masked_forward_matches_plain_forward_and_isolates_streams():
    model = tiny_model("llama", seed=2)
    x = torch.randint(0, 128, (2, 12))
    pos = torch.arange(12).expand(2, 12)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    torch.testing.assert_close(wedlm.masked_forward(model, x, pos, causal), model.hidden(x))
    # dual stream, L = 6, blocks of 3: changing a clean token of block 1 moves the clean stream
    # after it but no noisy query of blocks 0-1 (they see clean blocks before their own only)
    L, bs = 6, 3
    mask = wedlm.dual_stream_mask(L, bs)
    ids = torch.randint(2, 128, (1, 2 * L))
    positions = torch.cat([torch.arange(L), torch.arange(L)])[None]
    h = wedlm.masked_forward(model, ids, positions, mask)
    ids2 = ids.clone()
    ids2[0, 4] = (ids[0, 4] + 1) % 128
    h2 = wedlm.masked_forward(model, ids2, positions, mask)
    same = (h - h2).abs().amax(-1)[0] < 1e-6
    assert same[:4].all() and not same[4:6].any()                       # clean: causal
    assert same[L:].all()                                               # noisy blocks 0-1 unaffected
    ids3 = ids.clone()
    ids3[0, 1] = (ids[0, 1] + 1) % 128                                   # clean block 0
    h3 = wedlm.masked_forward(model, ids3, positions, mask)
    same = (h - h3).abs().amax(-1)[0] < 1e-6
    assert same[L:L + bs].all() and not same[L + bs:].any()            # only noisy block 1 sees it


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny AR model (20 steps), then the WeDLM recipe's tiny preset through the CLI."""
    root = tmp_path_factory.mktemp("wedlm")
    ar_dir, out = root / "tiny-ar", root / "tiny-wedlm"
    lm.train_lm("ar", "tiny", ar_dir, steps=20, device="cpu", seed=0, progress=False)
    assert train_main(["wedlm", "--init-from", str(ar_dir), "--out", str(out), "--preset", "tiny",
                       "--device", "cpu", "--no-progress"]) == 0
    return ar_dir, out


def test_tiny_recipe_end_to_end(trained):
    ar_dir, out = trained
    card = json.loads((out / "card.json").read_text())
    assert cards.verify_card(out) == []
    p = wedlm.PRESETS["tiny"]
    tr = card["training"]
    assert tr["steps"] == p.steps and tr["tokens_seen"] == p.steps * p.batch_size * p.seq_len
    assert 0 < tr["train_s"] <= tr["wall_s"]
    assert card["command"].startswith("python -m leapdec.train wedlm --init-from " + str(ar_dir))
    assert card["recipe"]["init_from_sha256"] == cards.file_sha256(ar_dir / "model.safetensors")
    # fine-tuning lowers the held-out masked-token loss
    history = tr["history"]
    assert history[0]["step"] == 0 and history[-1]["step"] == p.steps
    assert history[-1]["heldout_loss"] < history[0]["heldout_loss"]
    ev = card["eval"]
    assert ev["heldout_mlm_loss"] < ev["init_heldout_mlm_loss"]
    assert ev["decoding"]["prompts"] == p.decode_prompts and ev["decoding"]["tokens_per_call"] >= 1.0

    # a normal causal checkpoint with its own tokenizer and mask token
    model = load_checkpoint(out, dtype=torch.float32)
    tok = tokenizers_.load_tokenizer(out)
    assert model.config.causal and model.config.mask_token_id == tokenizers_.special_token_ids(tok)["mask"]
    assert model.config.extra["wedlm"]["block_size"] == p.block_size
    base = load_checkpoint(ar_dir, dtype=torch.float32)
    assert not torch.equal(model.embed_tokens.weight, base.embed_tokens.weight)
    prompt = [tokenizers_.special_token_ids(tok)["eos"]] + tok.encode("def add(a, b):\n    ").ids
    a = generate(model, [prompt, prompt[:3]], method="wedlm", max_new_tokens=12)
    b = generate(model, [prompt], method="ar", max_new_tokens=12)
    assert len(a.tokens) == 2 and a.stats["model_calls"] >= 1 and all(len(t) <= 12 for t in a.tokens)
    assert len(b.tokens[0]) <= 12                                       # still an AR model too
    # the card's held-out losses are those of the saved checkpoint
    again = wedlm.heldout_losses(model, corpus.encode_corpus(tok, "heldout"), p,
                                 model.config.mask_token_id, seed=0)
    assert again["mlm"] == pytest.approx(ev["heldout_mlm_loss"], abs=1e-3)
    assert again["ar"] == pytest.approx(ev["heldout_ar_loss"], abs=1e-3)


def test_distilled_windows_are_prompt_plus_greedy_continuation(trained):
    """The "distill" presets' data: corpus windows continued by the init model's greedy AR,
    EOS-padded where it stopped early; a share of each batch in training."""
    ar_dir, _ = trained
    model = load_checkpoint(ar_dir, dtype=torch.float32)
    tok = tokenizers_.load_tokenizer(ar_dir)
    stream = corpus.encode_corpus(tok, "heldout")[:4000]
    p = wedlm.dataclasses.replace(wedlm.PRESETS["tiny"], distill_share=0.5, distill_prompts=3,
                                  distill_gen_len=16)
    windows = wedlm.distilled_windows(model, stream, p, seed=0)
    assert windows.shape == (3, p.seq_len)
    prompt_len = p.seq_len - p.distill_gen_len
    ar = generate(model, windows[:, :prompt_len].tolist(), method="ar", max_new_tokens=16)
    eos = model.config.stop_token_ids[0]
    for row, cont in zip(windows.tolist(), ar.tokens):
        assert row[prompt_len:] == cont + [eos] * (16 - len(cont))
    with pytest.raises(ValueError, match="distill_gen_len"):
        wedlm.distilled_windows(model, stream, wedlm.dataclasses.replace(p, distill_gen_len=p.seq_len), 0)
    assert wedlm.PRESETS["distill"].distill_share > 0


def test_answer_windows_are_a_packed_stream_of_distilled_bodies(trained, tmp_path, monkeypatch):
    """The "distill-smollm2" preset's data: another model's bodies for short requests, re-tokenized
    and packed (``<|endoftext|> request body ...``), make ``answers_share`` of each batch."""
    from leapdec.train import distill

    ar_dir, _ = trained
    tok = tokenizers_.load_tokenizer(ar_dir)
    eos = tokenizers_.special_token_ids(tok)["eos"]
    bodies = [(distill.request_prompt(f"twice_{i}(x)", "return x doubled."), f"return x * {i}\n")
              for i in range(40)]
    monkeypatch.setattr(distill, "function_bodies", lambda base, n, split="train", seed=0, **kw: bodies)
    p = wedlm.dataclasses.replace(wedlm.PRESETS["tiny"], answers_base="teacher", answers=40,
                                  answers_share=0.5, steps=2)
    stream, info = wedlm.answer_stream(tok, p, seed=0)
    assert info["pairs"] == 40 and info["tokens"] == stream.numel()
    assert stream[0] == eos and stream[-1] == eos
    texts = tok.decode(stream.tolist(), skip_special_tokens=False).split("<|endoftext|>")
    assert [t for t in texts if t] == [q + b for q, b in bodies]
    seen = []
    real = wedlm.wedlm_loss
    monkeypatch.setattr(wedlm, "wedlm_loss", lambda model, x0, *a, **k: (seen.append(x0), real(model, x0, *a, **k))[1])
    monkeypatch.setitem(wedlm.PRESETS, "tiny-answers", p)
    card = wedlm.train_wedlm(ar_dir, tmp_path / "w", preset="tiny-answers", progress=False)
    assert card["corpus"]["distilled_answers"]["pairs"] == 40
    packed = set(tuple(stream[i:i + p.seq_len].tolist()) for i in range(stream.numel() - p.seq_len + 1))
    for x0 in seen:
        assert x0.shape == (p.batch_size, p.seq_len)
        assert sum(tuple(r) in packed for r in x0.tolist()) >= p.batch_size // 2


def test_recipe_rejects_bad_arguments(trained, tmp_path):
    ar_dir, _ = trained
    with pytest.raises(ValueError, match="preset"):
        wedlm.train_wedlm(ar_dir, tmp_path / "x", preset="huge")
    with pytest.raises(ValueError, match="steps"):
        wedlm.train_wedlm(ar_dir, tmp_path / "x", preset="tiny", steps=0)
    with pytest.raises(FileNotFoundError):
        wedlm.train_wedlm(tmp_path / "missing", tmp_path / "x", preset="tiny")


@pytest.mark.skipif("stdlib-wedlm" not in available(), reason="stdlib-wedlm is not in the zoo")
def test_zoo_checkpoint_matches_its_card():
    """stdlib-wedlm re-scores the held-out losses its card records, carries the mask token of
    its tokenizer and was fine-tuned from the stdlib-ar that ships beside it."""
    path = ZOO_DIR / "stdlib-wedlm"
    card = cards.load_card(path)
    assert cards.verify_card(path) == [] and card["objective"] == "wedlm"
    if corpus.corpus_info().fingerprint != card["corpus"]["fingerprint"]:
        pytest.skip("this Python's stdlib differs from the training machine's")
    model = load_checkpoint(path, dtype=torch.float32)
    tok = tokenizers_.load_tokenizer(path)
    assert model.config.causal and model.config.mask_token_id == tokenizers_.special_token_ids(tok)["mask"]
    p = wedlm.PRESETS[card["recipe"]["preset"]]
    got = wedlm.heldout_losses(model, corpus.encode_corpus(tok, "heldout"), p, model.config.mask_token_id,
                               seed=card["recipe"]["seed"])
    assert got["mlm"] == pytest.approx(card["eval"]["heldout_loss"], abs=2e-3)
    assert got["ar"] == pytest.approx(card["eval"]["heldout_ar_loss"], abs=2e-3)
    base = ZOO_DIR / "stdlib-ar" / "model.safetensors"
    chain = card["recipe"]["init_sha256_chain"]           # the weights each stage started from
    assert chain[-1] == card["recipe"]["init_from_sha256"]
    assert len(card["recipe"]["init_from_commands"]) == len(chain) - 1
    if base.is_file():
        assert chain[0] == cards.file_sha256(base), \
            "stdlib-ar changed since stdlib-wedlm was fine-tuned from it: retrain stdlib-wedlm"


def test_fine_tuning_again_into_the_same_folder_keeps_the_lineage(trained, tmp_path):
    """A WeDLM checkpoint fine-tuned again (``--init-from X --out X``): the card hashes the
    weights it started from (not the ones it wrote over them) and keeps the commands and weights
    of every earlier stage, so its Reproduce section starts from the causal LM."""
    import shutil

    ar_dir, first = trained
    again = tmp_path / "again"
    shutil.copytree(first, again)
    before = cards.file_sha256(again / "model.safetensors")
    card = wedlm.train_wedlm(again, again, preset="tiny", steps=1, progress=False)
    recipe = card["recipe"]
    assert recipe["init_from_sha256"] == before != cards.file_sha256(again / "model.safetensors")
    assert recipe["init_sha256_chain"] == [cards.file_sha256(ar_dir / "model.safetensors"), before]
    ar_command, first_command = cards.load_card(ar_dir)["command"], cards.load_card(first)["command"]
    assert cards.load_card(first)["recipe"]["init_from_commands"] == [ar_command]
    assert recipe["init_from_commands"] == [ar_command, first_command]
    text = (again / "CARD.md").read_text().split("```")[1]               # the Reproduce block
    assert text.count("python -m leapdec.train wedlm") == 2 and text.count("python -m leapdec.train lm") == 1
