"""CI: check a built wheel as a user gets it. Run with the Python of a fresh venv where the wheel
(and nothing from the checkout) is installed, from a folder outside the source tree:

    python .ci/wheel_check.py dist/leapdec-*.whl README.md

Checks the wheel's contents and its torch pin, that ``import leapdec`` comes from site-packages,
runs every ```python block of the README (but those marked ``# wheel-check: skip``, e.g. ones that
need an optional extra), and ``leapdec bench`` / ``leapdec --help`` from the installed console
script. Prints 'N passed, N failed' last; exits non-zero on any failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import traceback
import zipfile
from pathlib import Path


def check_wheel(wheel: Path) -> None:
    import torch

    names = zipfile.ZipFile(wheel).namelist()
    need = ["leapdec/__init__.py", "leapdec/bench/attention.py", "leapdec/bench/common.py",
            "leapdec/zoo/stdlib-ar/model.safetensors", "leapdec/zoo/stdlib-ar/tokenizer.json", "leapdec/py.typed"]
    missing = [n for n in need if n not in names]
    assert not missing, f"wheel lacks {missing}"
    assert any(re.fullmatch(r"leapdec/_C\..*\.so", n) for n in names), "wheel has no compiled leapdec/_C"
    assert not [n for n in names if n.startswith(("tests/", "csrc/", "build/"))], "sources or tests in the wheel"
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [line for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
                if line.startswith("Requires-Dist: torch")]
    want = f"Requires-Dist: torch=={torch.__version__.split('+')[0]}"
    assert requires == [want], f"wheel's torch requirement {requires}, expected [{want!r}]"


def check_import_location(source_root: Path) -> None:
    import leapdec

    where = Path(leapdec.__file__).resolve()
    assert Path(sys.prefix).resolve() in where.parents and (source_root / "python") not in where.parents, \
        f"leapdec imported from {where}, not from the wheel installed in {sys.prefix}"
    info = leapdec.build_info()
    assert info["torch_compiled"] and info["torch"], info


SKIP_MARK = "# wheel-check: skip"   # a README block needing an optional extra can opt out with this line


def readme_blocks(readme: Path) -> list[str]:
    blocks = re.findall(r"^```python\n(.*?)^```", readme.read_text(), flags=re.S | re.M)
    return [b for b in blocks if SKIP_MARK not in b]


def run_cli(*args: str, cwd: str) -> None:
    exe = Path(sys.executable).with_name("leapdec")
    r = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"leapdec {' '.join(args)} exited {r.returncode}:\n{r.stderr[-3000:]}"


def main(argv: list[str]) -> int:
    wheel, readme = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    source_root = readme.parent
    work = tempfile.mkdtemp(prefix="leapdec-wheel-check-")
    os.chdir(work)                            # outside the source tree: nothing shadows the wheel
    sys.path = [p for p in sys.path if p not in ("", ".", str(source_root))]
    checks = [("wheel contents and torch pin", lambda: check_wheel(wheel)),
              ("import leapdec from site-packages", lambda: check_import_location(source_root))]
    for i, code in enumerate(readme_blocks(readme), 1):
        checks.append((f"README python block {i}", lambda code=code: exec(compile(code, f"README block {i}", "exec"),
                                                                           {"__name__": "__main__"})))
    checks.append(("leapdec --help", lambda: run_cli("--help", cwd=work)))
    checks.append(("leapdec bench attention (installed)",
                   lambda: run_cli("bench", "attention", "--quick", "--cases", "decode", "--repeats", "2",
                                   "--out", os.path.join(work, "bench"), cwd=work)))
    passed = failed = 0
    for name, fn in checks:
        try:
            fn()
        except Exception:
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
        else:
            passed += 1
            print(f"ok   {name}", flush=True)
    print(f"wheel-check: {passed} passed, {failed} failed")
    return 1 if failed or passed < 4 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
