#!/usr/bin/env bash
# CoCoOp, base-to-novel (16-shot base classes; reports base / novel / HM):
#   bash scripts/cocoop/base2new_train.sh DATASET SEED [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" CoCoOp "${CONFIG:-vit_b16_c4_ep10_batch1_ctxv1}" base2new "$@"
