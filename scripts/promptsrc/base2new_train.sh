#!/usr/bin/env bash
# PromptSRC, base-to-novel (16-shot base classes; reports base / novel / HM):
#   bash scripts/promptsrc/base2new_train.sh DATASET SEED [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" PromptSRC "${CONFIG:-vit_b16_c2_ep20_batch4_4+4ctx}" base2new "$@"
