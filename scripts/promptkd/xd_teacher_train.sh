#!/usr/bin/env bash
# Stage 1 (cross-dataset): train the PromptKD teacher on all 1000 ImageNet classes (16-shot,
# prompt depth 3) and export ImageNet's class vectors. Other datasets' vectors are exported
# from this run by xd_train.sh when first needed.
#   bash scripts/promptkd/xd_teacher_train.sh SEED [KEY VALUE ...]
source "$(dirname "$0")/../_common.sh"
SEED=${1:?usage: xd_teacher_train.sh SEED [KEY VALUE ...]}
RUN="$OUTPUT/cross/promptkd_teacher/imagenet/seed$SEED"
"${LAUNCH[@]}" --root "$DATA" --seed "$SEED" --trainer PromptKDTeacher \
  --dataset-config-file configs/datasets/imagenet.yaml \
  --config-file "configs/trainers/PromptKDTeacher/vit_l14_c2_ep20_batch8_4+4ctx_cross_datasets.yaml" \
  --output-dir "$RUN" \
  DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES all TRAINER.PROTOCOL cross \
  ${COMMON_OPTS[@]+"${COMMON_OPTS[@]}"} "${@:2}"
echo "Cross-dataset teacher run: $RUN   class vectors: $RUN/export"
