#!/usr/bin/env bash
# The mutation run of docs/RELIABILITY.md ("Mutation testing"): mutmut over the workflow code named in pyproject.toml
# [tool.mutmut], then docs/results/mutation.{json,md} from its results and the reviewed survivors of
# docs/mutation_review.yaml. From a fresh start: rerunning on a mutants/ folder left by an earlier run only runs the
# mutants it has no result for.
#   bash scripts/mutation_run.sh            # MAX_CHILDREN=2 (one per core here)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf mutants
start=$(date +%s)
OMP_NUM_THREADS=1 mutmut run --max-children "${MAX_CHILDREN:-2}"
python scripts/mutation_report.py --seconds "$(($(date +%s) - start))" --children "${MAX_CHILDREN:-2}"
