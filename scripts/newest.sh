#!/usr/bin/env bash
# CI's newest job: a venv at the newest releases pyproject.toml's ranges allow for transformers, TRL, PEFT,
# accelerate, datasets and bitsandbytes (`pip install -U`), and the fast tests that apply without Axolotl (whose pins
# are the main job's), the exactness tests of every loss path among them (tests/core, tests/trainer). torch stays
# the CPU build 2.13.0 (SLOWED_TORCH chooses another: on a CPU-only machine PyPI's newer torch is a multi-GB CUDA
# build, docs/trl.md). The README's "Tested with" newest column must name what this installs
# (tests/test_versions.py checks it here). Reuses pip's cache. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${SLOWED_TORCH:-torch==2.13.0}"
venv=.venv-newest
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$TORCH_SPEC"  # alone first: the CPU build, never a CUDA one
# setuptools' notice on every editable install ("Editable installation. Please be careful with folders
# ... same name as your package"): here the repository folder is the package on purpose. Only that message.
PYTHONWARNINGS="ignore:Editable installation" "$venv/bin/python" -m pip install --quiet --upgrade --upgrade-strategy eager "$TORCH_SPEC" -e ".[trl,bnb,dev]" \
  transformers trl peft accelerate datasets bitsandbytes
"$venv/bin/python" -m slowed_plugin.versions
export AXOLOTL_DO_NOT_TRACK=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
# Like the floors job: no Axolotl here, so its tests are skipped by name instead of failing.
export SLOWED_TESTS_WITHOUT_EXTRAS=1
# tests/test_versions.py compares the README's newest column with this venv.
export SLOWED_NEWEST_JOB=1
exec "$venv/bin/python" -m pytest -m "not slow" -p no:cacheprovider \
  tests/core tests/trainer tests/anchor tests/inspector tests/evaluation tests/test_config.py tests/test_versions.py \
  tests/doctor/test_doctor.py::test_the_fused_lm_head_check_matches_trl_or_says_why_not \
  tests/doctor/test_doctor.py::test_the_fused_lm_head_check_fails_on_a_wrong_mask "$@"
