#!/usr/bin/env bash
# ZeroshotCLIP, base-to-novel (16-shot base classes; reports base / novel / HM):
#   bash scripts/zsclip/base2new_train.sh DATASET SEED [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" ZeroshotCLIP "${CONFIG:-vit_b16}" base2new "$@"
