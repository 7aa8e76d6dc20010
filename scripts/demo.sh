#!/usr/bin/env bash
# The main job on embedded defaults: run the ML pipeline under CloudSchedTaskRunner, then
# print the cost report. Usage: bash scripts/demo.sh [pipeline options, e.g. --chunks 8]
source "$(dirname "$0")/_env.sh"
python flows/ml_pipeline.py "$@"
prefect-cloudsched report --group-by task --last-run
