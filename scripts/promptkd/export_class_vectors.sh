#!/usr/bin/env bash
# Export class vectors without training, from a finished teacher run (ours) or a published
# PromptSRC/PromptKD teacher (a folder holding VLPromptLearner/model-best.pth.tar or
# model.pth.tar-20; published files need TRUST=1), for any dataset:
#   bash scripts/promptkd/export_class_vectors.sh TEACHER_RUN DATASET [KEY VALUE ...]
# Writes TEACHER_RUN/export/class_vectors_<Dataset>.pt and image_side.pt (EXPORT_DIR to change)
# and logs the teacher's own base / novel / HM (or accuracy for PROTOCOL=cross).
# TEACHER_CONFIG must match the teacher's prompts (default: the base-to-novel depth-9 config;
# the cross-dataset teacher: vit_l14_c2_ep20_batch8_4+4ctx_cross_datasets, PROTOCOL=cross;
# MODAL, its old name, is still read).
# TRAINER=<method> exports from another method's run (CoOp, MaPLe, IVLP, PromptSRC,
# ZeroshotCLIP; TEACHER_CONFIG then names a file in configs/trainers/<method>/).
source "$(dirname "$0")/../_common.sh"
TEACHER_RUN=${1:?usage: export_class_vectors.sh TEACHER_RUN DATASET [KEY VALUE ...]}
DATASET=${2:?usage: export_class_vectors.sh TEACHER_RUN DATASET [KEY VALUE ...]}
need_dataset_config "$DATASET"
TRAINER=${TRAINER:-PromptKDTeacher}
TEACHER_CONFIG=${TEACHER_CONFIG:-vit_l14_c2_ep20_batch8_4+4ctx}
PROTOCOL=${PROTOCOL:-${MODAL:-base2novel}}
EXPORT_DIR=${EXPORT_DIR:-$TEACHER_RUN/export}
"${LAUNCH[@]}" --root "$DATA" --seed 1 --trainer "$TRAINER" \
  --dataset-config-file "configs/datasets/$DATASET.yaml" \
  --config-file "configs/trainers/$TRAINER/$TEACHER_CONFIG.yaml" \
  --output-dir "$EXPORT_DIR/logs/$DATASET" --eval-only --model-dir "$TEACHER_RUN" \
  DATASET.SUBSAMPLE_CLASSES all TRAINER.PROTOCOL "$PROTOCOL" TRAINER.EXPORT_DIR "$EXPORT_DIR" \
  ${COMMON_OPTS[@]+"${COMMON_OPTS[@]}"} "${@:3}"
