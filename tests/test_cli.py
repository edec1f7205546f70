"""The command line: user errors are one line on stderr and a non-zero exit (``--debug`` shows
the traceback), ``-o KEY=VALUE`` is typed and checked, ``--help`` documents the choices,
``leapdec bench`` runs the packaged benchmarks, and output paths are checked before any work."""

import json
import time

import pytest

import leapdec
from leapdec.cli import UsageError, main, parse_option_value, parse_options


# ---------------------------------------------------------------- -o KEY=VALUE
@pytest.mark.parametrize("text, want", [
    ("true", True), ("False", False), ("7", 7), ("-3", -3), ("0.25", 0.25), ("1e-3", 1e-3),
    ("none", None), ("prefix", "prefix"),
])
def test_option_values_are_typed(text, want):
    got = parse_option_value(text)
    assert got == want and type(got) is type(want)


def test_boolean_options_take_1_and_0():
    assert parse_option_value("1", default=False) is True
    assert parse_option_value("0", default=True) is False
    assert parse_option_value("yes", default=False) is True
    with pytest.raises(UsageError, match="boolean"):
        parse_option_value("maybe", default=False)
    # typed by the method's own defaults: learn2pd's eotp is a boolean, block_length an int
    opts = parse_options(["eotp=1", "block_length=32", "eot_threshold=1"], method="learn2pd")
    assert opts == {"eotp": True, "block_length": 32, "eot_threshold": 1.0}
    assert opts["eotp"] is True and type(opts["eot_threshold"]) is float


@pytest.mark.parametrize("item, message", [
    ("eotp", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("temperature=0.7", "use --temperature"),
    ("max_new_tokens=5", "use --max-new-tokens"),
    ("block length=3", "not an option name"),
])
def test_bad_options_are_refused(item, message):
    with pytest.raises(UsageError, match=message):
        parse_options([item])


def test_repeated_option_is_refused():
    with pytest.raises(UsageError, match="given twice"):
        parse_options(["k=1", "k=2"])


# ---------------------------------------------------------------- errors: one line, no traceback
def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_user_errors_are_one_line_and_non_zero(capsys):
    assert main(["generate", "x", "--model", "no-such-model"]) == 1
    line = _one_error_line(capsys)
    assert line.startswith("leapdec generate: error: unknown model 'no-such-model'")
    assert main(["generate", "x", "-o", "eotp"]) == 2
    assert "expected KEY=VALUE" in _one_error_line(capsys)
    assert main(["generate", "x", "-o", "temperature=0.5"]) == 2
    assert "use --temperature" in _one_error_line(capsys)
    assert main(["generate", "x", "--max-new-tokens", "2", "-o", "no_such_option=1"]) == 1
    assert "no_such_option" in _one_error_line(capsys)


def test_debug_shows_the_traceback():
    with pytest.raises(FileNotFoundError, match="unknown model"):
        main(["--debug", "generate", "x", "--model", "no-such-model"])
    with pytest.raises(FileNotFoundError, match="unknown model"):
        main(["generate", "x", "--model", "no-such-model", "--debug"])


def test_bad_choices_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "x", "--method", "nope"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["generate", "x", "--device", "tpu"])
    assert e.value.code == 2 and "cpu, cuda or cuda:N" in capsys.readouterr().err


def test_help_documents_every_flag_and_its_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for method in leapdec.methods():
        assert method in text
    for flag in ("--method", "--model", "--max-new-tokens", "--temperature", "--device", "--option", "--debug",
                 "--weight-dtype"):
        assert flag in text
    assert "cpu, cuda or cuda:N" in text and "true/false/1/0" in text
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    from leapdec.bench import BENCHMARKS
    assert all(name in text for name in BENCHMARKS) and "--out" in text


# ---------------------------------------------------------------- bench from the package
def test_bench_runs_the_packaged_benchmark(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "attention", "--quick", "--out", str(out), "--cases", "decode", "--repeats", "2"]) == 0
    report = json.loads((out / "attention.json").read_text())
    assert [r["name"] for r in report["results"]] == ["decode"]
    assert report["results"][0]["spread_us"]["leapdec"]["n"] >= 2
    assert (out / "attention.md").is_file() and (out / "attention.png").stat().st_size > 0


# ---------------------------------------------------------------- output paths checked first
def test_unwritable_outputs_fail_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    t0 = time.perf_counter()
    assert main(["demo", "--png", str(blocker / "demo.png")]) == 1
    assert "a-file" in _one_error_line(capsys)
    assert main(["demo", "--json", str(blocker / "demo.json")]) == 1
    assert "a-file" in _one_error_line(capsys)
    assert main(["bench", "decode", "--quick", "--out", str(blocker / "out")]) == 1
    assert "cannot write to output folder" in _one_error_line(capsys)
    assert time.perf_counter() - t0 < 20, "the paths must be checked before decoding"
