#!/usr/bin/env bash
# The GPU check, one command: install this project from an offline wheelhouse (optional), run
# the CUDA test tier and the GPU report, and leave everything in one folder.
#
#   bash scripts/gpu_check.sh OUT [--wheelhouse DIR] [--smoke]
#
# OUT           the folder for gpu_report.md (the table), gpu_report.json, tier.xml / tier.log
#               (the CUDA tier's JUnit report and output) and install.log
# --wheelhouse  install first with `scripts/install.sh --offline DIR` (a wheelhouse built by
#               scripts/wheelhouse.sh for this Python; the machine's torch is kept)
# --smoke       tiny shapes (the CPU rehearsal the test suite runs; no figures)
#
# PYTHON=... names the Python (default python3). Exits 1 when the install fails, when the tier
# ran no test or any failed (the figures are still written), or when the report fails. Sized
# for one H100: about 1 min install, at most 5 min tier (--tier-timeout), about 2 min report.
set -uo pipefail
PYTHON=$(command -v "${PYTHON:-python3}") || { echo "error: no ${PYTHON:-python3} on PATH (set PYTHON=...)" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")/.." && pwd)
usage() { sed -n '2,17p' "$HERE/scripts/gpu_check.sh" | sed 's/^# \{0,1\}//'; }
OUT="" WHEELHOUSE="" REPORT_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse) [ $# -ge 2 ] || { echo "error: --wheelhouse needs a folder" >&2; exit 2; }; WHEELHOUSE=$2; shift 2 ;;
    --smoke) REPORT_ARGS+=(--smoke); shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "error: one folder only (got '$OUT' and '$1')" >&2; exit 2; }; OUT=$1; shift ;;
  esac
done
[ -n "$OUT" ] || { usage >&2; exit 2; }
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
[ -z "$WHEELHOUSE" ] || WHEELHOUSE=$(cd "$WHEELHOUSE" 2>/dev/null && pwd) || { echo "error: --wheelhouse: no such folder" >&2; exit 2; }
cd "$HERE"
START=$(date +%s)
if [ -n "$WHEELHOUSE" ]; then
  echo "installing from $WHEELHOUSE (log: $OUT/install.log)"
  if ! PYTHON="$PYTHON" bash scripts/install.sh --offline "$WHEELHOUSE" > "$OUT/install.log" 2>&1; then
    tail -n 20 "$OUT/install.log" >&2
    echo "error: the offline install failed (full log: $OUT/install.log)" >&2
    exit 1
  fi
  tail -n 1 "$OUT/install.log"
fi
"$PYTHON" -m benchmarks.gpu_report --out "$OUT" "${REPORT_ARGS[@]}"
rc=$?
echo "gpu_check: exit $rc after $(( $(date +%s) - START )) s; table $OUT/gpu_report.md, JSON $OUT/gpu_report.json"
exit $rc
