"""The CUDA kernel templates (csrc/include/leapdec) run on the CPU under a host emulation of the
CUDA execution model (tests/ops/cuda_emulation): threads, barriers, warp shuffles, and the
ldmatrix / mma.sync fragment layouts taken from the PTX tables. A double-precision reference
checks the decode, tensor-core and CUDA-core attention kernels, the split merge, the cache
writes and RoPE; a run with corrupt indices under AddressSanitizer checks that the kernels
never touch memory out of bounds. This catches layout, masking and indexing bugs on machines
without a GPU. Needs g++ with C++20 and the CUDA headers (cuda_fp16.h); skipped otherwise.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "csrc" / "include" / "leapdec"
HARNESS = Path(__file__).resolve().parent / "cuda_emulation"
HEADERS = ["attention_common.cuh", "attention_decode.cuh", "attention_prefill.cuh", "linear.cuh", "math.cuh", "norm.cuh",
           "paged_kv.cuh", "rope.cuh", "vec_dtypes.cuh"]
SUITES = ["fastdiv", "writes", "decode", "mma", "simt", "generic", "corrupt", "linear", "norm"]


def cuda_include():
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_fp16.h").exists():
            return Path(home) / "include"
    return None


def emulated_headers(dst: Path) -> Path:
    """Copies of the kernel headers for the host build: shared arrays become statics (one block
    runs at a time), launch bounds go, and mma.cuh is replaced by the emulated primitives."""
    out = dst / "leapdec"
    out.mkdir(parents=True)
    for name in HEADERS:
        text = (KERNELS / name).read_text()
        text = text.replace("extern __shared__", "extern")
        text = text.replace("__shared__", "static")
        text = re.sub(r"__launch_bounds__\((?:[^()]|\([^()]*\))*\)", "", text)
        (out / name).write_text(text)
    shutil.copy(HARNESS / "emu_mma.cuh", out / "mma.cuh")
    return dst


def compile_driver(build: Path, include: Path, sanitize: bool) -> Path:
    exe = build / ("driver_asan" if sanitize else "driver")
    cmd = ["g++", "-std=c++20", "-O0", "-pthread", "-include", str(HARNESS / "emu_prelude.h"),
           f"-I{build / 'include'}", f"-I{include}", str(HARNESS / "kernels_emulated.cpp"), "-o", str(exe)]
    if sanitize:
        cmd[1:1] = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return exe


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    include = cuda_include()
    if shutil.which("g++") is None or include is None:
        pytest.skip("needs g++ and the CUDA headers (cuda_fp16.h)")
    build = tmp_path_factory.mktemp("cuda_emulation")
    emulated_headers(build / "include")
    try:
        return compile_driver(build, include, sanitize=True)
    except subprocess.CalledProcessError as exc:
        if "sanitize" not in exc.stderr and "asan" not in exc.stderr:
            raise AssertionError(f"emulation harness failed to compile:\n{exc.stderr[-4000:]}")
        return compile_driver(build, include, sanitize=False)  # no sanitizer runtime here


@pytest.mark.parametrize("suite", SUITES)
def test_kernels_under_emulation(driver, suite):
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="halt_on_error=1")
    res = subprocess.run([str(driver), suite], capture_output=True, text=True, timeout=600, env=env)
    report = res.stdout + res.stderr
    assert res.returncode == 0 and "FAIL" not in res.stdout, report[-4000:]
    assert "all ok" in res.stdout, report[-4000:]
