#!/usr/bin/env bash
# The test suite. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ledger`.
# Browser tests (the Prefect UI in headless Chromium) run with: bash scripts/test.sh -m browser
source "$(dirname "$0")/_env.sh"
ruff check prefect_cloudsched flows tests bench examples scripts
if [ "$#" -eq 0 ]; then
  set -- -m "not browser"
fi
python -m pytest "$@"
