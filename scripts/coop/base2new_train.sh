#!/usr/bin/env bash
# CoOp, base-to-novel (16-shot base classes; reports base / novel / HM):
#   bash scripts/coop/base2new_train.sh DATASET SEED [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" CoOp "${CONFIG:-vit_b16_ep50_ctxv1}" base2new "$@"
