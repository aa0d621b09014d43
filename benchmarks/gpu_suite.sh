#!/usr/bin/env bash
# What a GPU session runs in one go (under 8 minutes on one H200): the CUDA tests (`pytest -m gpu`),
# then benchmarks/gpu.py; everything it writes goes into one folder. Nothing is installed or
# downloaded: the package is imported from src/ (PYTHONPATH), so it runs on the device image's own
# python3 and torch as they are.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]          # OUT_DIR: $OUT if set, else gpu_suite_out
#   bash benchmarks/gpu_suite.sh --smoke [OUT_DIR]  # the same steps, CI-sized (works on a CPU)
#
# The parity vectors: $PIXELJIT_REFERENCE, else the first of ../shared/reference/,
# shared/reference/ and .gpu/reference/ holding jit_reference_tiny.pt (a session carries a copy
# in .gpu/, since ../shared does not travel to the device machine).
#
# Files written (8 at most, flat, as the device tool returns them): environment.txt, pytest.log,
# pytest-junit.xml, benchmark.log, gpu_benchmark.json, summary.txt.
set -u

SMOKE=0
if [ "${1:-}" = "--smoke" ]; then
    SMOKE=1
    shift
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-${OUT:-gpu_suite_out}}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
PY="${PYTHON:-python3}"
TEST_LIMIT_S="${TEST_LIMIT_S:-180}"    # pytest -m gpu (the compile tests dominate)
BENCH_LIMIT_S="${BENCH_LIMIT_S:-270}"  # benchmarks/gpu.py (writes its JSON after every row)

cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ -z "${PIXELJIT_REFERENCE:-}" ]; then
    for candidate in ../shared/reference shared/reference .gpu/reference; do
        if [ -f "$candidate/jit_reference_tiny.pt" ]; then
            export PIXELJIT_REFERENCE="$ROOT/$candidate/jit_reference_tiny.pt"
            break
        fi
    done
fi

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "reference vectors: ${PIXELJIT_REFERENCE:-not found}"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
            --format=csv
    else
        echo "nvidia-smi: not on this machine"
    fi
    "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}, "
          f"{p.multi_processor_count} SMs")
else:
    print("no CUDA device")
import pixeljit
print("pixeljit from", pixeljit.__file__)
EOF
} >"$DEST/environment.txt" 2>&1
cat "$DEST/environment.txt"

echo "== pytest -m gpu (limit ${TEST_LIMIT_S}s)"
START=$(date +%s)
timeout -s INT -k 10 "$TEST_LIMIT_S" "$PY" -m pytest -m gpu -rs -q -p no:cacheprovider \
    --continue-on-collection-errors --basetemp="$(mktemp -d)" \
    --junitxml="$DEST/pytest-junit.xml" tests \
    >"$DEST/pytest.log" 2>&1
TEST_RC=$?
TEST_S=$(($(date +%s) - START))
tail -n 25 "$DEST/pytest.log"

echo "== benchmarks/gpu.py (limit ${BENCH_LIMIT_S}s)"
START=$(date +%s)
BENCH_ARGS=(--out "$DEST")
if [ "$SMOKE" = 1 ]; then
    BENCH_ARGS+=(--smoke)
fi
timeout -s INT -k 10 "$BENCH_LIMIT_S" "$PY" benchmarks/gpu.py "${BENCH_ARGS[@]}" \
    >"$DEST/benchmark.log" 2>&1
BENCH_RC=$?
BENCH_S=$(($(date +%s) - START))
tail -n 20 "$DEST/benchmark.log"

{
    echo "smoke: $SMOKE"
    echo "pytest -m gpu: exit $TEST_RC in ${TEST_S}s ($(tail -n 1 "$DEST/pytest.log"))"
    echo "benchmarks/gpu.py: exit $BENCH_RC in ${BENCH_S}s"
    if [ "$TEST_RC" = 124 ] || [ "$BENCH_RC" = 124 ] || [ "$BENCH_RC" = 130 ]; then
        echo "a step was stopped at its limit (TEST_LIMIT_S / BENCH_LIMIT_S); gpu_benchmark.json" \
            "holds the rows that finished"
    fi
} >"$DEST/summary.txt"
echo "== summary"
cat "$DEST/summary.txt"
echo "files in $DEST: $(ls "$DEST" | tr '\n' ' ')"
[ "$TEST_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
