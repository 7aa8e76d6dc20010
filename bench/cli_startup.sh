#!/usr/bin/env bash
# CLI cold start: median wall time of `prefect-cloudsched --help` and `prefect --help` over N
# runs each (GNU time), in the environment whose bin/ folder is given; and the size of that
# environment. Usage: bash bench/cli_startup.sh VENV_BIN [RUNS]   (default 9 runs)
# Example: bash scripts/check_bare_install.sh /tmp/bare && bash bench/cli_startup.sh /tmp/bare/venv/bin
set -euo pipefail
BIN="${1:?give the bin/ folder of a virtual environment with prefect-cloudsched installed}"
RUNS="${2:-9}"
export PREFECT_HOME="${PREFECT_HOME:-$(mktemp -d)}" PREFECT_SERVER_ANALYTICS_ENABLED=false
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
measure() {
  "$@" >/dev/null 2>&1  # warm the OS file cache once: "cold" = a new interpreter, not a cold disk
  for _ in $(seq "$RUNS"); do
    /usr/bin/time -f "%e" "$@" 2>&1 >/dev/null | tail -1
  done | median
}
echo "prefect-cloudsched --help: $(measure "$BIN/prefect-cloudsched" --help) s (median of $RUNS)"
echo "prefect --help:            $(measure "$BIN/prefect" --help) s (median of $RUNS)"
echo "environment size:          $(du -sm "$BIN/.." | cut -f1) MB ($(dirname "$BIN"))"
