#!/usr/bin/env bash
# Install what the browser tests (tests/browser, `pytest -m browser`) need on a fresh Debian
# machine, as root: Debian's chromium (only if /usr/bin/chromium is missing) and Playwright's
# Python package into the project venv. Playwright never downloads a browser here: the tests
# drive /usr/bin/chromium.
#   sudo bash scripts/setup_browser.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup_browser.sh: run as root to apt-get install chromium" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends chromium
fi

PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [ ! -x "$PY" ]; then
  echo "setup_browser.sh: no venv at $ROOT/.venv; run scripts/test.sh (or create it) first" >&2
  exit 1
fi
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PY" -m pip install --quiet -e ".[browser]"
/usr/bin/chromium --version
"$PY" -c "import playwright, importlib.metadata as m; print('playwright', m.version('playwright'))"
