#!/usr/bin/env bash
# Stage 1 (base-to-novel): train the PromptKD teacher (PromptSRC, ViT-L/14) on 16-shot base
# classes of DATASET and export its class vectors of ALL classes to <run>/export.
#   bash scripts/promptkd/teacher_train.sh DATASET SEED [KEY VALUE ...]
# TEACHER_CONFIG picks another teacher from configs/trainers/PromptKDTeacher (e.g.
# ivlp_vit_l14_c2_ep20_batch8_4+4ctx, zeroshot_vit_l14). Re-running resumes / re-exports.
source "$(dirname "$0")/../_common.sh"
DATASET=${1:?usage: teacher_train.sh DATASET SEED [KEY VALUE ...]}
SEED=${2:?usage: teacher_train.sh DATASET SEED [KEY VALUE ...]}
need_dataset_config "$DATASET"
TEACHER_CONFIG=${TEACHER_CONFIG:-vit_l14_c2_ep20_batch8_4+4ctx}
RUN="$OUTPUT/base2new/promptkd_teacher/$DATASET/seed$SEED"
"${LAUNCH[@]}" --root "$DATA" --seed "$SEED" --trainer PromptKDTeacher \
  --dataset-config-file "configs/datasets/$DATASET.yaml" \
  --config-file "configs/trainers/PromptKDTeacher/$TEACHER_CONFIG.yaml" \
  --output-dir "$RUN" \
  DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base TRAINER.PROTOCOL base2novel \
  ${COMMON_OPTS[@]+"${COMMON_OPTS[@]}"} "${@:3}"
echo "Teacher run: $RUN   class vectors: $RUN/export"
