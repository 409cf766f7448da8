#!/usr/bin/env bash
# MaPLe, few-shot protocol (SHOTS labelled images of every class; reports accuracy over all classes):
#   bash scripts/maple/few_shot.sh DATASET SEED SHOTS [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" MaPLe "${CONFIG:-vit_b16_c2_ep5_batch4_2ctx}" few_shot "$@"
