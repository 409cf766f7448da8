#!/usr/bin/env bash
# CoCoOp, few-shot protocol (SHOTS labelled images of every class; reports accuracy over all classes):
#   bash scripts/cocoop/few_shot.sh DATASET SEED SHOTS [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" CoCoOp "${CONFIG:-vit_b16_c4_ep10_batch1_ctxv1}" few_shot "$@"
