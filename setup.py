"""Builds leapdec._C with CMake (vLLM-style CMakeExtension + build_ext).

Environment: LEAPDEC_CUDA=auto|0|1 (CUDA kernels), TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0a"),
MAX_JOBS (parallel compile jobs), CUDA_HOME (nvcc location), LEAPDEC_BUILD_DIR (the CMake build
folder; default: under setuptools' build_temp, or ``build/<tag>`` of the checkout for editable
installs so that ``make install`` rebuilds incrementally).

The extension is ABI-bound to the torch it is compiled against, so the wheel requires exactly
that torch release (``torch==<build version>``, as vLLM does) and ``leapdec.build_info()``
reports it beside the running one.
"""

import os
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"
# Runtime dependencies besides torch (torch is pinned to the build's version below).
DEPENDENCIES = ["numpy", "safetensors", "tokenizers>=0.19", "tqdm", "matplotlib"]


def torch_requirement() -> str:
    """``torch==X.Y.Z``: the release of the torch this build compiles against (its public version;
    the local label such as ``+cpu`` or ``+cu130`` is dropped so either build satisfies it).

    Without torch importable (metadata-only steps such as building the sdist in a bare
    environment) the requirement is left open; the wheel is always built with torch present."""
    try:
        import torch
    except ImportError:
        return "torch>=2.4"
    return f"torch=={torch.__version__.split('+')[0]}"


def _cmake_binary() -> str:
    """The pip `cmake` package's binary when installed (new enough for CUDA 13's C++20), else PATH's."""
    try:
        import cmake

        path = os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    return "cmake"


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: str = ROOT) -> None:
        super().__init__(name, sources=[], py_limited_api=False)
        self.source_dir = source_dir


class CMakeBuild(build_ext):
    def cmake_build_dir(self, tag: str) -> str:
        """The CMake build folder, never inside the package sources: LEAPDEC_BUILD_DIR if set; for
        an editable install (``make install``) a persistent ``build/<tag>`` of the checkout, since
        setuptools gives editable builds a fresh temporary build_temp and ninja could not rebuild
        incrementally there; otherwise ``<build_temp>/<tag>`` (a temporary folder under
        ``python -m build`` and ``pip install`` from an sdist)."""
        if os.environ.get("LEAPDEC_BUILD_DIR"):
            return os.path.abspath(os.environ["LEAPDEC_BUILD_DIR"])
        if getattr(self, "editable_mode", False):
            return os.path.join(ROOT, "build", tag)
        return os.path.join(os.path.abspath(self.build_temp), tag)

    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11  # noqa: F401  (fail early with a clear error if missing)
        import torch.utils

        out_dir = os.path.abspath(os.path.dirname(self.get_ext_fullpath(ext.name)))
        tag = f"{sys.implementation.cache_tag}-torch{torch.__version__}-cuda{os.environ.get('LEAPDEC_CUDA', 'auto')}"
        build_dir = self.cmake_build_dir(tag.replace("+", "_"))
        os.makedirs(build_dir, exist_ok=True)
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('CMAKE_BUILD_TYPE', 'Release')}",
            f"-DLEAPDEC_CUDA={os.environ.get('LEAPDEC_CUDA', 'auto')}",
            f"-DLEAPDEC_VERSION={VERSION}",
            f"-DLEAPDEC_TORCH_VERSION={torch.__version__}",
        ]
        try:
            import ninja  # noqa: F401
            args.append("-GNinja")
        except ImportError:
            pass
        cmake = _cmake_binary()
        subprocess.check_call([cmake, ext.source_dir, *args], cwd=build_dir)
        subprocess.check_call([cmake, "--build", ".", "--parallel", jobs], cwd=build_dir)


if __name__ == "__main__":   # setuptools' build backend runs this file as __main__; tests import it
    setup(
        name="leapdec",
        version=VERSION,
        package_dir={"": "python"},
        packages=find_packages("python"),
        install_requires=[torch_requirement(), *DEPENDENCIES],
        package_data={"leapdec": ["zoo/**/*", "py.typed"]},
        include_package_data=True,
        ext_modules=[CMakeExtension("leapdec._C")],
        cmdclass={"build_ext": CMakeBuild},
        zip_safe=False,
    )
