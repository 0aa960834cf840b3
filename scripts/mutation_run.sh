#!/usr/bin/env bash
# The mutation run of docs/RELIABILITY.md ("Mutation testing"): mutmut over the workflow code named in pyproject.toml
# [tool.mutmut], then docs/results/mutation.{json,md} from its results and the reviewed survivors of
# docs/mutation_review.yaml. It starts fresh (removes mutants/); to go on with a stopped run instead, call
# `mutmut run` yourself: it runs only the mutants without a result.
#   bash scripts/mutation_run.sh            # MAX_CHILDREN=2 (one per core here)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf mutants
start=$(date +%s)
OMP_NUM_THREADS=1 mutmut run --max-children "${MAX_CHILDREN:-2}"
python scripts/mutation_report.py --seconds "$(($(date +%s) - start))" --children "${MAX_CHILDREN:-2}" --out docs/results/mutation
