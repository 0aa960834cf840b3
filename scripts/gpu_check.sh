#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one prepared run for when a GPU machine is at hand:
#   bash scripts/gpu_check.sh [OUT]        (default out/gpu_check)
# 1. the tests of the CUDA path (tests/test_cuda.py; tests/test_foreign_teacher.py, whose bundle runs train on the GPU
#    with AMP there), 2. the GPU benchmark (scripts/benchmark.py --device cuda), 3. with SCALE=1, the scale benchmark
#    (scripts/benchmark_scale.py, SCALE_SIZES default "5000 20000", 8 loader workers) against the GPU's training
#    images/s, and with DEMO=1 the 224 px demo (scripts/demo.sh). Writes to OUT: gpu_check.json (torch, CUDA, MONAI
# versions and the GPU), pytest_gpu.log and .xml, benchmark_cuda.json, PERFORMANCE_CUDA.md, benchmark.log, and
# scale_cuda.json/.md/.png, scale.log, demo/ where asked.
# Copy the benchmark's two files to docs/results/ and docs/, and record the run in docs/RESULTS.md ("The training fast path").
# Refused without CUDA (exit 2): on a CPU the CUDA tests only skip.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/gpu_check}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "scripts/gpu_check.sh needs a CUDA GPU (torch.cuda.is_available() is False here)" >&2
  exit 2
fi
mkdir -p "$OUT"
python - "$OUT/gpu_check.json" <<'PY'
import json, sys
from datetime import datetime, timezone
import monai, torch
record = {
    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    "gpu": torch.cuda.get_device_name(0),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "monai": monai.__version__,
    "python": sys.version.split()[0],
}
open(sys.argv[1], "w").write(json.dumps(record, indent=2) + "\n")
print(record)
PY
python -m pytest tests/test_cuda.py tests/test_foreign_teacher.py -v -p no:cacheprovider \
  --junitxml "$OUT/pytest_gpu.xml" 2>&1 | tee "$OUT/pytest_gpu.log"
tests=$?
python scripts/benchmark.py --device cuda --json "$OUT/benchmark_cuda.json" --md "$OUT/PERFORMANCE_CUDA.md" 2>&1 \
  | tee "$OUT/benchmark.log"
benchmark=$?
scale=0
if [ "${SCALE:-0}" = 1 ]; then
  python scripts/benchmark_scale.py --sizes ${SCALE_SIZES:-5000 20000} --num-workers 8 --dicom 200 \
    --training-json "$OUT/benchmark_cuda.json" --workdir "$OUT/scale_data" --json "$OUT/scale_cuda.json" \
    --md "$OUT/scale_cuda.md" --png "$OUT/scale_cuda.png" 2>&1 | tee "$OUT/scale.log"
  scale=${PIPESTATUS[0]}
  rm -rf "$OUT/scale_data"
fi
if [ "${DEMO:-0}" = 1 ]; then
  OUT="$OUT/demo" SIZE=224 SKIP_INSTALL=1 bash scripts/demo.sh 2>&1 | tail -50 > "$OUT/demo.log"
fi
echo "tests exit $tests, benchmark exit $benchmark; written to $OUT: gpu_check.json, pytest_gpu.log/.xml," \
  "benchmark_cuda.json, PERFORMANCE_CUDA.md, benchmark.log"
[ "$tests" = 0 ] && [ "$benchmark" = 0 ] && [ "$scale" = 0 ]
