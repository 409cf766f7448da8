# Shared settings for every script in scripts/ (sourced, not run). Everything comes from the
# environment, never from editing a script:
#   DATA          dataset root (CoOp layout, see DATASETS.md)          default: ./data
#   OUTPUT        where runs are written                               default: ./output
#   CLIP_WEIGHTS  folder with OpenAI's CLIP files (ViT-L-14.pt, ...)   default: the clip cache
#   PYTHON        interpreter                                          default: python
#   TRUST=1       allow torch-1.x pickled checkpoints (published files you trust)
#   TEACHER_OPTS  KEY VALUE ... for a teacher that a stage-2 script trains first (no spaces
#                 inside a value: "INPUT.SIZE (32,32)")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${DATA:-data}
OUTPUT=${OUTPUT:-output}
PYTHON=${PYTHON:-python}
COMMON_OPTS=()
if [ -n "${CLIP_WEIGHTS:-}" ]; then COMMON_OPTS+=(MODEL.WEIGHTS_DIR "$CLIP_WEIGHTS"); fi
if [ "${TRUST:-0}" = 1 ]; then COMMON_OPTS+=(MODEL.TRUST_PICKLED_CHECKPOINTS True); fi
DG_DATASETS=" imagenetv2 imagenet_sketch imagenet_a imagenet_r "

kd_weight() {  # the published KD_WEIGHT per dataset
  case "$1" in fgvc_aircraft|oxford_flowers|dtd) echo 200.0 ;; *) echo 1000.0 ;; esac
}

need_dataset_config() {
  if [ ! -f "configs/datasets/$1.yaml" ]; then
    echo "error: unknown dataset '$1' (no configs/datasets/$1.yaml); use one of:" \
      $(ls configs/datasets | sed 's/\.yaml$//') >&2
    exit 2
  fi
}

dataset_name() {  # the registered dataset name (DATASET.NAME) of configs/datasets/$1.yaml
  sed -n 's/^ *NAME: *"\{0,1\}\([A-Za-z0-9]*\)"\{0,1\}.*/\1/p' "configs/datasets/$1.yaml"
}
