#!/usr/bin/env bash
# The whole PromptKD pipeline in about a minute on a CPU, with nothing to download:
#   bash scripts/promptkd/demo.sh [OUT]          (OUT defaults to output/demo in the repository)
#
# 1. OUT/weights: tiny random-weight CLIPs, teacher (3 layers) and student (2 layers), 32 px
#    (python -m promptkd.demo make-weights; fixed seeds, reused when present);
# 2. OUT/data/toy_shapes: the ToyShapes dataset, 10 classes of generated 32x32 images
#    (datasets/toy.py; generated on first use, then reused);
# 3. stage 1: the PromptKDTeacher trains on 16-shot BASE classes and exports the class vectors
#    of ALL classes (configs/trainers/PromptKDTeacher/demo_tiny.yaml);
# 4. stage 2: the PromptKD student is distilled on the unlabelled train images of all classes
#    from those stored vectors (configs/trainers/PromptKD/demo_tiny.yaml);
# 5. python -m promptkd.results: base / novel / HM table (OUT/results.md, .csv) and a plot
#    (OUT/results.png).
# Runs go to OUT/runs, which is cleared first, so a re-run gives the same numbers (seed 1).
# The backbones are random, so the numbers only show the mechanics: the teacher learns its
# base classes, the student follows the teacher without labels; novel-class accuracy stays
# near chance (20%) because a random text encoder knows nothing about unseen class names.
#
# Environment: PYTHON (default python); DEMO_EPOCHS overrides the epochs of both stages,
# DEMO_TEACHER_EPOCHS / DEMO_STUDENT_EPOCHS one of them (a quick smoke run: DEMO_EPOCHS=2);
# DEMO_THREADS (default 1) CPU threads per process: the models are so small that one thread
# is fastest, and more threads slow down badly on a busy machine.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT=${1:-"$REPO/output/demo"}
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"  # absolute, relative to the caller's directory
cd "$REPO"
PYTHON=${PYTHON:-python}
SEED=1
export OMP_NUM_THREADS=${DEMO_THREADS:-1} MKL_NUM_THREADS=${DEMO_THREADS:-1}

WEIGHTS="$OUT/weights"
DATA="$OUT/data"
RUNS="$OUT/runs"
TEACHER_RUN="$RUNS/base2new/promptkd_teacher/toy_shapes/seed$SEED"
STUDENT_RUN="$RUNS/base2new/promptkd/toy_shapes/seed$SEED"

TEACHER_OPTS=()
STUDENT_OPTS=()
TEACHER_EPOCHS=${DEMO_TEACHER_EPOCHS:-${DEMO_EPOCHS:-}}
STUDENT_EPOCHS=${DEMO_STUDENT_EPOCHS:-${DEMO_EPOCHS:-}}
if [ -n "$TEACHER_EPOCHS" ]; then TEACHER_OPTS+=(OPTIM.MAX_EPOCH "$TEACHER_EPOCHS"); fi
if [ -n "$STUDENT_EPOCHS" ]; then STUDENT_OPTS+=(OPTIM.MAX_EPOCH "$STUDENT_EPOCHS"); fi

# The trainers' console output is long (config dump, environment); it is all in each run's
# log.txt. Show the progress lines only; progress bars appear on stderr in a terminal.
show_progress() {
  { grep --line-buffered -E '^(epoch \[|Results on|\| |\|-|Exported|ToyShapes: generated|Elapsed)' || true; }
}

echo "== PromptKD demo: everything under $OUT"
echo "-- tiny CLIP weights"
"$PYTHON" -m promptkd.demo make-weights "$WEIGHTS" >/dev/null
mkdir -p "$DATA"
rm -rf "$RUNS"  # weights and data are kept; runs are redone, and stale results removed
rm -f "$OUT/results.md" "$OUT/results.csv" "$OUT/results.png"

echo "-- stage 1: teacher on 16-shot base classes (log: $TEACHER_RUN/log.txt)"
"$PYTHON" train.py --root "$DATA" --seed "$SEED" --trainer PromptKDTeacher \
  --dataset-config-file configs/datasets/toy_shapes.yaml \
  --config-file configs/trainers/PromptKDTeacher/demo_tiny.yaml \
  --output-dir "$TEACHER_RUN" \
  MODEL.BACKBONE.NAME "$WEIGHTS/teacher.pt" \
  DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base TRAINER.MODAL base2novel \
  ${TEACHER_OPTS[@]+"${TEACHER_OPTS[@]}"} | show_progress

echo "-- stage 2: student distilled on unlabelled images of all classes (log: $STUDENT_RUN/log.txt)"
"$PYTHON" train.py --root "$DATA" --seed "$SEED" --trainer PromptKD \
  --dataset-config-file configs/datasets/toy_shapes.yaml \
  --config-file configs/trainers/PromptKD/demo_tiny.yaml \
  --output-dir "$STUDENT_RUN" \
  MODEL.BACKBONE.NAME "$WEIGHTS/student.pt" \
  DATASET.NUM_SHOTS 0 DATASET.SUBSAMPLE_CLASSES all TRAINER.MODAL base2novel \
  TRAINER.PROMPTKD.TEACHER_DIR "$TEACHER_RUN/export" \
  ${STUDENT_OPTS[@]+"${STUDENT_OPTS[@]}"} | show_progress

echo "-- results"
"$PYTHON" -m promptkd.results "$OUT" --plot --seeds "$SEED"
echo
echo "Results table: $OUT/results.md (and $OUT/results.csv)"
echo "Plot:          $OUT/results.png"
