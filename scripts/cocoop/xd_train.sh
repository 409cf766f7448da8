#!/usr/bin/env bash
# CoCoOp, cross-dataset / domain generalisation (imagenet trains; other datasets evaluate it):
#   bash scripts/cocoop/xd_train.sh DATASET SEED [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" CoCoOp "${CONFIG:-vit_b16_c4_ep10_batch1_ctxv1}" cross "$@"
