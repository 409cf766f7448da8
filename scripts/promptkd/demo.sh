#!/usr/bin/env bash
# PromptKD end to end on a CPU, with nothing to download, on tiny CLIPs really pretrained on a
# generated world:
#   bash scripts/promptkd/demo.sh [OUT]          (OUT defaults to $OUTPUT/demo, OUTPUT to output)
#
# 1. OUT/weights: two tiny CLIPs pretrained contrastively from scratch on captioned images of
#    the toy world (6 colours x 6 shapes, promptkd/toyworld.py): a teacher (image tower 4
#    layers, embedding 64; captions in four forms) and a student (image tower 2 layers,
#    embedding 32; captions in one form, "a red circle.", so the zero-shot prompt "a photo of
#    a ..." is new to its text tower), as OpenAI CLIP state dicts (python -m promptkd.demo
#    pretrain; fixed seeds; reused while the world, model and recipe are unchanged). The
#    repository ships the full preset's two, made by that command (promptkd/demo_weights, a
#    small form), so they are unpacked in a second; DEMO_PRETRAIN=1 pretrains them here
#    instead (minutes);
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
# Two steps run side by side, each one process on one thread: pretraining the teacher while the
# student is pretrained and evaluated zero-shot; then the PromptSRC teacher while zero-shot on
# the teacher and CoOp run; then the PromptKD student. Every run is deterministic on its own,
# so the table does not depend on which finishes first. Progress lines carry the run's name.
# Runs go to OUT/runs, which is cleared first, so a re-run gives the same numbers (seed 1).
#
# What the table shows and does not show, and timings: docs/demo.md.
# Environment: PYTHON (default python); OUTPUT (default output, relative to the repository as
# in the other scripts): OUT defaults to $OUTPUT/demo; DEMO_PRESET=fast (the test suite's
# shorter pretraining, never shipped); DEMO_PRETRAIN=1 (pretrain rather than use the shipped
# weights); DEMO_EPOCHS overrides the epochs of every training run; DEMO_THREADS
# (default 1) CPU threads of each trainer run (the models are so small that one thread is
# fastest, and more threads slow down badly on a busy machine). Pretraining uses the thread
# count of its recipe (one per model). DATA and CLIP_WEIGHTS are not used: the demo generates
# its data and weights under OUT.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUTPUT=${OUTPUT:-output}
case "$OUTPUT" in /*) ;; *) OUTPUT="$REPO/$OUTPUT" ;; esac  # as the other scripts, which cd there
OUT=${1:-"$OUTPUT/demo"}
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"  # absolute (an OUT argument is relative to the caller's directory)
cd "$REPO"
PYTHON=${PYTHON:-python}
PRESET=${DEMO_PRESET:-full}
PRETRAIN_OPTS=()
case "${DEMO_PRETRAIN:-0}" in 0 | "") ;; *) PRETRAIN_OPTS+=(--from-scratch) ;; esac
SEED=1
export OMP_NUM_THREADS=${DEMO_THREADS:-1} MKL_NUM_THREADS=${DEMO_THREADS:-1}

WEIGHTS="$OUT/weights"
DATA="$OUT/data"
RUNS="$OUT/runs"
TEACHER="$WEIGHTS/teacher.pt"
STUDENT="$WEIGHTS/student.pt"

EPOCH_OPTS=()
if [ -n "${DEMO_EPOCHS:-}" ]; then EPOCH_OPTS+=(OPTIM.MAX_EPOCH "$DEMO_EPOCHS"); fi

# The trainers' console output is long (config dump, environment); it is all in each run's
# log.txt. Show the progress lines only, prefixed with the run's name (two run at a time).
show_progress() {
  { grep --line-buffered -E '^(epoch \[|\* accuracy|Exported|ToyShapes: generated|RESULT)' || true; } |
    awk -v prefix="[$1] " '{ print prefix $0; fflush() }'
}

# train_args NAME TRAINER BACKBONE SHOTS SUBSAMPLE [KEY VALUE ...]: the train.py command line of
# one run in RUNS/base2new/NAME, in ARGS
train_args() {
  local name=$1 trainer=$2 backbone=$3 shots=$4 subsample=$5
  shift 5
  local dir="$RUNS/base2new/$name/toy_shapes/seed$SEED"
  echo "-- $name: $trainer on $(basename "$backbone" .pt)'s backbone (log: $dir/log.txt)"
  ARGS=("$PYTHON" train.py --root "$DATA" --seed "$SEED" --trainer "$trainer"
    --dataset-config-file configs/datasets/toy_shapes.yaml
    --config-file "configs/trainers/$trainer/demo_tiny.yaml"
    --output-dir "$dir"
    MODEL.BACKBONE.NAME "$backbone"
    DATASET.NUM_SHOTS "$shots" DATASET.SUBSAMPLE_CLASSES "$subsample" TRAINER.MODAL base2novel
    "$@")
}

# run NAME ...: one train.py run (arguments as train_args), in the foreground
run() {
  train_args "$@"
  "${ARGS[@]}" | show_progress "$1"
}

# start NAME ...: the same in the background (its pid in BACKGROUND); join waits for it
start() {
  train_args "$@"
  "${ARGS[@]}" > >(show_progress "$1") &
  BACKGROUND=$!
}

# pretrain ROLE: the tiny CLIP of ROLE in WEIGHTS (unpacked or trained once, then reused)
pretrain() {
  "$PYTHON" -m promptkd.demo pretrain "$WEIGHTS" --preset "$PRESET" --role "$1" ${PRETRAIN_OPTS[@]+"${PRETRAIN_OPTS[@]}"} >/dev/null
}

# Background jobs of a script ignore Ctrl-C, and a failed step must not leave the other one
# running: stop it with the script (files are written atomically, so an interrupted run
# leaves nothing half-written behind).
BACKGROUND=
trap 'if [ -n "$BACKGROUND" ]; then kill "$BACKGROUND" 2>/dev/null; fi; exit 130' INT TERM
trap 'if [ -n "$BACKGROUND" ]; then kill "$BACKGROUND" 2>/dev/null || true; fi' EXIT
# join: wait for the background step; stop if it failed
join() {
  local status=0
  wait "$BACKGROUND" || status=$?
  BACKGROUND=
  if [ "$status" -ne 0 ]; then echo "error: a demo step failed (messages above)" >&2; exit "$status"; fi
}

echo "== PromptKD demo: everything under $OUT"
echo "-- tiny CLIPs pretrained on the toy world (preset $PRESET; in $WEIGHTS)"
mkdir -p "$DATA"
rm -rf "$RUNS"  # weights and data are kept; runs are redone, and stale results removed
rm -f "$OUT/results.md" "$OUT/results.csv" "$OUT/results.png"

pretrain teacher &
BACKGROUND=$!
pretrain student
run zsclip_student ZeroshotCLIP "$STUDENT" 16 base  # the first run also generates the dataset
join
start promptkd_teacher PromptKDTeacher "$TEACHER" 16 base ${EPOCH_OPTS[@]+"${EPOCH_OPTS[@]}"}
run zsclip_teacher ZeroshotCLIP "$TEACHER" 16 base
run coop CoOp "$TEACHER" 16 base ${EPOCH_OPTS[@]+"${EPOCH_OPTS[@]}"}
join
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
