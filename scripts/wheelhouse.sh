#!/usr/bin/env bash
# Build a wheelhouse: a folder of wheels that installs this project, every extra, the test
# tools, Dassl and the packages Dassl imports with no package index, keeping the target
# machine's own torch and torchvision (neither is in the folder).
#
#   bash scripts/wheelhouse.sh DIR [--python 3.12] [--platform manylinux_2_28_x86_64]
#                                  [--torch 2.4.1] [--torchvision VERSION]
#   then, on the target machine:  bash scripts/install.sh --offline DIR
#
# --python      the target's Python (default: this Python's); binary wheels are for that version
# --platform    the target's platform tag (default manylinux_2_28_x86_64, which torch >= 2.6's
#               own wheels need; older manylinux tags are included)
# --torch       the oldest torch the folder must work with (default 2.4.1, the oldest supported):
#               dependencies are resolved against it, so they work with any newer torch too
# --torchvision also put torchvision==VERSION (no dependencies) in the folder, for a target
#               that has torch but no torchvision (its build must match the target's torch)
#
# Runs where the package index is reachable, with the Python of this project's environment
# (PYTHON=..., default `python`). Dassl: the wheel $DASSL names, else one built from the pinned
# GitHub commit (its setup.py imports numpy, so that Python needs numpy). The project's own
# wheel is built from this clone. Packages published only as source are built into wheels here
# (they must be pure Python). DIR/wheelhouse.txt records what the folder was built for.
set -euo pipefail
PYTHON=$("${PYTHON:-python}" -c 'import sys; print(sys.executable)')  # before the cd: PYTHON may be relative
cd "$(dirname "$0")/.."
DASSL_COMMIT=c61a1b570ac6333bd50fb5ae06aea59002fb20bb
DASSL_IMPORTS=(gdown scikit-learn pandas wilds tensorboard)  # the same as scripts/install.sh's

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
DIR="" TARGET="" PLATFORM=manylinux_2_28_x86_64 TORCH=2.4.1 TORCHVISION=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python|--platform|--torch|--torchvision)
      [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
      case "$1" in --python) TARGET=$2 ;; --platform) PLATFORM=$2 ;; --torch) TORCH=$2 ;; --torchvision) TORCHVISION=$2 ;; esac
      shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    *) [ -z "$DIR" ] || { echo "error: one folder only (got '$DIR' and '$1')" >&2; exit 2; }; DIR=$1; shift ;;
  esac
done
[ -n "$DIR" ] || { usage >&2; exit 2; }
TARGET=${TARGET:-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
[[ "$TARGET" =~ ^3\.[0-9]+$ ]] || { echo "error: --python takes a version such as 3.12, got '$TARGET'" >&2; exit 2; }
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# 1. The project's own wheel, and Dassl's.
#    (built from a copy of what the wheel holds: setuptools would leave build/ in the clone)
rm -f "$DIR"/promptkd_dassl-*.whl
mkdir -p "$WORK/src"
cp -r pyproject.toml README.md promptkd trainers datasets "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
"$PYTHON" -m pip wheel --no-deps -w "$DIR" "$WORK/src" > "$WORK/project.log" 2>&1 || { tail -n 30 "$WORK/project.log" >&2; exit 1; }
PROJECT=$(ls "$DIR"/promptkd_dassl-*.whl)
if [ -n "${DASSL:-}" ]; then
  [ -f "$DASSL" ] || { echo "error: DASSL=$DASSL is not a file (give Dassl's wheel, or unset DASSL)" >&2; exit 2; }
  cp "$DASSL" "$DIR/"
else
  "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" \
    "dassl @ git+https://github.com/KaiyangZhou/Dassl.pytorch@${DASSL_COMMIT}"
fi

# 2. Stand-ins for torch and torchvision (empty wheels with a version no index has), so that
#    resolving the rest for the target neither downloads torch nor changes the target's.
make_stub() {  # name version
  local dist="$1-$2+wheelhouse.stub"
  mkdir -p "$WORK/stub/$dist.dist-info"
  printf 'Metadata-Version: 2.1\nName: %s\nVersion: %s\n' "$1" "$2+wheelhouse.stub" > "$WORK/stub/$dist.dist-info/METADATA"
  printf 'Wheel-Version: 1.0\nGenerator: wheelhouse.sh\nRoot-Is-Purelib: true\nTag: py3-none-any\n' \
    > "$WORK/stub/$dist.dist-info/WHEEL"
  (cd "$WORK/stub" && printf '%s\n' "$dist.dist-info/METADATA,," "$dist.dist-info/WHEEL,," "$dist.dist-info/RECORD,," \
     > "$dist.dist-info/RECORD" && "$PYTHON" -m zipfile -c "$WORK/stubs/$dist-py3-none-any.whl" "$dist.dist-info")
}
mkdir -p "$WORK/stubs"
TORCHVISION_STUB=$("$PYTHON" -c "v = '$TORCH'.split('.'); print(f'0.{int(v[1]) + 15}.{v[2] if len(v) > 2 else 0}')")
make_stub torch "$TORCH"
make_stub torchvision "$TORCHVISION_STUB"  # torchvision 0.(minor+15) goes with torch 2.(minor)
printf 'torch==%s+wheelhouse.stub\ntorchvision==%s+wheelhouse.stub\n' "$TORCH" "$TORCHVISION_STUB" > "$WORK/stub.txt"

# 3. Everything else, resolved and downloaded as wheels for the target. A package that is
#    published only as source makes pip stop with "No matching distribution found for X": it
#    is built into a wheel here (pure Python only) and the download is tried again.
ABI="cp${TARGET/./}"
PLATFORMS=(--platform "$PLATFORM")  # pip takes the tags given only: add the older manylinux ones
if [[ "$PLATFORM" =~ ^manylinux_2_([0-9]+)_(.+)$ ]]; then
  for ((minor = BASH_REMATCH[1] - 1; minor >= 5; minor--)); do PLATFORMS+=(--platform "manylinux_2_${minor}_${BASH_REMATCH[2]}"); done
  PLATFORMS+=(--platform "manylinux2014_${BASH_REMATCH[2]}" --platform "manylinux2010_${BASH_REMATCH[2]}"
              --platform "manylinux1_${BASH_REMATCH[2]}")
fi
DOWNLOAD=("$PYTHON" -m pip download -d "$DIR" --only-binary=:all: --python-version "$TARGET"
          --implementation cp --abi "$ABI" --abi abi3 --abi none "${PLATFORMS[@]}"
          --find-links "$WORK/stubs" --find-links "$DIR" -c "$WORK/stub.txt")
for attempt in 1 2 3 4 5 6 7 8; do
  if "${DOWNLOAD[@]}" "$PROJECT[test]" "${DASSL_IMPORTS[@]}" > "$WORK/download.log" 2>&1; then
    break
  fi
  missing=$(sed -n 's/^ERROR: No matching distribution found for \([^ ]*\).*$/\1/p' "$WORK/download.log" | head -n 1)
  if [ -z "$missing" ] || [ "$attempt" = 8 ]; then
    grep -v "^WARNING: Location" "$WORK/download.log" | tail -n 30 >&2
    echo "error: pip could not download every wheel for Python $TARGET / $PLATFORM (above)" >&2
    exit 1
  fi
  echo "No wheel of $missing for Python $TARGET: building one from its source"
  "$PYTHON" -m pip wheel -q --no-deps -w "$WORK/built" "$missing" > "$WORK/built.log" 2>&1 \
    || { tail -n 30 "$WORK/built.log" >&2; echo "error: no wheel of $missing could be built" >&2; exit 1; }
  built=$(ls -t "$WORK"/built/*.whl | head -n 1)
  case "$built" in
    *-none-any.whl) mv "$built" "$DIR/" ;;
    *) echo "error: $missing builds a binary wheel ($(basename "$built")), which cannot be made here for the target" >&2
       exit 1 ;;
  esac
done
rm -f "$DIR"/torch-*+wheelhouse.stub-*.whl "$DIR"/torchvision-*+wheelhouse.stub-*.whl

if [ -n "$TORCHVISION" ]; then
  "$PYTHON" -m pip download -q -d "$DIR" --no-deps --only-binary=:all: --python-version "$TARGET" \
    --implementation cp --abi "$ABI" "${PLATFORMS[@]}" "torchvision==$TORCHVISION" > "$WORK/torchvision.log" 2>&1 \
    || { grep -v "^WARNING: Location" "$WORK/torchvision.log" | tail -n 20 >&2
         echo "error: no torchvision $TORCHVISION wheel for Python $TARGET / $PLATFORM" >&2; exit 1; }
fi

{
  echo "python=$TARGET"
  echo "platform=$PLATFORM"
  echo "oldest_torch=$TORCH"
  echo "project=$(basename "$PROJECT")"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$DIR/wheelhouse.txt"
echo "Wheelhouse $DIR: $(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1), for Python $TARGET ($PLATFORM)."
echo "Install with: bash scripts/install.sh --offline $DIR"
