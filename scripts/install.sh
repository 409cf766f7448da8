#!/usr/bin/env bash
# Install this project into the active Python environment (PYTHON=... names another one):
# `pip install -e ".[test]"` (the `promptkd` package and command, its core dependencies, every
# extra and the test tools), the packages Dassl imports, then Dassl at the commit we test with.
#
#   bash scripts/install.sh                 from the package index (Dassl from GitHub)
#   bash scripts/install.sh --offline DIR   from a wheelhouse built by scripts/wheelhouse.sh,
#                                           with --no-index: nothing is downloaded
#
# An installed torch >= 2.4 (and its torchvision) is kept: pip gets a constraint that pins the
# installed versions, so nothing is installed over them, and the first line says which torch
# is used. An older torch is refused (this script never replaces one), and so is a torch from
# PyTorch's own index (+cpu, +cu130) without torchvision (PyPI's torchvision is another build).
# Without a torch, pip installs the newest torch / torchvision (only from the package index).
# Dassl's setup.py imports numpy (hence --no-build-isolation) and pins tools it does not need
# at run time (hence --no-deps plus the packages it imports, DASSL_IMPORTS).
set -euo pipefail
PYTHON=$("${PYTHON:-python}" -c 'import sys; print(sys.executable)')  # before the cd: PYTHON may be relative
cd "$(dirname "$0")/.."
TORCH_MIN=2.4
DASSL_COMMIT=c61a1b570ac6333bd50fb5ae06aea59002fb20bb
# What Dassl imports (its setup.py pins other things; scripts/wheelhouse.sh downloads the same).
DASSL_IMPORTS=(gdown scikit-learn pandas wilds tensorboard)

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
OFFLINE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --offline) [ $# -ge 2 ] || { echo "error: --offline needs the wheelhouse folder" >&2; exit 2; }
               OFFLINE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

PIP=("$PYTHON" -m pip install)
if [ -n "$OFFLINE" ]; then
  [ -d "$OFFLINE" ] || { echo "error: --offline $OFFLINE: no such folder (build one with scripts/wheelhouse.sh)" >&2; exit 2; }
  OFFLINE=$(cd "$OFFLINE" && pwd)
  PIP+=(--no-index --find-links "$OFFLINE")
  # a wheelhouse holds binary wheels of one Python version: say so before pip fails on them
  built_for=$(sed -n 's/^python=//p' "$OFFLINE/wheelhouse.txt" 2>/dev/null || true)
  running=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ -n "$built_for" ] && [ "$built_for" != "$running" ]; then
    echo "error: the wheelhouse $OFFLINE was built for Python $built_for, this environment runs Python $running:" \
         "build one with \`bash scripts/wheelhouse.sh DIR --python $running\`." >&2
    exit 2
  fi
  DASSL=${DASSL:-dassl}  # its wheel is in the wheelhouse
else
  DASSL=${DASSL:-"dassl @ git+https://github.com/KaiyangZhou/Dassl.pytorch@${DASSL_COMMIT}"}
fi

# The installed torch and torchvision (distribution metadata, as pip sees them).
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" - "$TORCH_MIN" > "$WORK/keep-torch.txt" <<'EOF'
import sys
from importlib import metadata

def key(v):
    import re
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", v).groups())

for name in ("torch", "torchvision"):
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        continue
    if name == "torch" and key(version) < key(sys.argv[1]):
        sys.exit(f"error: torch {version} is installed; this project needs torch >= {sys.argv[1]}. This script "
                 "does not replace an installed torch: upgrade it yourself (the build for your CUDA, "
                 "https://pytorch.org/get-started/locally/, with the matching torchvision), or use a fresh "
                 "environment.")
    print(f"{name}=={version}")
EOF
TORCH=$(sed -n 's/^torch==//p' "$WORK/keep-torch.txt")
if [ -n "$TORCH" ] && ! grep -q '^torchvision==' "$WORK/keep-torch.txt"; then
  # torchvision's binary must match torch's build: only a PyPI torch (no +label) gets the right one from PyPI
  vision=$("$PYTHON" -c "import re; m = re.match(r'2\.(\d+)\.(\d+)', '$TORCH'); print(f'0.{int(m[1]) + 15}.{m[2]}')")
  if [ -n "$OFFLINE" ] && ! ls "$OFFLINE"/torchvision-*.whl > /dev/null 2>&1; then
    echo "error: torch $TORCH is installed but torchvision is not, and the wheelhouse $OFFLINE has none: install" \
         "the torchvision build made for this torch ($vision), or build the wheelhouse with --torchvision $vision" \
         "(docs/install.md)." >&2
    exit 2
  elif [ -z "$OFFLINE" ] && [[ "$TORCH" == *+* ]]; then
    echo "error: torch $TORCH (a build from PyTorch's own index) is installed but torchvision is not; PyPI's" \
         "torchvision is another build. Install the matching one first, e.g. pip install torchvision==$vision" \
         "--index-url https://download.pytorch.org/whl/${TORCH#*+}, then run this again." >&2
    exit 2
  fi
fi
if [ -n "$TORCH" ]; then
  echo "Using the installed $(paste -sd ' ' "$WORK/keep-torch.txt") (kept: pinned while the rest is installed)"
elif [ -n "$OFFLINE" ] && ! ls "$OFFLINE"/torch-*.whl > /dev/null 2>&1; then
  echo "error: no torch in this environment and none in the wheelhouse $OFFLINE: install torch >= $TORCH_MIN and" \
       "torchvision first (the build for your CUDA), then run this again." >&2
  exit 2
else
  echo "No torch installed: pip installs torch >= $TORCH_MIN and torchvision"
fi

"${PIP[@]}" -c "$WORK/keep-torch.txt" -e ".[test]" "${DASSL_IMPORTS[@]}"
"${PIP[@]}" --no-build-isolation --no-deps "$DASSL"
"$PYTHON" -c "import dassl, clip, torch, promptkd.trainers, sys; print('ok: dassl', dassl.__version__, '| torch', torch.__version__, '| python', sys.version.split()[0])"
