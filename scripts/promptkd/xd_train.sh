#!/usr/bin/env bash
# Stage 2, cross-dataset and domain generalisation, with the ImageNet teacher of
# xd_teacher_train.sh (TEACHER_RUN, default seed ${TEACHER_SEED:-1}; without TEACHER_RUN a
# missing teacher is trained, or resumed, first, with TEACHER_OPTS as its KEY VALUE overrides):
#   bash scripts/promptkd/xd_train.sh DATASET SEED [KEY VALUE ...]
# * imagenet or a cross-dataset target (caltech101, ..., ucf101): exports the teacher's class
#   vectors for DATASET if missing, distils a student (depth 3) on DATASET's unlabelled train
#   images and reports test accuracy.
# * imagenetv2 | imagenet_sketch | imagenet_a | imagenet_r (test images only): exports the
#   teacher's vectors for it and evaluates the ImageNet student of the same SEED.
source "$(dirname "$0")/../_common.sh"
DATASET=${1:?usage: xd_train.sh DATASET SEED [KEY VALUE ...]}
SEED=${2:?usage: xd_train.sh DATASET SEED [KEY VALUE ...]}
need_dataset_config "$DATASET"
TEACHER_CONFIG=vit_l14_c2_ep20_batch8_4+4ctx_cross_datasets
if [ -z "${TEACHER_RUN:-}" ]; then
  TEACHER_RUN=$OUTPUT/cross/promptkd_teacher/imagenet/seed${TEACHER_SEED:-1}
  if [ ! -f "$TEACHER_RUN/export/class_vectors_ImageNet.pt" ]; then
    echo "No ImageNet teacher at $TEACHER_RUN: training it first (xd_teacher_train.sh ${TEACHER_SEED:-1})."
    bash scripts/promptkd/xd_teacher_train.sh "${TEACHER_SEED:-1}" ${TEACHER_OPTS:-}
  fi
elif [ ! -d "$TEACHER_RUN" ]; then
  echo "error: TEACHER_RUN $TEACHER_RUN does not exist; point it at an xd_teacher_train.sh run, or unset it to train one." >&2
  exit 2
fi
DATASET_NAME=$(dataset_name "$DATASET")
if [ ! -f "$TEACHER_RUN/export/class_vectors_$DATASET_NAME.pt" ]; then
  PROTOCOL=cross TEACHER_CONFIG=$TEACHER_CONFIG bash scripts/promptkd/export_class_vectors.sh \
    "$TEACHER_RUN" "$DATASET" ${XD_TEACHER_OPTS:-}
fi
STUDENT_CFG="configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx_cross_datasets.yaml"
COMMON=(--root "$DATA" --seed "$SEED" --trainer PromptKD --dataset-config-file "configs/datasets/$DATASET.yaml"
        --config-file "$STUDENT_CFG")
OPTS=(DATASET.NUM_SHOTS 0 DATASET.SUBSAMPLE_CLASSES all TRAINER.PROTOCOL cross
      TRAINER.PROMPTKD.TEACHER_DIR "$TEACHER_RUN/export")  # KD_WEIGHT: the config's auto (per dataset)
if [[ "$DG_DATASETS" == *" $DATASET "* ]]; then
  RUN="$OUTPUT/cross/$STUDENT_RUN/$DATASET/seed$SEED"
  "${LAUNCH[@]}" "${COMMON[@]}" --output-dir "$RUN" --eval-only \
    --model-dir "$OUTPUT/cross/$STUDENT_RUN/imagenet/seed$SEED" "${OPTS[@]}" \
    ${COMMON_OPTS[@]+"${COMMON_OPTS[@]}"} "${@:3}"
else
  RUN="$OUTPUT/cross/$STUDENT_RUN/$DATASET/seed$SEED"
  "${LAUNCH[@]}" "${COMMON[@]}" --output-dir "$RUN" "${OPTS[@]}" \
    ${COMMON_OPTS[@]+"${COMMON_OPTS[@]}"} "${@:3}"
fi
echo "Run: $RUN (tables: promptkd results $OUTPUT/cross)"
