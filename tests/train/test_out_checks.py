"""Every training recipe checks that its --out folder can be written before it trains, so a bad
path fails at once instead of after the whole run (and nothing is trained or written)."""

import time

import pytest

from leapdec.paths import writable_dir, writable_file
from leapdec.train import falcon, learn2pd, lm, maskgit, medusa, rediff, wedlm

RECIPES = {
    "lm": lambda out: lm.train_lm("ar", "tiny", out),
    "wedlm": lambda out: wedlm.train_wedlm("stdlib-ar", out, "tiny"),
    "medusa": lambda out: medusa.train_medusa("stdlib-ar", "tiny", out),
    "falcon": lambda out: falcon.train_falcon("stdlib-ar", "tiny", out),
    "learn2pd": lambda out: learn2pd.train_learn2pd("stdlib-mdm", out, "tiny"),
    "rediff": lambda out: rediff.train_rediff("stdlib-mdm", out, "tiny"),
    "maskgit": lambda out: maskgit.train_maskgit(out, "tiny"),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_unwritable_out_fails_before_training(tmp_path, recipe):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    t0 = time.perf_counter()
    with pytest.raises(OSError, match=r"cannot write to output folder .*a-file"):
        RECIPES[recipe](blocker / "out")
    assert time.perf_counter() - t0 < 10, "the check must come before any training"
    assert blocker.read_text() == "not a folder"


def test_writable_paths(tmp_path):
    assert writable_dir(tmp_path / "new" / "deeper", create=False) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists(), "create=False only checks"
    assert writable_dir(tmp_path / "made").is_dir()
    assert writable_file(tmp_path / "sub" / "plot.png") == tmp_path / "sub" / "plot.png"
    with pytest.raises(OSError, match="it is a folder"):
        writable_file(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError, match="it is a file"):
        writable_dir(tmp_path / "f")
