#!/usr/bin/env bash
# PromptKD end to end on a CPU, with nothing to download, on tiny CLIPs really pretrained on a
# generated world:
#   bash scripts/promptkd/demo.sh [OUT]          (OUT defaults to $OUTPUT/demo, OUTPUT to output)
#
# 1. OUT/weights: two tiny CLIPs pretrained contrastively from scratch on captioned images of
#    the toy world (6 colours x 6 shapes, promptkd/demo/toyworld.py): a teacher (image tower 4
#    layers, embedding 64; captions in four forms) and a student (image tower 2 layers,
#    embedding 32; captions in one form, "a red circle.", so the zero-shot prompt "a photo of
#    a ..." is new to its text tower), as OpenAI CLIP state dicts (promptkd demo-weights
#    pretrain; fixed seeds; reused while the world, model and recipe are unchanged). The
#    repository ships the full preset's two, made by that command (promptkd/demo/demo_weights, a
#    small form), so they are unpacked in a second; DEMO_PRETRAIN=1 pretrains them here
#    instead (minutes);
# 2. OUT/data/toy_shapes: the ToyShapes dataset, the same world's images in the CoOp layout,
#    36 classes: 18 base, 18 novel (datasets/toy.py; generated on first use, then reused);
# 3. zero-shot CLIP ("a photo of a {class}.") with the teacher's and with the student's backbone;
# 4. CoOp and the PromptSRC teacher (PromptKDTeacher) trained on 16-shot BASE classes of the
#    teacher backbone; the teacher exports the class vectors of ALL classes;
# 5. the PromptKD student distilled on the unlabelled train images of all classes from those
#    stored vectors;
# 6. promptkd results: one base / novel / HM table (OUT/results.md, .csv) and a plot
#    (OUT/results.png) with all of them; then the backbones' zero-shot probes per prompt form
#    (promptkd demo-weights probes).
# The steps run in demo.py, which imports Dassl once and forks a child per step, two side by
# side, each on one thread: pretraining the teacher while the student is pretrained and
# evaluated zero-shot; then the PromptSRC teacher while zero-shot on the teacher and CoOp run;
# then the PromptKD student. Every run is deterministic on its own, so the table does not
# depend on which finishes first. Progress lines carry the run's name. Runs go to OUT/runs,
# which is cleared first, so a re-run gives the same numbers (seed 1).
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
OPTS=(--preset "${DEMO_PRESET:-full}")
case "${DEMO_PRETRAIN:-0}" in 0 | "") ;; *) OPTS+=(--from-scratch) ;; esac
if [ -n "${DEMO_EPOCHS:-}" ]; then OPTS+=(--epochs "$DEMO_EPOCHS"); fi
export OMP_NUM_THREADS=${DEMO_THREADS:-1} MKL_NUM_THREADS=${DEMO_THREADS:-1}

echo "== PromptKD demo: everything under $OUT"
exec "$PYTHON" -m promptkd demo "$OUT" "${OPTS[@]}"
