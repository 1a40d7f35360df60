#!/usr/bin/env bash
# The main job on a small generated corpus: install (if needed), generate a corpus,
# prepare and verify shards, then train the tiny model with 2 processes on the CPU.
# Everything lands in demo/ (ignored by git); re-running starts it afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=1
run() { echo "+ $*"; "$@"; }
run helm-scale synth demo/corpus.fa.gz --records 20000 --seed 0
run helm-scale prep demo/corpus.fa.gz -o demo/shards --shard-size 2MB --overwrite
run helm-scale verify demo/shards
rm -rf demo/run
run torchrun --standalone --nproc-per-node 2 -m helm_scale.cli train configs/tiny.yaml \
    data.dataset_dir=demo/shards run.run_dir=demo/run
echo "demo finished: shards in demo/shards, training run in demo/run (tensorboard --logdir demo/run/tensorboard)"
