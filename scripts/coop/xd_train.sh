#!/usr/bin/env bash
# CoOp, cross-dataset / domain generalisation (imagenet trains; other datasets evaluate it):
#   bash scripts/coop/xd_train.sh DATASET SEED [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" CoOp "${CONFIG:-vit_b16_ep50_ctxv1}" cross "$@"
