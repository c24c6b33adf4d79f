#!/usr/bin/env bash
# CI's floors job: a second venv with every dependency at the lowest version pyproject.toml declares, and the
# fast tests that apply without Axolotl (whose pins are not the floors); bitsandbytes at its floor too, and DeepSpeed
# at its floor with its two-process ZeRO-2 LoRA test. Extra arguments go to both pytest runs.
# Reuses pip's cache; the floors are read from pyproject.toml through the main venv (`python -m
# slowed_plugin.versions --floors`), so they are never restated. torch's floor is a CPU build on local disk.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
PYTHON="${PYTHON:-python3}"
venv=.venv-floors
pins="$(.venv/bin/python -m slowed_plugin.versions --floors torch transformers peft accelerate datasets trl bitsandbytes deepspeed)"
torch_pin="$(tr ' ' '\n' <<<"$pins" | grep '^torch==')"
want="$(sha256sum pyproject.toml | cut -c1-16) ${pins}"
if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv"
fi
if [ "$(cat "$venv/.slowed-floors" 2>/dev/null)" != "$want" ]; then
  echo "floors: installing ${pins}"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "$torch_pin"  # alone first: the CPU build, never a CUDA one
  # shellcheck disable=SC2086  # one argument per pin; DeepSpeed builds from its sdist without compiled ops
  # setuptools' notice on every editable install ("Editable installation. Please be careful with folders
  # ... same name as your package"): here the repository folder is the package on purpose. Only that message.
  PYTHONWARNINGS="ignore:Editable installation" DS_BUILD_OPS=0 "$venv/bin/python" -m pip install --quiet $pins -e ".[dev]"
  echo "$want" > "$venv/.slowed-floors"
fi
"$venv/bin/python" -m slowed_plugin.versions
export AXOLOTL_DO_NOT_TRACK=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
# A test that needs an extra this venv lacks (bitsandbytes, axolotl) is skipped, and says so (tests/support/installed.py).
export SLOWED_TESTS_WITHOUT_EXTRAS=1
# Everything that does not need Axolotl, the demo's matplotlib or a second process.
"$venv/bin/python" -m pytest -m "not slow" -p no:cacheprovider \
  tests/core tests/trainer tests/anchor tests/inspector tests/evaluation tests/test_config.py tests/test_versions.py "$@"
# The README's install lines resolved as written, with the main venv (a minute of pip; moved here from the main
# job to keep the main suite short).
SLOWED_RESOLVER_TEST=1 .venv/bin/python -m pytest -p no:cacheprovider \
  tests/test_packaging.py::test_readme_install_lines_resolve_as_written "$@"
# DeepSpeed at its floor: ZeRO-2 LoRA on two gloo processes against one process (about 2 minutes). Not ZeRO-3:
# on CPU, DeepSpeed 0.18.6's ZeRO-3 all-gather once returned a corrupted copy on one rank (docs/distributed.md).
exec "$venv/bin/python" -m pytest -m slow -p no:cacheprovider \
  "tests/trainer/test_deepspeed.py::test_zero_lora_matches_one_process[2]" "$@"
