#!/usr/bin/env bash
# PromptSRC, few-shot protocol (SHOTS labelled images of every class; reports accuracy over all classes):
#   bash scripts/promptsrc/few_shot.sh DATASET SEED SHOTS [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" PromptSRC "${CONFIG:-vit_b16_c2_ep20_batch4_4+4ctx}" few_shot "$@"
