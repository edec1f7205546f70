import ast

import pytest
import torch

from leapdec.train import corpus as C
from leapdec.train.tokenizer import train_tokenizer


def _rel(paths):
    root = C.stdlib_root()
    return [p.relative_to(root).as_posix() for p in paths]


def test_split_is_deterministic_and_disjoint():
    train, heldout = _rel(C.corpus_files("train")), _rel(C.corpus_files("heldout"))
    assert train == _rel(C.corpus_files("train")) and heldout == _rel(C.corpus_files("heldout"))
    assert train == sorted(train) and heldout
    assert not set(train) & set(heldout)
    # The hash is SHA-1 of the relative path, not Python's per-process randomized hash().
    assert C.split_of("traceback.py") == "heldout"
    assert C.split_of("os.py") == "train"
    assert all(C.split_of(r) == "heldout" for r in heldout)


def test_heldout_is_about_two_percent():
    fraction = sum(C.split_of(f"pkg{i}/mod{i}.py") == "heldout" for i in range(20000)) / 20000
    assert 0.017 < fraction < 0.023
    n_train, n_heldout = len(C.corpus_files("train")), len(C.corpus_files("heldout"))
    assert n_train > 300
    assert 0.005 < n_heldout / (n_train + n_heldout) < 0.045


def test_test_folders_and_site_packages_excluded():
    for rel in ["test/test_os.py", "idlelib/idle_test/test_config.py", "lib2to3/tests/data/x.py",
                "ctypes/test/test_bytes.py", "unittest/test/test_case.py", "tkinter/test/x.py",
                "site-packages/numpy/core.py", "test_foo.py", "config-3.11-x86_64-linux-gnu/a.py",
                "_sysconfigdata__linux_x86_64-linux-gnu.py"]:
        assert C.is_excluded(rel), rel
    for rel in ["unittest/case.py", "doctest.py", "os.py", "lib2to3/fixer_util.py",
                "email/contest.py"]:
        assert not C.is_excluded(rel), rel
    for rel in _rel(C.corpus_files("train")) + _rel(C.corpus_files("heldout")):
        parts = rel.split("/")
        assert not any(p in ("test", "tests", "idle_test", "site-packages") for p in parts), rel


def test_synthetic_root(tmp_path):
    for rel in ["a.py", "pkg/b.py", "pkg/tests/t.py", "test/x.py", "site-packages/s.py",
                "pkg/notes.txt", "bad.py"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")
    (tmp_path / "bad.py").write_bytes(b"x = '\xff'\n")  # not UTF-8: listed, skipped when read
    everything = sorted(_r.relative_to(tmp_path).as_posix()
                        for s in C.SPLITS for _r in C.corpus_files(s, root=tmp_path))
    assert everything == ["a.py", "bad.py", "pkg/b.py"]
    info = C.corpus_info(root=tmp_path)
    assert info.train_files + info.heldout_files == 2 and info.skipped_files == 1
    assert info.train_bytes + info.heldout_bytes == 12
    with pytest.raises(ValueError, match="split"):
        C.corpus_files("valid", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="root"):
        C.corpus_files("train", root=tmp_path / "missing")


def test_read_corpus_max_bytes():
    texts = C.read_corpus("train", max_bytes=200_000)
    assert texts == C.read_corpus("train", max_bytes=200_000)
    sizes = [len(t.encode("utf-8")) for t in texts]
    assert 150_000 < sum(sizes) <= 200_000
    full = set(C.read_corpus("train"))
    assert all(t in full for t in texts[:-1])  # whole files, the last one cut at a line end
    assert texts[-1].endswith("\n")
    with pytest.raises(ValueError, match="max_bytes"):
        C.read_corpus("train", max_bytes=0)


def test_corpus_info_matches_files():
    info = C.corpus_info()
    assert info.train_files == len(C.read_corpus("train"))
    assert info.heldout_files == len(C.read_corpus("heldout"))
    assert info.train_files + info.heldout_files + info.skipped_files == \
        len(C.corpus_files("train")) + len(C.corpus_files("heldout"))
    assert info.train_bytes == sum(len(t.encode("utf-8")) for t in C.read_corpus("train"))
    d = info.to_dict()
    assert d["heldout_fraction"] == 0.02 and len(d["fingerprint"]) == 64
    assert C.corpus_info().fingerprint == info.fingerprint


def _function_source(path, lineno):
    """The source of the function whose ``def`` is on ``lineno``, from the start of that line."""
    source = (C.stdlib_root() / path).read_text(encoding="utf-8")
    node = next(n for n in ast.walk(ast.parse(source))
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.lineno == lineno)
    lines = source.splitlines(keepends=True)
    return "".join(lines[node.lineno - 1:node.end_lineno]), node


def test_eval_prompts_cut_after_docstring():
    prompts = C.eval_prompts(40, seed=0)
    assert len(prompts) == 40
    assert [p.prompt for p in prompts] == [p.prompt for p in C.eval_prompts(40, seed=0)]
    assert [p.prompt for p in prompts] != [p.prompt for p in C.eval_prompts(40, seed=1)]
    heldout = set(_rel(C.corpus_files("heldout")))
    for p in prompts:
        assert p.path in heldout
        func, node = _function_source(p.path, p.lineno)
        assert p.prompt + p.reference == (func if func.endswith("\n") else func + "\n")
        assert p.prompt.lstrip().startswith(("def ", "async def "))
        # The prompt ends in the body: signature + docstring + newline + the body's indentation.
        last = p.prompt.split("\n")[-1]
        def_indent = len(p.prompt) - len(p.prompt.lstrip(" \t"))
        assert last.strip() == "" and len(last) > def_indent
        assert p.prompt.rstrip().endswith(("'", '"'))  # the docstring's closing quote
        # The reference is the rest of the body: the first statement after the docstring on.
        first = node.body[1]
        assert p.reference.startswith(ast.get_source_segment(
            (C.stdlib_root() / p.path).read_text(encoding="utf-8"), first).split("\n")[0])
        assert len(p.prompt) <= 1024


def test_function_prompts_edge_cases():
    source = (
        "def a(x):\n"
        "    \"\"\"Doc é 日本.\"\"\"\n"
        "\n"
        "    y = x  # ü\n"
        "    return y\n"
        "class K:\n"
        "    async def b(self):\n"
        "        'doc'\n"
        "        await self.c()\n"
        "def no_body():\n"
        "    'only a docstring'\n"
        "def same_line():\n"
        "    'doc'; return 1\n"
        "def comment_at_col0():\n"
        "    'doc'\n"
        "#   commented = out\n"
        "    return 2\n"
        "def no_doc():\n"
        "    return 3\n"
    )
    prompts = C.function_prompts(source)
    assert [p.name for p in prompts] == ["a", "b"]
    a, b = prompts
    assert a.prompt == "def a(x):\n    \"\"\"Doc é 日本.\"\"\"\n\n    "
    assert a.reference == "y = x  # ü\n    return y\n"
    assert b.prompt == "    async def b(self):\n        'doc'\n        "
    assert b.reference == "await self.c()\n"
    assert len(a.prompt) < 40 < len(b.prompt)
    assert [p.name for p in C.function_prompts(source, max_prompt_chars=40)] == ["a"]
    assert C.function_prompts("def broken(:\n") == []


def test_eval_prompts_bad_n():
    with pytest.raises(ValueError, match="n must"):
        C.eval_prompts(0)


@pytest.fixture(scope="module")
def small_tok():
    return train_tokenizer(vocab_size=300, texts=C.read_corpus("train", max_bytes=50_000))


def test_encode_corpus_and_cache(small_tok, tmp_path, monkeypatch):
    monkeypatch.setenv("LEAPDEC_CACHE_DIR", str(tmp_path))
    texts = C.read_corpus("train", max_bytes=100_000)
    stream = C.encode_corpus(small_tok, "train", max_bytes=100_000)
    assert stream.dtype == torch.long and stream.dim() == 1
    assert stream[0].item() == 0 and (stream == 0).sum().item() == len(texts)
    # Files joined with <|endoftext|>: splitting the stream gives the files back.
    bounds = (stream == 0).nonzero().flatten().tolist() + [stream.numel()]
    decoded = [small_tok.decode(stream[s + 1:e].tolist()) for s, e in zip(bounds, bounds[1:])]
    assert decoded == texts
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1
    assert torch.equal(C.encode_corpus(small_tok, "train", max_bytes=100_000), stream)
    cached[0].write_bytes(b"not a tensor")  # a corrupt cache is rebuilt
    assert torch.equal(C.encode_corpus(small_tok, "train", max_bytes=100_000), stream)
    assert torch.equal(C.encode_corpus(small_tok, "train", max_bytes=100_000, cache=False), stream)
    short = C.encode_corpus(small_tok, "train", max_tokens=1000, max_bytes=100_000)
    assert torch.equal(short, stream[:1000])
    monkeypatch.setenv("LEAPDEC_CACHE_DIR", "/proc/leapdec-unwritable")
    assert torch.equal(C.encode_corpus(small_tok, "train", max_bytes=100_000), stream)


def test_batches(small_tok):
    stream = torch.arange(1000)
    got = list(C.batches(stream, batch_size=8, seq_len=32, seed=3, num_batches=5))
    assert len(got) == 5
    for x in got:
        assert x.shape == (8, 33) and x.dtype == torch.long
        assert torch.equal(x - x[:, :1], torch.arange(33).expand(8, 33))  # contiguous windows
        assert x.min() >= 0 and x.max() < 1000
    again = list(C.batches(stream, batch_size=8, seq_len=32, seed=3, num_batches=5))
    assert all(torch.equal(a, b) for a, b in zip(got, again))
    other = next(C.batches(stream, batch_size=8, seq_len=32, seed=4))
    assert not torch.equal(other, got[0])
    edge = torch.cat(list(C.batches(torch.arange(5), 64, 4, seed=0, num_batches=1)))
    assert torch.equal(edge, torch.arange(5).expand(64, 5))  # the only window fits exactly
    with pytest.raises(ValueError, match="too short"):
        next(C.batches(torch.arange(5), 2, 5))
    with pytest.raises(ValueError, match="stream"):
        next(C.batches(torch.zeros(2, 10, dtype=torch.long), 2, 4))
