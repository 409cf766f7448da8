#!/usr/bin/env bash
# PromptKD, few-shot protocol: a teacher trained on SHOTS labelled images of every class of
# DATASET, then a ViT-B/16 student distilled on ALL unlabelled train images (labels never read);
# reports accuracy over all classes.
#   bash scripts/promptkd/few_shot.sh DATASET SEED SHOTS [KEY VALUE ...]
# The teacher: TEACHER_DIR (its export folder), by default the export of the few-shot teacher of
# DATASET, SHOTS and seed ${TEACHER_SEED:-1} in $OUTPUT/few_shot/promptkd_teacher, trained (or
# resumed) first when its export is missing: TEACHER_CONFIG (a configs/trainers/PromptKDTeacher
# stem) and TEACHER_OPTS (its KEY VALUE overrides) as for teacher_train.sh. STUDENT= / LOSS= and
# the pool settings work as for base2new_train.sh (docs/students.md, docs/protocols.md).
source "$(dirname "$0")/../_common.sh"
USAGE="usage: few_shot.sh DATASET SEED SHOTS [KEY VALUE ...]"
DATASET=${1:?$USAGE}; SEED=${2:?$USAGE}; SHOTS=${3:?$USAGE}
need_dataset_config "$DATASET"
need_shots "$SHOTS"
if [ -z "${TEACHER_DIR:-}" ]; then
  TEACHER_RUN=$OUTPUT/few_shot/promptkd_teacher/$DATASET/shots$SHOTS/seed${TEACHER_SEED:-1}
  TEACHER_DIR=$TEACHER_RUN/export
  if [ ! -f "$TEACHER_DIR/class_vectors_$(dataset_name "$DATASET").pt" ]; then
    echo "No teacher export at $TEACHER_DIR: training the $SHOTS-shot teacher first (seed ${TEACHER_SEED:-1})."
    "${LAUNCH[@]}" --root "$DATA" --seed "${TEACHER_SEED:-1}" --trainer PromptKDTeacher \
      --dataset-config-file "configs/datasets/$DATASET.yaml" \
      --config-file "configs/trainers/PromptKDTeacher/${TEACHER_CONFIG:-vit_l14_c2_ep20_batch8_4+4ctx}.yaml" \
      --output-dir "$TEACHER_RUN" ${COMMON_OPTS[@]+"${COMMON_OPTS[@]}"} ${TEACHER_OPTS:-} \
      DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES all TRAINER.PROTOCOL few_shot  # the protocol wins
  fi
fi
RUN="$OUTPUT/few_shot/$STUDENT_RUN/$DATASET/shots$SHOTS/seed$SEED"
"${LAUNCH[@]}" --root "$DATA" --seed "$SEED" --trainer PromptKD \
  --dataset-config-file "configs/datasets/$DATASET.yaml" \
  --config-file "configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml" \
  --output-dir "$RUN" \
  DATASET.NUM_SHOTS 0 DATASET.SUBSAMPLE_CLASSES all TRAINER.PROTOCOL few_shot \
  TRAINER.PROMPTKD.TEACHER_DIR "$TEACHER_DIR" \
  ${COMMON_OPTS[@]+"${COMMON_OPTS[@]}"} "${@:4}"
echo "Student run: $RUN (tables: promptkd results $OUTPUT/few_shot)"
