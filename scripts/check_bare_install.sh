#!/usr/bin/env bash
# Install the bare package (the built wheel, no extras) into a clean virtual environment and
# check that it imports, that `prefect-cloudsched --help` works, that a placement decision is
# made, and that a command needing an extra says which one in a single line.
# Needs PyPI (or a mirror pip is configured for); CI runs it from .ci/run.
# Usage: bash scripts/check_bare_install.sh [WORKDIR]   (default: a fresh temp folder)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$(mktemp -d -t cloudsched-bare-XXXXXX)}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$WORK"
echo ">> building the wheel into $WORK/dist" >&2
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$ROOT"
WHEEL="$(ls "$WORK"/dist/prefect_cloudsched-*.whl | head -1)"
"$PYTHON" -m venv "$WORK/venv"
echo ">> installing $(basename "$WHEEL") without extras" >&2
"$WORK/venv/bin/python" -m pip install --quiet "$WHEEL"
BIN="$WORK/venv/bin"
export PREFECT_HOME="$WORK/prefect-home" PREFECT_CLOUDSCHED_HOME="$WORK/cloudsched-home"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
cd "$WORK"  # not the source tree: the installed package is what gets imported

for module in moto flask matplotlib sklearn distributed psycopg playwright; do
  if "$BIN/python" -c "import $module" 2>/dev/null; then
    echo "FAIL: the bare install pulled in $module (it belongs to an extra)" >&2
    exit 1
  fi
done
"$BIN/python" -c "import prefect_cloudsched, prefect_cloudsched.testing.clouds"
"$BIN/prefect-cloudsched" --version
"$BIN/prefect-cloudsched" --help >/dev/null
"$BIN/python" - <<'PY'
from datetime import timedelta

from prefect_cloudsched.core.catalog import load_catalog
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import DEFAULT_POLICY, decide

needs = TaskNeeds(gpus=1, gpu_type="A10G", est_runtime=timedelta(minutes=20), spot_ok=True)
decision = decide(needs, load_catalog(), config=DEFAULT_POLICY)
print("decision:", decision.offer.describe())
PY
"$BIN/prefect-cloudsched" prices --gpu A10G --limit 3 -f csv >/dev/null
set +e
message="$("$BIN/prefect-cloudsched" report --plot "$WORK/spend.png" 2>&1 >/dev/null)"
code=$?
set -e
if [ "$code" -ne 2 ] || [ "$(printf '%s\n' "$message" | wc -l)" -ne 1 ] ||
   ! printf '%s' "$message" | grep -q "prefect-cloudsched\[plot\]"; then
  echo "FAIL: report --plot without matplotlib should be one line naming [plot]; got ($code):" >&2
  printf '%s\n' "$message" >&2
  exit 1
fi
echo "$message"
du -sh "$WORK/venv" | awk '{print "bare install size: " $1}'
echo "OK: bare install imports, --help and a decision work; missing extras are named"
