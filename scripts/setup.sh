#!/usr/bin/env bash
# Create .venv (once) and install helm_scale with its CPU pins. Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The install is editable, so only a change of the dependencies needs pip again: skip it
# (~8 s of resolving) while .venv/installed records the same pyproject.toml and pins.
want=$(cat pyproject.toml constraints/cpu.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/installed 2>/dev/null)" != "$want" ]; then
  # constraints/cpu.txt pins the CPU torch wheel: an unpinned torch pulls GBs of CUDA packages.
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints/cpu.txt -e ".[dev]"
  echo "$want" > .venv/installed
fi
