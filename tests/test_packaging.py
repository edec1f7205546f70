"""Packaging: the sdist carries everything the wheel build needs, the build requirements are
declared, the wheel pins the torch it was compiled against and a mismatch is a clear ImportError.
(The full `python -m build` + fresh-venv install + README examples run is `make wheel-check`.)"""

import importlib.metadata
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
import torch

import leapdec

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_declares_the_build_requirements():
    """`pip install .` with build isolation needs no pre-installed torch, cmake, ninja or pybind11."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip() for r in pyproject["build-system"]["requires"]}
    assert {"setuptools", "wheel", "cmake", "ninja", "pybind11", "torch"} <= names
    assert "dependencies" in pyproject["project"]["dynamic"], "torch is pinned at build time by setup.py"


@pytest.fixture(scope="module")
def sdist_members(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdist")
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--formats=gztar", "--dist-dir", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (archive,) = out.glob("leapdec-*.tar.gz")
    with tarfile.open(archive) as tar:
        return {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}


def test_sdist_holds_the_cmake_project_and_every_source(sdist_members):
    for need in ("CMakeLists.txt", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in",
                 "cmake/torch_setup.cmake", "cmake/cuda_setup.cmake", "cmake/cutlass_setup.cmake",
                 "csrc/torch_bindings.cpp", "csrc/checks.h", "csrc/module.cpp", "csrc/page_allocator.h",
                 "python/leapdec/__init__.py", "python/leapdec/py.typed",
                 "python/leapdec/zoo/stdlib-ar/config.json", "python/leapdec/zoo/stdlib-ar/model.safetensors"):
        assert need in sdist_members, f"sdist lacks {need}"
    for folder, suffixes in (("csrc", (".cpp", ".h", ".cu", ".cuh")), ("cmake", (".cmake",))):
        for f in (ROOT / folder).rglob("*"):
            if f.suffix in suffixes:
                rel = f.relative_to(ROOT).as_posix()
                assert rel in sdist_members, f"sdist lacks {rel}"
    assert not [m for m in sdist_members if m.endswith((".so", ".pyc"))], "no build outputs in the sdist"
    assert not [m for m in sdist_members if m.startswith("build/")]


def test_installed_leapdec_requires_the_torch_it_was_built_with():
    reqs = importlib.metadata.requires("leapdec") or []
    torch_reqs = [r for r in reqs if r.split("=")[0].split(">")[0].strip() == "torch"]
    assert torch_reqs == [f"torch=={torch.__version__.split('+')[0]}"], reqs


def test_build_info_reports_the_compiled_and_the_running_torch():
    info = leapdec.build_info()
    assert info["torch"] == torch.__version__
    assert info["torch_compiled"] == torch.__version__   # this checkout was built against this torch


def test_torch_mismatch_is_a_clear_import_error():
    code = "import torch; torch.__version__ = '2.99.1+cu130'; import leapdec"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: leapdec was compiled against torch " + torch.__version__), last
    assert "2.99.1+cu130 is installed" in last
    assert f"pip install torch=={torch.__version__.split('+')[0]}" in last
    with pytest.raises(ImportError, match="compiled against torch 2.13.0"):
        leapdec.check_torch_version("2.13.0+cpu", "2.14.1+cu130")
    leapdec.check_torch_version("2.13.0+cpu", "2.13.0+cu130")   # same release, other build: fine


def _setup_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("leapdec_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)      # setup() itself only runs as __main__
    return module


def test_cmake_build_folder_stays_out_of_the_sources(tmp_path, monkeypatch):
    """A wheel build puts CMake's folder under setuptools' build_temp (a temporary folder under
    `python -m build`); only an editable install keeps a persistent build/<tag> for ninja."""
    from setuptools import Distribution

    setup_py = _setup_module()
    assert setup_py.torch_requirement() == f"torch=={torch.__version__.split('+')[0]}"
    monkeypatch.delenv("LEAPDEC_BUILD_DIR", raising=False)
    cmd = setup_py.CMakeBuild(Distribution())
    cmd.build_temp = str(tmp_path / "temp")
    assert cmd.cmake_build_dir("tag") == str(tmp_path / "temp" / "tag")
    cmd.editable_mode = True
    assert cmd.cmake_build_dir("tag") == str(ROOT / "build" / "tag")
    monkeypatch.setenv("LEAPDEC_BUILD_DIR", str(tmp_path / "mine"))
    assert cmd.cmake_build_dir("tag") == str(tmp_path / "mine")
