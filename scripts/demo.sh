#!/usr/bin/env bash
# The main job on a small generated corpus: install (if needed), generate, prepare, verify.
# Everything lands in demo/ (ignored by git); re-running starts it afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
run() { echo "+ $*"; "$@"; }
run helm-scale synth demo/corpus.fa.gz --records 20000 --seed 0
run helm-scale prep demo/corpus.fa.gz -o demo/shards --shard-size 8MB --overwrite
run helm-scale verify demo/shards
echo "demo finished: shards and manifest in demo/shards"
