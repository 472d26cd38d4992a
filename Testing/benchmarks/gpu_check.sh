#!/usr/bin/env bash
# The GPU path in under 8 minutes: CUDA tests, v2-base 128^3 b2 bf16 forward ms,
# a training step with and without checkpointing, whole-CT segment seconds, peak memory.
#
#   Testing/benchmarks/gpu_check.sh [OUT_DIR]     (default: $OUT, else ./gpu-check)
#
# Writes OUT_DIR/gpu_check.json (the numbers), OUT_DIR/tests.log (the CUDA test run) and
# OUT_DIR/status.json (exit status of each part). Exit 2 at once when there is no CUDA device.
set -u -o pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT_DIR="${1:-${OUT:-$PWD/gpu-check}}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$REPO/core${PYTHONPATH:+:$PYTHONPATH}"
export QT_QPA_PLATFORM=offscreen

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: CUDA is not available to $PYTHON; nothing to check" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/nvidia-smi.csv" 2>&1 || true

cd "$REPO" || exit 1
started=$SECONDS
# CUDA-relevant tests (devices, sliding window fallbacks, network equivalence): 3 minutes at most.
timeout 180 "$PYTHON" -m pytest -q -p no:cacheprovider -x \
    Testing/test_segment_sliding_window.py Testing/test_network_model.py Testing/test_network_official.py \
    > "$OUT_DIR/tests.log" 2>&1
tests_rc=$?
tail -3 "$OUT_DIR/tests.log"

# Timings and peaks: 4 minutes at most.
timeout 240 "$PYTHON" Testing/benchmarks/gpu_check.py "$OUT_DIR/gpu_check.json"
bench_rc=$?

printf '{"tests_rc": %d, "bench_rc": %d, "seconds": %d}\n' "$tests_rc" "$bench_rc" "$((SECONDS - started))" \
    > "$OUT_DIR/status.json"
cat "$OUT_DIR/status.json"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
