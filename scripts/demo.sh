#!/usr/bin/env bash
# The MED-TEX scenario on built-in demo data, from a fresh clone (README's main command):
#   1. a central site trains a DenseNet121 teacher on a large fundus set (camera A), and the small student
#      architecture on the same set, and ships both weights (not the data) to a branch hospital;
#   2. the branch, with a small local set from another camera (B), only part of it labelled, distils an
#      explainer + student from the frozen teacher, its student starting from the central one (transfer +
#      distillation; STUDENT_INIT=0 starts it from random weights, as in the MED-TEX paper);
#   3. the same local labels train a student from scratch, for comparison;
#   4. all three are evaluated on the branch's test set; inference writes predictions and saliency maps;
#   5. summary.json collects the numbers.
# Settings (environment): OUT (out/demo), SIZE (64 px), N_TEACHER (2000), TEACHER_EPOCHS (8), N_LABELED (100),
#   N_UNLABELED (200), EPOCHS (20), SCRATCH_EPOCHS (30), STUDENT_INIT (1), SEED (0), EXTRA_ARGS (none; for the
#   training and evaluation runs), STUDENT_CONFIG (none: the default DenseNet student; an overlay of
#   configs/students/ as a path from the bundle's root, e.g. configs/students/resnet.yaml, added to every run
#   that builds the student);
#   N_VAL (300 central, 100 branch) and N_TEST (300) set the validation and test sets of both sites;
#   SKIP_INSTALL=1 skips the pip installs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/demo}
SIZE=${SIZE:-64}
N_TEACHER=${N_TEACHER:-2000}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-8}
N_LABELED=${N_LABELED:-100}
N_UNLABELED=${N_UNLABELED:-200}
EPOCHS=${EPOCHS:-20}
SCRATCH_EPOCHS=${SCRATCH_EPOCHS:-30}
CENTRAL_VAL=${N_VAL:-300}
BRANCH_VAL=${N_VAL:-100}
N_TEST=${N_TEST:-300}
STUDENT_INIT=${STUDENT_INIT:-1}
SEED=${SEED:-0}
STUDENT_CONFIG=${STUDENT_CONFIG:-}
if [ -n "$STUDENT_CONFIG" ] && [ ! -f "$STUDENT_CONFIG" ]; then
  echo "STUDENT_CONFIG=$STUDENT_CONFIG: no such file (the overlays are in configs/students/)" >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  python -m pip install -q --disable-pip-version-check torch==2.13.0
  python -m pip install -q --disable-pip-version-check -r requirements.txt
fi
# EXTRA_ARGS: more options for the training and evaluation runs (not inference: configs/inference.yaml has other
# keys, and unknown keys stop a run), e.g. "--preflight False" for toy sizes that lack some classes
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
bundle() {
  local extra=("${EXTRA[@]}")
  if [ "$1" = inference ]; then extra=(); fi
  python -m monai.bundle run "$@" --image_size "$SIZE" --ckpt_dir "$OUT/models" --seed "$SEED" "${extra[@]}"
}
# the student overlay goes last in every config list that builds the student (it replaces `student`)
OVERLAY=""
if [ -n "$STUDENT_CONFIG" ]; then OVERLAY=",'$STUDENT_CONFIG'"; fi
TRAIN="['configs/train.yaml'$OVERLAY]"
EVAL="['configs/train.yaml','configs/evaluate.yaml'$OVERLAY]"
SCRATCH="['configs/train.yaml','configs/baselines/scratch.yaml'$OVERLAY]"
SCRATCH_EVAL="['configs/train.yaml','configs/baselines/scratch.yaml','configs/evaluate.yaml'$OVERLAY]"
INFER="['configs/inference.yaml'$OVERLAY]"

echo "== 1/7 demo data: central site (camera A, $N_TEACHER images) and branch hospital (camera B)"
python scripts/make_demo_data.py --task fundus --out "$OUT/central_A" --n-train "$N_TEACHER" --n-val "$CENTRAL_VAL" \
  --n-test "$N_TEST" --size "$SIZE" --seed "$SEED" --domain A
python scripts/make_demo_data.py --task fundus --out "$OUT/branch_B" --n-train "$N_LABELED" --n-val "$BRANCH_VAL" \
  --n-test "$N_TEST" --n-unlabeled "$N_UNLABELED" --size "$SIZE" --seed "$((SEED + 1))" --domain B

echo "== 2/7 teacher: DenseNet121 on the central site's data"
bundle training --config_file configs/train_teacher.yaml --dataset_dir "$OUT/central_A" \
  --max_epochs "$TEACHER_EPOCHS" --output_dir "$OUT/runs/teacher"

INIT=()
if [ "$STUDENT_INIT" = 1 ]; then
  echo "== 3/7 central student: the student architecture on the central site's data (a start for the branch)"
  bundle training --config_file "$SCRATCH" --dataset_dir "$OUT/central_A" --max_epochs "$TEACHER_EPOCHS" \
    --output_dir "$OUT/runs/central_student" --ckpt_name central_student.pt
  INIT=(--init_ckpt "$OUT/models/central_student.pt" --init_submodule student)
else
  echo "== 3/7 central student: skipped (STUDENT_INIT=0)"
fi

echo "== 4/7 MED-TEX: explainer + student distilled at the branch ($N_LABELED labelled + $N_UNLABELED unlabelled)"
bundle training --config_file "$TRAIN" --dataset_dir "$OUT/branch_B" --teacher_ckpt "$OUT/models/teacher.pt" \
  --max_epochs "$EPOCHS" --output_dir "$OUT/runs/medtex" "${INIT[@]}"

echo "== 5/7 baseline: the same student from scratch on the $N_LABELED local labels"
bundle training --config_file "$SCRATCH" --dataset_dir "$OUT/branch_B" --max_epochs "$SCRATCH_EPOCHS" \
  --output_dir "$OUT/runs/scratch"

echo "== 6/7 evaluation on the branch's test set (camera B)"
bundle evaluating --config_file "$EVAL" --dataset_dir "$OUT/branch_B" --output_dir "$OUT/eval/medtex"
bundle evaluating --config_file "$SCRATCH_EVAL" --dataset_dir "$OUT/branch_B" --output_dir "$OUT/eval/scratch" \
  --saliency_metrics False
bundle evaluating --config_file "$EVAL" --dataset_dir "$OUT/branch_B" --output_dir "$OUT/eval/teacher" \
  --network_def @teacher_def --ckpt_name teacher.pt --saliency_metrics False

echo "== 7/7 inference: predictions and saliency maps for a folder of images"
mkdir -p "$OUT/inference_inputs"
python - "$OUT" <<'PY'
import json, shutil, sys
from pathlib import Path
out = Path(sys.argv[1])
items = json.loads((out / "branch_B" / "datalist.json").read_text())["test"][:12]
for item in items:
    shutil.copy(out / "branch_B" / item["image"], out / "inference_inputs")
PY
bundle inference --config_file "$INFER" --dataset_dir "$OUT/branch_B" \
  --input_dir "$OUT/inference_inputs" --output_dir "$OUT/inference"

python scripts/demo_summary.py --out "$OUT" --student-init "${INIT[1]:-}" --student-config "$STUDENT_CONFIG"
echo
echo "done in $(( $(date +%s) - START )) s. Where things are:"
echo "  checkpoints:        $OUT/models/teacher.pt (teacher), $OUT/models/model.pt (explainer + student),"
echo "                      $OUT/models/central_student.pt (central student), $OUT/models/scratch.pt (scratch)"
echo "  test metrics:       $OUT/eval/{teacher,medtex,scratch}/metrics.csv"
echo "  predictions, maps:  $OUT/inference/predictions.csv, $OUT/inference/*_overlay.png, *_saliency.nii.gz"
echo "  training logs:      $OUT/runs/* (TensorBoard)"
echo "  summary:            $OUT/summary.json"
