#!/usr/bin/env bash
# One command for a GPU machine: build leapdec with the CUDA kernels, run the CUDA tests
# (pytest -m cuda), run the GPU benchmarks (bench_attention.py and every other
# benchmarks/bench_*.py that accepts --gpu-check), print a short table last.
#
#   bash benchmarks/gpu_check.sh            # logs and JSON go to $OUT (or a fresh /tmp folder)
#
# Needs: a CUDA build of torch, nvcc, cmake, ninja, pybind11 (no network). Environment:
# PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default 9.0a), OUT, GPU_CHECK_BUDGET_S
# (default 470: the whole run stays under 8 minutes; later steps get what is left).
# Exit status: non-zero when the build, a test or a benchmark fails.
set -u -o pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$(mktemp -d /tmp/leapdec-gpu-check.XXXXXX)}
mkdir -p "$OUT_DIR"
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-470}
DEADLINE=$((START + BUDGET))
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export LEAPDEC_CUDA=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1

STEPS=()
FAILED=0

# run_step NAME MAX_SECONDS CMD...: runs CMD with a timeout (capped by the deadline), logs to
# $OUT_DIR/NAME.log, records "name|status|seconds".
run_step() {
  local name=$1 max=$2
  shift 2
  local now left limit t0 rc status
  now=$(date +%s)
  left=$((DEADLINE - now))
  limit=$(( max < left ? max : left ))
  if (( limit < 10 )); then
    STEPS+=("$name|skipped (time budget)|0")
    echo "== $name: skipped, time budget spent" | tee -a "$OUT_DIR/gpu_check.log"
    FAILED=1
    return 1
  fi
  echo "== $name (limit ${limit}s)" | tee -a "$OUT_DIR/gpu_check.log"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if (( rc == 0 )); then
    status=ok
  elif (( rc == 124 || rc == 137 )); then
    status="timeout (${limit}s)"
  else
    status="failed (rc $rc)"
  fi
  STEPS+=("$name|$status|$dt")
  if (( rc != 0 )); then
    FAILED=1
    echo "-- $name $status; last lines of $OUT_DIR/$name.log:" | tee -a "$OUT_DIR/gpu_check.log"
    tail -n 30 "$OUT_DIR/$name.log" | tee -a "$OUT_DIR/gpu_check.log"
  fi
  return $rc
}

# The build runs under `timeout`, so it is an exported function run by a child bash.
build() {
  # Editable install (the .so lands in python/leapdec); fall back to an in-place build_ext.
  if ! "$PY" -m pip install --no-build-isolation --no-deps --no-index -e "$ROOT"; then
    echo "pip install -e failed; trying setup.py build_ext --inplace"
    "$PY" setup.py build_ext --inplace || return 1
  fi
  # Import from the source tree too, in case pip put the package elsewhere.
  PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'EOF'
import torch, leapdec
info = leapdec.build_info()
print(info)
assert info["cuda"], "leapdec was built without the CUDA kernels"
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print(torch.cuda.get_device_name(), "torch", torch.__version__)
EOF
}

# Prefer the cmake/ninja that pip installed next to this Python (a system cmake may be too old
# for the CUDA C++20 dialect).
PY_BIN=$(dirname "$(command -v "$PY")")
CMAKE_BIN=$("$PY" -c "import cmake; print(cmake.CMAKE_BIN_DIR)" 2>/dev/null || true)
export PATH="${CMAKE_BIN:+$CMAKE_BIN:}$PY_BIN:$PATH"

export -f build
export PY ROOT
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "leapdec gpu_check: ${GPU_NAME:-unknown GPU}, commit $COMMIT, logs in $OUT_DIR" | tee "$OUT_DIR/gpu_check.log"

if run_step build 300 bash -c build; then
  run_step pytest_cuda 180 "$PY" -m pytest -m cuda -q -p no:cacheprovider --maxfail=10 \
    --junitxml="$OUT_DIR/pytest_cuda.xml"
  run_step bench_attention 200 "$PY" benchmarks/bench_attention.py --gpu-check --json "$OUT_DIR/bench_attention.json" \
    --out "$OUT_DIR/bench_attention"
  for script in benchmarks/bench_*.py; do
    name=$(basename "$script" .py)
    [[ $name == bench_attention ]] && continue
    # the scripts are thin entry points: the flags live in the package module (leapdec.bench.<name>)
    src=python/leapdec/bench/${name#bench_}.py
    [[ -f $src ]] || src=$script
    grep -q -- "--gpu-check" "$src" || continue
    run_step "$name" 150 "$PY" "$script" --gpu-check --out "$OUT_DIR/$name"
  done
fi

# ---------------------------------------------------------------- summary (printed last)
{
  echo
  echo "## leapdec gpu_check — $(date -u +%Y-%m-%dT%H:%MZ), ${GPU_NAME:-unknown GPU}, commit $COMMIT"
  echo
  printf '%-22s %-28s %6s\n' step status seconds
  for s in "${STEPS[@]}"; do
    IFS='|' read -r n st sec <<< "$s"
    printf '%-22s %-28s %6s\n' "$n" "$st" "$sec"
  done
  if [[ -f $OUT_DIR/pytest_cuda.log ]]; then
    echo
    echo "pytest -m cuda: $(grep -E '(passed|failed|error)' "$OUT_DIR/pytest_cuda.log" | tail -n 1)"
  fi
  if [[ -f $OUT_DIR/bench_attention.json ]]; then
    echo
    "$PY" - "$OUT_DIR/bench_attention.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"paged_attention, {r['device']}, fp16, copy bandwidth {r['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s")
print(f"{'case':<12} {'leapdec us':>10} {'SDPA us':>9} {'Flex us':>8} {'vs SDPA':>8} {'x floor':>8} {'max|err|':>9}")
for x in r["results"]:
    flex = "-" if x["flex_us"] is None else f"{x['flex_us']:.1f}"
    print(f"{x['name']:<12} {x['leapdec_us']:>10.1f} {x['sdpa_us']:>9.1f} {flex:>8} "
          f"{x['speedup_vs_sdpa']:>7.2f}x {x['leapdec_over_floor']:>8.2f} {x['max_abs_err_vs_sdpa']:>9.1e}")
EOF
  fi
  echo
  echo "total $(( $(date +%s) - START ))s; logs and JSON in $OUT_DIR"
  if (( FAILED )); then echo "RESULT: FAILED"; else echo "RESULT: OK"; fi
} | tee "$OUT_DIR/summary.md"

exit $FAILED
