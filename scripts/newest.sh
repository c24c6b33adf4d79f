#!/usr/bin/env bash
# The fast tests on the newest releases pyproject.toml's ranges allow (`pip install -U` of each dependency), in
# a venv of its own: run it when transformers, TRL, PEFT, accelerate or datasets ships a release, so that a break
# of SLowED's patches is caught by a red test, not by a user. torch stays the CPU build (set SLOWED_TORCH to
# choose another: an unpinned torch would pull a multi-GB CUDA build). Not part of CI: it needs the newest
# releases, which change under it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${SLOWED_TORCH:-torch==2.13.0}"
venv=.venv-newest
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$TORCH_SPEC"
"$venv/bin/python" -m pip install --quiet --upgrade --upgrade-strategy eager "$TORCH_SPEC" -e ".[trl,dev]" \
  transformers trl peft accelerate datasets bitsandbytes
"$venv/bin/python" -m slowed_plugin.versions || true  # a release newer than the tested range is reported, not fatal
export AXOLOTL_DO_NOT_TRACK=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
# Like the floors job: no Axolotl here, so its tests are skipped by name instead of failing.
export SLOWED_TESTS_WITHOUT_EXTRAS=1
exec "$venv/bin/python" -m pytest -m "not slow" -p no:cacheprovider \
  tests/core tests/trainer tests/anchor tests/inspector tests/evaluation tests/test_config.py tests/test_versions.py "$@"
