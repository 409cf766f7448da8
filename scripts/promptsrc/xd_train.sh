#!/usr/bin/env bash
# PromptSRC, cross-dataset / domain generalisation (imagenet trains; other datasets evaluate it):
#   bash scripts/promptsrc/xd_train.sh DATASET SEED [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" PromptSRC "${CONFIG:-vit_b16_c2_ep20_batch4_4+4ctx}" cross "$@"
