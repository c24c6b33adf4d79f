#!/usr/bin/env bash
# Download exactly the wheels scripts/gpu-wheels.txt lists into .whl/ (x86-64 manylinux, CPython 3.12, no
# dependencies): what scripts/gpu-check.sh installs on a GPU machine that has no network. Run it where PyPI is
# reachable; .whl/ is git-ignored and travels with the working tree.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
mapfile -t wheels < <(grep -vE '^\s*(#|$)' scripts/gpu-wheels.txt)
mkdir -p .whl
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${wheels[@]}"
ls -l .whl
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "gpu-wheels: ${#wheels[@]} wheels, $((total / 1000000)) MB in .whl/"
if [ "$total" -ge 60000000 ]; then
    echo "gpu-wheels: over the 60 MB budget" >&2
    exit 1
fi
