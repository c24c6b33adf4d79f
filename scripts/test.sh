#!/usr/bin/env bash
# Set up (first run only), then run the test suite. Extra arguments go to pytest,
# e.g. `scripts/test.sh -m "not slow"` for the fast tests only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
export AXOLOTL_DO_NOT_TRACK=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
# --durations=30: the slowest tests in every CI log, to steer the next cuts (the suite's budget is 15 minutes).
exec .venv/bin/python -m pytest --durations=30 "$@"
