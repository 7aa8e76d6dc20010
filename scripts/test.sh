#!/usr/bin/env bash
# The test suite. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ledger`; the
# browser tests stay deselected unless a marker expression is given with -m:
#   bash scripts/test.sh -m browser          (the Prefect UI in headless Chromium)
#   bash scripts/test.sh -m "browser or not browser"   (everything)
source "$(dirname "$0")/_env.sh"
ruff check prefect_cloudsched flows tests bench examples scripts
has_marker=false
for arg in "$@"; do
  case "$arg" in
    -m|-m*|--markexpr|--markexpr=*) has_marker=true ;;
  esac
done
if [ "$has_marker" = false ]; then
  set -- -m "not browser" "$@"
fi
python -m pytest "$@"
