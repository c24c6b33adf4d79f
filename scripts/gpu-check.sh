#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): on a one-GPU machine without network whose python3 has CUDA torch,
# transformers, peft, accelerate and triton, install the wheels carried in .whl/ (scripts/gpu-wheels.sh) into a
# private folder and run slowed doctor --bench and the GPU benchmarks within 8 minutes, from this working tree
# (no pip install of the project). Results: --out (default ./gpu-check/) gpu-check.json and summary.md.
#
#   scripts/gpu-check.sh                  # on the GPU machine
#   scripts/gpu-check.sh --dry-run        # on a CPU: every step at tiny shapes, imports as on the GPU machine
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
case " $* " in
    *" --dry-run "*) exec "$PY" scripts/gpu_check.py "$@" ;;  # CPU timings mean nothing: no overall limit
    *) exec timeout --signal=TERM 480 "$PY" scripts/gpu_check.py "$@" ;;  # 8 minutes, whatever happens
esac
