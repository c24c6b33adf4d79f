#!/usr/bin/env bash
# Creates .venv and installs slowed-plugin with everything the demo and the tests need.
# Idempotent: re-runs only when pyproject.toml changed. Sourced by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
# A CPU build of torch first: an unpinned install would pull a multi-GB CUDA build.
# Axolotl 0.19 accepts torch 2.11-2.13; override with SLOWED_TORCH="torch==X" if you need another.
TORCH_SPEC="${SLOWED_TORCH:-torch==2.13.0}"
EXTRAS="${SLOWED_EXTRAS:-trl,axolotl,bnb,demo,dev,deepspeed}"
stamp=".venv/.slowed-setup"
want="$(sha256sum pyproject.toml | cut -c1-16) ${TORCH_SPEC} ${EXTRAS}"

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing ${TORCH_SPEC} and slowed-plugin[${EXTRAS}] (a few minutes the first time)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "${TORCH_SPEC}"
  # Keep the torch just installed: pip then resolves everything else around it.
  # setuptools' notice on every editable install ("Editable installation. Please be careful with folders
  # ... same name as your package"): here the repository folder is the package on purpose. Only that message.
  PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet "${TORCH_SPEC}" -e ".[${EXTRAS}]"
  echo "$want" > "$stamp"
fi
