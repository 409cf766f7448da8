# Shared settings for every script in scripts/ (sourced, not run). Everything comes from the
# environment, never from editing a script:
#   DATA          dataset root (CoOp layout, see DATASETS.md)          default: ./data
#   OUTPUT        where runs are written                               default: ./output
#   CLIP_WEIGHTS  folder with OpenAI's CLIP files (ViT-L-14.pt, ...)   default: the clip cache
#   PYTHON        interpreter                                          default: python
#   TRUST=1       allow torch-1.x pickled checkpoints (published files you trust)
#   TEACHER_OPTS  KEY VALUE ... for a teacher that a stage-2 script trains first (no spaces
#                 inside a value: "INPUT.SIZE (32,32)")
#   GPUS=N        train / evaluate with N processes on this node (torchrun, one per GPU)
#   NNODES=M NODE_RANK=R RDZV_ENDPOINT=HOST:PORT   with GPUS: M nodes (run the script on each)
#   TRAIN_PY      a host codebase's train.py (CoOp, PromptSRC, a fork) with the two plugin lines
#                 (docs/plugin.md): runs go through it instead of `promptkd train`; same folders
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${DATA:-data}
OUTPUT=${OUTPUT:-output}
PYTHON=${PYTHON:-python}
COMMON_OPTS=()
if [ -n "${CLIP_WEIGHTS:-}" ]; then COMMON_OPTS+=(MODEL.WEIGHTS_DIR "$CLIP_WEIGHTS"); fi
if [ "${TRUST:-0}" = 1 ]; then COMMON_OPTS+=(MODEL.TRUST_PICKLED_CHECKPOINTS True); fi
# How the scripts start a run: "${LAUNCH[@]}" --root ... (`promptkd train`, under plain python or torchrun).
ENTRY=(-m promptkd train)
if [ -n "${TRAIN_PY:-}" ]; then
  if [ ! -f "$TRAIN_PY" ]; then
    echo "error: TRAIN_PY=$TRAIN_PY is not a file; give the path of the host codebase's train.py." >&2
    exit 2
  fi
  # `python /host/train.py`: the host's root is sys.path[0], as when it is run from there.
  ENTRY=("$(cd "$(dirname "$TRAIN_PY")" && pwd)/$(basename "$TRAIN_PY")")
fi
LAUNCH=("$PYTHON" "${ENTRY[@]}")
if [ -n "${GPUS:-}" ] || [ -n "${NNODES:-}" ]; then
  GPUS=${GPUS:-1}; NNODES=${NNODES:-1}
  if ! [[ "$GPUS" =~ ^[1-9][0-9]*$ && "$NNODES" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: GPUS ($GPUS) and NNODES ($NNODES) must be positive integers (processes per node, nodes)." >&2
    exit 2
  fi
  if [ "$NNODES" -gt 1 ]; then
    if [ -z "${NODE_RANK:-}" ] || [ -z "${RDZV_ENDPOINT:-}" ]; then
      echo "error: NNODES=$NNODES needs NODE_RANK (0..$((NNODES - 1)), this node) and RDZV_ENDPOINT" \
        "(HOST:PORT reachable from every node, e.g. node 0's address and a free port)." >&2
      exit 2
    fi
    LAUNCH=("$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS"
            --rdzv_backend c10d --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-promptkd}" "${ENTRY[@]}")
  elif [ "$GPUS" -gt 1 ]; then
    LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" "${ENTRY[@]}")
  fi
fi
DG_DATASETS=" imagenetv2 imagenet_sketch imagenet_a imagenet_r "

need_dataset_config() {
  if [ ! -f "configs/datasets/$1.yaml" ]; then
    echo "error: unknown dataset '$1' (no configs/datasets/$1.yaml); use one of:" \
      $(ls configs/datasets | sed 's/\.yaml$//') >&2
    exit 2
  fi
}

need_shots() {  # the few-shot protocol's K: a positive integer (the papers use 1 2 4 8 16)
  if ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: SHOTS is '$1'; give the labelled images per class as a positive integer (1, 2, 4, 8 or 16)." >&2
    exit 2
  fi
}

dataset_name() {  # the registered dataset name (DATASET.NAME) of configs/datasets/$1.yaml
  sed -n 's/^ *NAME: *"\{0,1\}\([A-Za-z0-9]*\)"\{0,1\}.*/\1/p' "configs/datasets/$1.yaml"
}

# Stage 2's student and objective from the environment (docs/students.md):
#   STUDENT=coop|maple|promptsrc|...  any prompt-learning method as the student (default: the paper's)
#   LOSS=kl|reverse_kl|sym_kl         the distillation objective (default kl, the published one)
# They become TRAINER.PROMPTKD.* options in COMMON_OPTS, and the run folder is promptkd_to_<student>
# (with _<loss>) so that such runs never mix with the paper's in one folder or one table row.
STUDENT_RUN=promptkd
if [ -n "${STUDENT:-}" ] && [ "${STUDENT,,}" != promptkd ]; then
  COMMON_OPTS+=(TRAINER.PROMPTKD.STUDENT "$STUDENT"); STUDENT_RUN=promptkd_to_${STUDENT,,}
fi
if [ -n "${LOSS:-}" ] && [ "$LOSS" != kl ]; then
  COMMON_OPTS+=(TRAINER.PROMPTKD.LOSS "$LOSS"); STUDENT_RUN=${STUDENT_RUN}_$LOSS
fi
