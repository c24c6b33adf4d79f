#!/usr/bin/env bash
# Set up (first run only), then run the test suite. Extra arguments go to pytest,
# e.g. `scripts/test.sh -m "not slow"` for the fast tests only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
export AXOLOTL_DO_NOT_TRACK=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
# One test process per core, at most four (pytest-xdist; SLOWED_TEST_WORKERS overrides, `-n 0` runs in this
# process): most of the suite's time is single-threaded trainer runs and their subprocesses, so a second worker
# on a 2-core machine nearly halves the wall time; more than four would only add memory (each holds torch,
# transformers, TRL and Axolotl). `--dist loadfile` keeps a file's tests in one worker, so a module's shared runs
# (the Axolotl sessions) are built once.
workers="${SLOWED_TEST_WORKERS:-$(.venv/bin/python -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')}"
# --durations=30: the slowest tests in every CI log, to steer the next cuts (the suite's budget is 15 minutes).
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --durations=30 "$@"
