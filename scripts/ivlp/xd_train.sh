#!/usr/bin/env bash
# IVLP, cross-dataset / domain generalisation (imagenet trains; other datasets evaluate it):
#   bash scripts/ivlp/xd_train.sh DATASET SEED [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" IVLP "${CONFIG:-vit_b16_c2_ep5_batch4_2+2ctx}" cross "$@"
