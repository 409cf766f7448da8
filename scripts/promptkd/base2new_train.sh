#!/usr/bin/env bash
# Stage 2 (base-to-novel): distil a ViT-B/16 PromptKD student on ALL unlabelled train images
# of DATASET from the teacher's stored class vectors; prints base / novel / HM at the end.
#   bash scripts/promptkd/base2new_train.sh DATASET SEED [KEY VALUE ...]
# The teacher: TEACHER_DIR (its export folder), by default the export of
# teacher_train.sh DATASET ${TEACHER_SEED:-1}, which is trained (or resumed) first when its
# export is missing (TEACHER_OPTS: its KEY VALUE overrides). An explicit TEACHER_DIR must
# exist. KD_WEIGHT is the config's auto: train.py picks the published one for the dataset.
source "$(dirname "$0")/../_common.sh"
DATASET=${1:?usage: base2new_train.sh DATASET SEED [KEY VALUE ...]}
SEED=${2:?usage: base2new_train.sh DATASET SEED [KEY VALUE ...]}
need_dataset_config "$DATASET"
if [ -z "${TEACHER_DIR:-}" ]; then
  TEACHER_DIR=$OUTPUT/base2new/promptkd_teacher/$DATASET/seed${TEACHER_SEED:-1}/export
  if [ ! -f "$TEACHER_DIR/class_vectors_$(dataset_name "$DATASET").pt" ]; then
    echo "No teacher export at $TEACHER_DIR: training the teacher first (teacher_train.sh $DATASET ${TEACHER_SEED:-1})."
    bash scripts/promptkd/teacher_train.sh "$DATASET" "${TEACHER_SEED:-1}" ${TEACHER_OPTS:-}
  fi
fi
RUN="$OUTPUT/base2new/$STUDENT_RUN/$DATASET/seed$SEED"
"${LAUNCH[@]}" --root "$DATA" --seed "$SEED" --trainer PromptKD \
  --dataset-config-file "configs/datasets/$DATASET.yaml" \
  --config-file "configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml" \
  --output-dir "$RUN" \
  DATASET.NUM_SHOTS 0 DATASET.SUBSAMPLE_CLASSES all TRAINER.PROTOCOL base2novel \
  TRAINER.PROMPTKD.TEACHER_DIR "$TEACHER_DIR" \
  ${COMMON_OPTS[@]+"${COMMON_OPTS[@]}"} "${@:3}"
echo "Student run: $RUN (tables: promptkd results $OUTPUT/base2new)"
