#!/usr/bin/env bash
# Shared runner of the baseline scripts (scripts/<method>/*.sh call it):
#   _baseline.sh TRAINER CONFIG base2new|cross DATASET SEED [KEY VALUE ...]
#   _baseline.sh TRAINER CONFIG few_shot DATASET SEED SHOTS [KEY VALUE ...]
# base2new: train on 16-shot base classes of DATASET, report base / novel / HM (one run).
# cross:    imagenet trains on all 1000 classes (16-shot, the *_cross_datasets config when
#           there is one); any other dataset evaluates that ImageNet model on it.
# few_shot: train on SHOTS labelled images of every class (the *_few_shot config when there is
#           one), report accuracy over all classes.
# Runs go to $OUTPUT/<base2new|cross>/<trainer>/<dataset>/seed<SEED> (few-shot:
# $OUTPUT/few_shot/<trainer>/<dataset>/shots<SHOTS>/seed<SEED>); each also exports its class
# vectors (so any method can be a PromptKD teacher).
source "$(dirname "$0")/_common.sh"
TRAINER=${1:?}; CONFIG=${2:?}; PROTOCOL=${3:?}
DATASET=${4:?usage: $TRAINER scripts take DATASET SEED [KEY VALUE ...]}
SEED=${5:?usage: $TRAINER scripts take DATASET SEED [KEY VALUE ...]}
need_dataset_config "$DATASET"
NAME=$(echo "$TRAINER" | tr '[:upper:]' '[:lower:]')
ARGS=(--root "$DATA" --seed "$SEED" --trainer "$TRAINER" --dataset-config-file "configs/datasets/$DATASET.yaml")
if [ "$PROTOCOL" = few_shot ]; then
  SHOTS=${6:?usage: $TRAINER few_shot.sh takes DATASET SEED SHOTS [KEY VALUE ...]}
  need_shots "$SHOTS"
  FS_CONFIG="configs/trainers/$TRAINER/${CONFIG}_few_shot.yaml"
  [ -f "$FS_CONFIG" ] || FS_CONFIG="configs/trainers/$TRAINER/$CONFIG.yaml"
  RUN="$OUTPUT/few_shot/$NAME/$DATASET/shots$SHOTS/seed$SEED"
  "${LAUNCH[@]}" "${ARGS[@]}" --config-file "$FS_CONFIG" --output-dir "$RUN" \
    DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES all TRAINER.PROTOCOL few_shot \
    ${COMMON_OPTS[@]+"${COMMON_OPTS[@]}"} "${@:7}"
elif [ "$PROTOCOL" = base2new ]; then
  RUN="$OUTPUT/base2new/$NAME/$DATASET/seed$SEED"
  "${LAUNCH[@]}" "${ARGS[@]}" --config-file "configs/trainers/$TRAINER/$CONFIG.yaml" --output-dir "$RUN" \
    DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base TRAINER.PROTOCOL base2novel \
    ${COMMON_OPTS[@]+"${COMMON_OPTS[@]}"} "${@:6}"
else
  XD_CONFIG="configs/trainers/$TRAINER/${CONFIG}_cross_datasets.yaml"
  [ -f "$XD_CONFIG" ] || XD_CONFIG="configs/trainers/$TRAINER/$CONFIG.yaml"
  RUN="$OUTPUT/cross/$NAME/$DATASET/seed$SEED"
  SOURCE="$OUTPUT/cross/$NAME/imagenet/seed$SEED"
  if [ "$DATASET" = imagenet ] || [ "$TRAINER" = ZeroshotCLIP ]; then
    "${LAUNCH[@]}" "${ARGS[@]}" --config-file "$XD_CONFIG" --output-dir "$RUN" \
      DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES all TRAINER.PROTOCOL cross \
      ${COMMON_OPTS[@]+"${COMMON_OPTS[@]}"} "${@:6}"
  else
    "${LAUNCH[@]}" "${ARGS[@]}" --config-file "$XD_CONFIG" --output-dir "$RUN" --eval-only --model-dir "$SOURCE" \
      DATASET.SUBSAMPLE_CLASSES all TRAINER.PROTOCOL cross \
      ${COMMON_OPTS[@]+"${COMMON_OPTS[@]}"} "${@:6}"
  fi
fi
echo "Run: $RUN (tables: promptkd results $OUTPUT)"
