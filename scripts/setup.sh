#!/usr/bin/env bash
# Create .venv (once) and install helm_scale with its CPU pins. Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# constraints/cpu.txt pins the CPU torch wheel: an unpinned torch pulls GBs of CUDA packages.
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints/cpu.txt -e ".[dev]"
