#!/usr/bin/env bash
# A zero-shot teacher in one command, no stage-1 training: any backbone's class vectors of ALL
# classes of DATASET, CLIP's zero-shot ensemble over a template set (the normalised mean of the
# normalised text features of every template), and its image side:
#   bash scripts/promptkd/zeroshot_teacher.sh DATASET BACKBONE [TEMPLATES] [KEY VALUE ...]
# BACKBONE: an OpenAI name or file (ViT-L/14, /w/ViT-L-14.pt) or open_clip:<arch>/<tag or file>
#   (open_clip:ViT-H-14-quickgelu/dfn5b, KDPL's teacher; docs/open_clip.md for its weights).
# TEMPLATES: imagenet80 (default; OpenAI's 80), promptsrc60, openai7, photo ("a photo of a {}.")
#   or a text file of templates, one per line, '{}' for the class name (promptkd/templates.py).
# The input size / normalisation are the backbone's own (read from it before the run).
# Writes $OUTPUT/zeroshot/DATASET/<backbone>/<templates>/export (class_vectors_<Dataset>.pt,
# image_side.pt, the predictor) and logs its zero-shot base / novel / HM (PROTOCOL=cross: accuracy)
# under .../logs. A student reads it as TRAINER.PROMPTKD.TEACHER_DIR, or beside a trained teacher
# in TRAINER.PROMPTKD.TEACHER_DIRS (docs/students.md, "Several teachers").
source "$(dirname "$0")/../_common.sh"
USAGE="usage: zeroshot_teacher.sh DATASET BACKBONE [TEMPLATES] [KEY VALUE ...]"
DATASET=${1:?$USAGE}
BACKBONE=${2:?$USAGE}
TEMPLATES=${3:-imagenet80}
need_dataset_config "$DATASET"
PROTOCOL=${PROTOCOL:-base2novel}
# the backbone's own INPUT.* (stage 1 refuses a run whose INPUT.* disagree with its backbone)
INPUT_OPTS=()
while IFS= read -r line; do INPUT_OPTS+=("$line"); done < <("$PYTHON" -c '
import sys
from promptkd.backbones import backbone_preprocess, input_options
from promptkd.errors import UserError
try:
    print("\n".join(input_options(backbone_preprocess(sys.argv[1], sys.argv[2] or None))))
except UserError as err:
    sys.exit(f"error: {err}")
' "$BACKBONE" "${CLIP_WEIGHTS:-}")
if [ "${#INPUT_OPTS[@]}" -ne 10 ]; then
  echo "error: could not read the preprocessing of backbone '$BACKBONE' (above)." >&2
  exit 2
fi
slug() { local s=${1#open_clip:}; s=${s%.pt}; s=${s%.txt}; s=${s//\//_}; echo "${s//[^A-Za-z0-9._+-]/_}"; }
if [ -f "$TEMPLATES" ]; then TEMPLATE_NAME=$(slug "$(basename "$TEMPLATES")"); else TEMPLATE_NAME=$TEMPLATES; fi
BACKBONE_NAME=$(slug "$BACKBONE")
if [ -f "$BACKBONE" ]; then BACKBONE_NAME=$(slug "$(basename "$BACKBONE")"); fi
RUN="$OUTPUT/zeroshot/$DATASET/$BACKBONE_NAME/$TEMPLATE_NAME"
"${LAUNCH[@]}" --root "$DATA" --seed 1 --trainer PromptKDTeacher \
  --dataset-config-file "configs/datasets/$DATASET.yaml" \
  --config-file configs/trainers/PromptKDTeacher/zeroshot_vit_l14.yaml \
  --output-dir "$RUN/logs" --eval-only \
  MODEL.BACKBONE.NAME "$BACKBONE" "${INPUT_OPTS[@]}" \
  TRAINER.PROMPTSRC.ZERO_SHOT_TEMPLATES "$TEMPLATES" \
  DATASET.SUBSAMPLE_CLASSES all TRAINER.PROTOCOL "$PROTOCOL" TRAINER.EXPORT_DIR "$RUN/export" \
  ${COMMON_OPTS[@]+"${COMMON_OPTS[@]}"} "${@:4}"
echo "Zero-shot teacher ($BACKBONE, $TEMPLATES): $RUN/export"
