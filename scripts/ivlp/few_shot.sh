#!/usr/bin/env bash
# IVLP, few-shot protocol (SHOTS labelled images of every class; reports accuracy over all classes):
#   bash scripts/ivlp/few_shot.sh DATASET SEED SHOTS [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" IVLP "${CONFIG:-vit_b16_c2_ep5_batch4_2+2ctx}" few_shot "$@"
