# Sourced by the other scripts: a project-local virtual environment and project-local homes.
# Installs (or refreshes) the package into .venv only when pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
      echo "$candidate"; return 0
    fi
  done
  echo "prefect-cloudsched needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2
  return 1
}

# dev = every extra the demo and the tests use (mock clouds, plots, the demo's model, Dask,
# HiGHS, PostgreSQL driver, price refresh) plus the test tools; see pyproject.toml.
EXTRAS="${CLOUDSCHED_EXTRAS:-dev}"
if [ ! -x .venv/bin/python ]; then
  "$(find_python)" -m venv .venv
fi
STAMP=".venv/.cloudsched-installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${EXTRAS//,/_}"
if [ ! -f "$STAMP" ]; then
  echo ">> installing prefect-cloudsched[$EXTRAS] into .venv (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[$EXTRAS]"
  rm -f .venv/.cloudsched-installed-*
  touch "$STAMP"
fi

# Project-local state: nothing is written to ~/.prefect or ~/.prefect-cloudsched.
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect-home}"
export PREFECT_CLOUDSCHED_HOME="${PREFECT_CLOUDSCHED_HOME:-$ROOT/.cloudsched-home}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# a loaded machine (CI, 2 cores) can take longer than the 20 s default to start the server
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}"
export PATH="$ROOT/.venv/bin:$PATH"
