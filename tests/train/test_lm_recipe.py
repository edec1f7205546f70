"""The base-LM recipe end to end on the tiny preset: both objectives train, the loss goes down,
the checkpoint loads back (with leapdec and, for the AR model, with transformers) and the card
describes the files and the run."""

import json
import math

import pytest
import torch

from leapdec.models import load_checkpoint
from leapdec.train import cards, lm
from leapdec.train import tokenizer as tokenizers_
from leapdec.train.__main__ import main as train_main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny AR model, and a tiny masked diffusion LM initialised from it."""
    root = tmp_path_factory.mktemp("lm")
    ar_dir, mdm_dir = root / "tiny-ar", root / "tiny-mdm"
    ar = lm.train_lm("ar", "tiny", ar_dir, device="cpu", seed=0, progress=False)
    mdm = lm.train_lm("mdm", "tiny", mdm_dir, device="cpu", seed=0, init_from=ar_dir,
                      progress=False)
    return {"ar": (ar_dir, ar), "mdm": (mdm_dir, mdm)}


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_loss_decreases(trained, objective):
    _, card = trained[objective]
    history = card["training"]["history"]
    assert history[0]["step"] == 0 and history[-1]["step"] == card["training"]["steps"]
    # the AR model starts from scratch; the masked diffusion LM from the AR weights
    margin = 0.05 if objective == "ar" else 0.0
    assert history[-1]["heldout_loss"] < history[0]["heldout_loss"] - margin
    assert history[-1]["train_loss"] < history[1]["train_loss"]
    # better than a uniform guess over the vocabulary
    assert card["eval"]["heldout_loss"] < math.log(card["model"]["vocab_size"])


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_card_matches_run_and_files(trained, objective):
    path, card = trained[objective]
    assert cards.verify_card(path) == []
    assert json.loads((path / "card.json").read_text()) == card
    assert "## Reproduce" in (path / "CARD.md").read_text()
    p = lm.PRESETS["tiny"]
    tr = card["training"]
    assert tr["steps"] == p.steps
    assert tr["tokens_seen"] == p.steps * p.batch_size * p.seq_len
    assert 0 < tr["train_s"] <= tr["wall_s"]
    assert card["command"].startswith("python -m leapdec.train lm --objective " + objective)
    assert card["machine"]["cpu"] and card["machine"]["torch"] == torch.__version__
    corpus = card["corpus"]
    assert corpus["train_bytes_used"] <= p.corpus_max_bytes
    assert corpus["train_tokens"] > 0 and corpus["heldout_files"] > 0
    assert "SHA-1" in corpus["heldout_rule"]
    assert card["eval"]["heldout_tokens"] > 0 and math.isfinite(card["eval"]["heldout_loss"])
    assert card["files"]["model.safetensors"]["sha256"] == cards.file_sha256(path / "model.safetensors")
    if objective == "mdm":
        assert corpus["sft_pairs"] > 0
        assert card["recipe"]["init_from"] == str(trained["ar"][0])
        assert card["recipe"]["init_from_sha256"] == trained["ar"][1]["files"]["model.safetensors"]["sha256"]


def test_verify_card_detects_a_changed_file(trained, tmp_path):
    path, _ = trained["ar"]
    for name in ("card.json", "config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((path / name).read_bytes())
    assert cards.verify_card(tmp_path) == []
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    assert cards.verify_card(tmp_path) == ["model.safetensors: sha256 differs from the card"]


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_checkpoint_loads_and_reproduces_the_card(trained, objective):
    path, card = trained[objective]
    model = load_checkpoint(path, dtype=torch.float32)
    tok = tokenizers_.load_tokenizer(path)
    ids = tokenizers_.special_token_ids(tok)
    assert model.config.causal == (objective == "ar")
    assert model.config.mask_token_id == (ids["mask"] if objective == "mdm" else None)
    assert model.config.vocab_size == tok.get_vocab_size()
    assert lm.count_parameters(model) == card["model"]["parameters"]
    quick = card["eval"]["quick"]
    root = lm.corpus.stdlib_root()
    stream = lm.encode_files(tok, [root / f["path"] for f in quick["files"]])
    loss, _ = lm.heldout_loss(model, stream, objective, quick["seq_len"], quick["windows"],
                              eps=quick["mask_eps"])
    assert loss == pytest.approx(quick["loss"], abs=1e-3)


def test_ar_checkpoint_loads_in_transformers(trained):
    transformers = pytest.importorskip("transformers")
    path, _ = trained["ar"]
    ours = load_checkpoint(path, dtype=torch.float32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(ids).logits
    torch.testing.assert_close(ours.logits(ids), expected, atol=1e-4, rtol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    assert hf_tok.decode(hf_tok("def f(x):\n    return x\n")["input_ids"]) == "def f(x):\n    return x\n"


def test_mdm_loss_weights_masked_positions_by_inverse_t(trained):
    path, _ = trained["mdm"]
    model = load_checkpoint(path, dtype=torch.float32)
    mask_id = model.config.mask_token_id
    x0 = torch.randint(3, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.3, 0.7])
    maskable = torch.ones_like(x0, dtype=torch.bool)
    maskable[1, :5] = False                       # an SFT row: its prompt is never masked
    with torch.no_grad():
        loss = lm.mdm_loss(model, x0, t, noise, maskable, mask_id)
        masked = (noise < t[:, None]) & maskable
        logits = model(torch.where(masked, mask_id, x0))
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
        expected = sum((ce[b][masked[b]].sum() / t[b] / maskable[b].sum()) for b in range(2)) / 2
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_cli_runs_the_recipe(trained, tmp_path):
    tok_dir = trained["ar"][0]
    out = tmp_path / "cli-ar"
    assert train_main(["lm", "--objective", "ar", "--preset", "tiny", "--out", str(out),
                       "--steps", "3", "--device", "cpu", "--tokenizer-dir", str(tok_dir),
                       "--no-progress"]) == 0
    card = cards.load_card(out)
    assert card["training"]["steps"] == 3
    assert f"--tokenizer-dir {tok_dir}" in card["command"] and "--steps 3" in card["command"]
    assert cards.verify_card(out) == []
    assert train_main(["nope"]) == 2


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="objective"):
        lm.train_lm("gpt", "tiny", tmp_path / "x")
    with pytest.raises(ValueError, match="preset"):
        lm.train_lm("ar", "huge", tmp_path / "x")
    with pytest.raises(ValueError, match="steps"):
        lm.train_lm("ar", "tiny", tmp_path / "x", steps=0)
    with pytest.raises(ValueError, match="seconds"):
        lm.train_lm("ar", "tiny", tmp_path / "x", seconds=-1)
    with pytest.raises(ValueError, match="objective"):
        lm.heldout_loss(None, torch.zeros(10, dtype=torch.long), "gpt", 4)


def test_random_length_steps_train_on_cut_batches(trained, tmp_path, monkeypatch):
    """``random_length_share`` (the ``long`` presets' mixing of window lengths): some steps train
    on batches cut to a random length in ``[seq_len // 4, seq_len]``, the rest on whole windows;
    an SFT-only preset (no pretraining windows) trains too."""
    tiny = lm.PRESETS["tiny"]
    monkeypatch.setitem(lm.PRESETS, "tiny-mixed",
                        lm.dataclasses.replace(tiny, random_length_share=0.5, steps=12, eval_every=100))
    seen = []
    real = lm.mdm_loss

    def spy(model, x0, t, noise, maskable, mask_id):
        seen.append((x0.shape[1], noise.shape, maskable.shape))
        return real(model, x0, t, noise, maskable, mask_id)

    monkeypatch.setattr(lm, "mdm_loss", spy)
    card = lm.train_lm("mdm", "tiny-mixed", tmp_path / "mixed", device="cpu", seed=0,
                       init_from=trained["ar"][0], progress=False)
    assert card["training"]["steps"] == 12
    lengths = {n for n, _, _ in seen}
    assert tiny.seq_len in lengths and len(lengths) >= 3
    assert all(tiny.seq_len // 4 <= n <= tiny.seq_len for n in lengths)
    assert all(noise[1] == n and maskable[1] == n for n, noise, maskable in seen)
    assert "long" in lm.PRESETS and lm.PRESETS["long"].seq_len == 2 * lm.PRESETS["default"].seq_len
    monkeypatch.setitem(lm.PRESETS, "tiny-sft",
                        lm.dataclasses.replace(tiny, sft_share=1.0, steps=2, eval_every=100))
    card = lm.train_lm("mdm", "tiny-sft", tmp_path / "sft", device="cpu", seed=0,
                       init_from=trained["ar"][0], progress=False)
    assert card["training"]["steps"] == 2
    assert card["recipe"]["init_from_commands"] == [cards.load_card(trained["ar"][0])["command"]]


def test_distill_preset_mixes_distilled_bodies_into_the_sft_rows(trained, tmp_path, monkeypatch):
    """Sequence-level distillation (``distill_answers``): another model's bodies for short
    requests, as text re-tokenized with this model's tokenizer, make ``distill_share`` of the SFT
    rows; the rest are the corpus' functions and plain windows; the card records the data."""
    from leapdec.train import distill

    bodies = [(distill.request_prompt(f"twice_{i}(x)", "return x doubled."), f"return x * {i}\n")
              for i in range(5)]
    asked = []

    def fake_bodies(base, n, split="train", max_new_tokens=128, seed=0, **kw):
        asked.append((base, n, split))
        return bodies

    monkeypatch.setattr(distill, "function_bodies", fake_bodies)
    tiny = lm.PRESETS["tiny"]
    monkeypatch.setitem(lm.PRESETS, "tiny-distill", lm.dataclasses.replace(
        tiny, steps=3, eval_every=100, batch_size=8, sft_share=0.75, distill_base="teacher",
        distill_answers=7, distill_share=0.67))
    seen = []
    real = lm.sft_batch

    def spy(pairs, rows, seq_len, eos):
        seen.append([pairs[r] for r in rows])
        return real(pairs, rows, seq_len, eos)

    monkeypatch.setattr(lm, "sft_batch", spy)
    card = lm.train_lm("mdm", "tiny-distill", tmp_path / "d", device="cpu", seed=0,
                       init_from=trained["mdm"][0], progress=False)
    assert asked == [("teacher", 7, "train")]
    info = card["corpus"]["distilled"]
    assert info["base"] == "teacher" and info["split"] == "train"
    assert info["bodies"] == 5 and info["pairs"] == 10          # each body with both prompt endings
    tok = tokenizers_.load_tokenizer(trained["mdm"][0])
    eos = tokenizers_.special_token_ids(tok)["eos"]
    texts = {tok.decode(p[1:]) + tok.decode(a[:-1]) for p, a in
             [([eos] + tok.encode(q, add_special_tokens=False).ids,
               tok.encode(b, add_special_tokens=False).ids + [eos]) for q, b in bodies]}
    assert len(seen) == 3 and all(len(rows) == 6 for rows in seen)     # 0.75 of 8 rows are SFT
    for rows in seen:
        decoded = [tok.decode(p[1:]) + tok.decode(a[:-1]) for p, a in rows]
        assert sum(t in texts for t in decoded) == 4                     # 0.67 of those distilled
        assert all(p[0] == eos for p, _ in rows)
        assert all(a[-1] == eos for p, a in rows[:4])                     # whole distilled answers


def test_share_tokenizer_stores_identical_tokenizer_files_once(trained, tmp_path):
    import shutil

    from leapdec.zoo import TOKENIZER_FILES, tokenizer_dir

    ar_dir = trained["ar"][0]
    copy = tmp_path / "mdm"
    shutil.copytree(trained["mdm"][0], copy)
    card = cards.share_tokenizer(copy, str(ar_dir))
    assert card["tokenizer_from"] == str(ar_dir) and list(card)[:2] == ["name", "tokenizer_from"]
    assert not any((copy / f).exists() for f in TOKENIZER_FILES)
    assert not any(f in card["files"] for f in TOKENIZER_FILES)
    assert cards.verify_card(copy) == [] and tokenizer_dir(copy) == ar_dir
    assert tokenizers_.load_tokenizer(copy).get_vocab_size() == tokenizers_.load_tokenizer(ar_dir).get_vocab_size()
    other = tmp_path / "other"
    shutil.copytree(trained["mdm"][0], other)
    (other / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="not identical"):
        cards.share_tokenizer(other, str(ar_dir))
