#!/usr/bin/env bash
# PromptKD end to end on a CPU, with nothing to download, on tiny CLIPs really pretrained on a
# generated world:
#   bash scripts/promptkd/demo.sh [OUT]          (OUT defaults to output/demo in the repository)
#
# 1. OUT/weights: two tiny CLIPs pretrained contrastively from scratch on captioned images of
#    the toy world (6 colours x 6 shapes, promptkd/toyworld.py), side by side, 800 steps each:
#    a teacher (image tower 4 layers, embedding 64; captions in four forms) and a student
#    (image tower 2 layers, embedding 32; captions in one form, "a red circle.", so the
#    zero-shot prompt "a photo of a ..." is new to its text tower), written as OpenAI CLIP
#    state dicts (python -m promptkd.demo pretrain; fixed seeds; reused while the world, model
#    and recipe are unchanged);
# 2. OUT/data/toy_shapes: the ToyShapes dataset, the same world's images in the CoOp layout,
#    36 classes: 18 base, 18 novel (datasets/toy.py; generated on first use, then reused);
# 3. zero-shot CLIP ("a photo of a {class}.") with the teacher's and with the student's backbone;
# 4. CoOp and the PromptSRC teacher (PromptKDTeacher) trained on 16-shot BASE classes of the
#    teacher backbone; the teacher exports the class vectors of ALL classes;
# 5. the PromptKD student distilled on the unlabelled train images of all classes from those
#    stored vectors;
# 6. python -m promptkd.results: one base / novel / HM table (OUT/results.md, .csv) and a plot
#    (OUT/results.png) with all of them; then the backbones' zero-shot probes per prompt form
#    (python -m promptkd.demo probes).
# Runs go to OUT/runs, which is cleared first, so a re-run gives the same numbers (seed 1).
#
# What the table shows and does not show, and timings: README.md, "The demo".
# Environment: PYTHON (default python); DEMO_PRESET=fast (the test suite's shorter
# pretraining); DEMO_EPOCHS overrides the epochs of every training run; DEMO_THREADS (default 1)
# CPU threads of the trainer runs (the models are so small that one thread is fastest, and more
# threads slow down badly on a busy machine). Pretraining uses the thread count of its recipe
# (one per model).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT=${1:-"$REPO/output/demo"}
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"  # absolute, relative to the caller's directory
cd "$REPO"
PYTHON=${PYTHON:-python}
PRESET=${DEMO_PRESET:-full}
SEED=1
export OMP_NUM_THREADS=${DEMO_THREADS:-1} MKL_NUM_THREADS=${DEMO_THREADS:-1}

WEIGHTS="$OUT/weights"
DATA="$OUT/data"
RUNS="$OUT/runs"

EPOCH_OPTS=()
if [ -n "${DEMO_EPOCHS:-}" ]; then EPOCH_OPTS+=(OPTIM.MAX_EPOCH "$DEMO_EPOCHS"); fi

# The trainers' console output is long (config dump, environment); it is all in each run's
# log.txt. Show the progress lines only.
show_progress() {
  { grep --line-buffered -E '^(epoch \[|\* accuracy|Exported|ToyShapes: generated|RESULT)' || true; }
}

# run NAME TRAINER BACKBONE SHOTS SUBSAMPLE [KEY VALUE ...]: one train.py run in RUNS/base2new/NAME
run() {
  local name=$1 trainer=$2 backbone=$3 shots=$4 subsample=$5
  shift 5
  local dir="$RUNS/base2new/$name/toy_shapes/seed$SEED"
  echo "-- $name: $trainer on $(basename "$backbone" .pt)'s backbone (log: $dir/log.txt)"
  "$PYTHON" train.py --root "$DATA" --seed "$SEED" --trainer "$trainer" \
    --dataset-config-file configs/datasets/toy_shapes.yaml \
    --config-file "configs/trainers/$trainer/demo_tiny.yaml" \
    --output-dir "$dir" \
    MODEL.BACKBONE.NAME "$backbone" \
    DATASET.NUM_SHOTS "$shots" DATASET.SUBSAMPLE_CLASSES "$subsample" TRAINER.MODAL base2novel \
    "$@" | show_progress
}

echo "== PromptKD demo: everything under $OUT"
echo "-- tiny CLIPs pretrained on the toy world (preset $PRESET; cached in $WEIGHTS)"
pids=()
# Background jobs of a script ignore Ctrl-C: stop them with the script (files are written
# atomically, so an interrupted pretraining leaves nothing behind).
trap 'kill ${pids[@]+"${pids[@]}"} 2>/dev/null; exit 130' INT TERM
for role in teacher student; do  # side by side, one thread each (the files do not depend on it)
  "$PYTHON" -m promptkd.demo pretrain "$WEIGHTS" --preset "$PRESET" --role "$role" >/dev/null &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
trap - INT TERM
if [ "$status" -ne 0 ]; then echo "error: pretraining failed (messages above)" >&2; exit "$status"; fi
TEACHER="$WEIGHTS/teacher.pt"
STUDENT="$WEIGHTS/student.pt"
mkdir -p "$DATA"
rm -rf "$RUNS"  # weights and data are kept; runs are redone, and stale results removed
rm -f "$OUT/results.md" "$OUT/results.csv" "$OUT/results.png"

run zsclip_teacher ZeroshotCLIP "$TEACHER" 16 base
run zsclip_student ZeroshotCLIP "$STUDENT" 16 base
run coop CoOp "$TEACHER" 16 base ${EPOCH_OPTS[@]+"${EPOCH_OPTS[@]}"}
run promptkd_teacher PromptKDTeacher "$TEACHER" 16 base ${EPOCH_OPTS[@]+"${EPOCH_OPTS[@]}"}
run promptkd PromptKD "$STUDENT" 0 all \
  TRAINER.PROMPTKD.TEACHER_DIR "$RUNS/base2new/promptkd_teacher/toy_shapes/seed$SEED/export" \
  ${EPOCH_OPTS[@]+"${EPOCH_OPTS[@]}"}

echo "-- results"
"$PYTHON" -m promptkd.results "$RUNS" --out "$OUT/results" --plot --seeds "$SEED"
echo
echo "Zero-shot probes of the pretrained backbones (fresh images; from $WEIGHTS/*.json): what"
echo "each backbone's features allow when prompted in a form it was pretrained on."
"$PYTHON" -m promptkd.demo probes "$WEIGHTS"
echo
echo "Results table: $OUT/results.md (and $OUT/results.csv)"
echo "Plot:          $OUT/results.png"
