#!/usr/bin/env bash
# CoOp, few-shot protocol (SHOTS labelled images of every class; reports accuracy over all classes):
#   bash scripts/coop/few_shot.sh DATASET SEED SHOTS [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" CoOp "${CONFIG:-vit_b16_ep50_ctxv1}" few_shot "$@"
