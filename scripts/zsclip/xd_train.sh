#!/usr/bin/env bash
# ZeroshotCLIP, cross-dataset / domain generalisation (imagenet trains; other datasets evaluate it):
#   bash scripts/zsclip/xd_train.sh DATASET SEED [KEY VALUE ...]     (CONFIG=<file stem> to change)
exec bash "$(dirname "$0")/../_baseline.sh" ZeroshotCLIP "${CONFIG:-vit_b16}" cross "$@"
