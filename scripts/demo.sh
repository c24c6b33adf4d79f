#!/usr/bin/env bash
# Set up (first run only), then run the main job on its embedded default: `slowed demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
export AXOLOTL_DO_NOT_TRACK=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
exec .venv/bin/slowed demo "$@"
