#!/usr/bin/env bash
# MaPLe, base-to-novel (16-shot base classes; reports base / novel / HM):
#   bash scripts/maple/base2new_train.sh DATASET SEED [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" MaPLe "${CONFIG:-vit_b16_c2_ep5_batch4_2ctx}" base2new "$@"
