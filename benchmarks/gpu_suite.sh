#!/usr/bin/env bash
# Every GPU number of the performance targets, in as few device calls as the 10-minute
# limit allows (a lent GPU is held for minutes, so nothing is run twice by hand):
#   part 50m: HELM-50M CLM and MLM against the peer, eager and with --compile;
#   part 1b:  the 1B config compiled, with and without activation checkpointing, and eager;
#   part io:  checkpoint save / load at 1B;
#   part corpus: HELM-50M CLM on real sequences (each *.fasta.gz in $CORPUS_DIR, default
#             .data, carried: ../shared/data does not travel), ours packed and padded.
# Each run writes benchmarks/results/<name>.json and .log; when $OUT is set (the device
# tool), the lot is also packed into $OUT/gpu_results.tgz after each run, one file to bring back.
# SMOKE=1 runs the same commands at a small size on any machine, to check the suite itself.
#
#   bash benchmarks/gpu_suite.sh 50m     # then 1b, io and corpus: one device call each
set -uo pipefail  # not -e: one failed benchmark must not lose the results of the others
cd "$(dirname "$0")/.."
part=${1:?usage: gpu_suite.sh 50m|1b|io|corpus}
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then  # deepspeed / megatron-core wheels carried to a machine without them
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
results=benchmarks/results
mkdir -p "$results"
tag=gpu
if [ "${SMOKE:-0}" = 1 ]; then
  tag=smoke
  size_50m=(--batch 4 --steps 2 --warmup 2 --repeat 1)
  size_1b=(--batch 2 --seq-len 32 --steps 1 --warmup 1 --repeat 1)
  config_1b=configs/tiny.yaml
  size_corpus=(--seq-len 444 --steps 4 --warmup 4 --repeat 1)
  rows_packed=4 rows_padded=12
else
  size_50m=(--config configs/helm_50m.yaml --batch 128 --steps 20 --warmup 5 --repeat 3)
  size_1b=(--batch 16 --steps 10 --warmup 3 --repeat 2)
  config_1b=configs/helm_1b.yaml
  size_corpus=(--config configs/helm_50m.yaml --steps 20 --warmup 8 --repeat 3)
  rows_packed=128 rows_padded=384  # about the same real tokens a step on antibody chains
fi
failed=0

bench() {  # bench NAME MODULE ARGS...: one benchmark, its output kept beside its JSON
  local name=${tag}_$1 module=$2
  shift 2
  echo "== $name: python -m $module $*"
  python -m "$module" "$@" --out "$results/$name.json" 2>&1 | grep -v -e Warning -e warnings.warn \
    | tee "$results/$name.log"
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "!! $name failed"; failed=1; }
  # packed after every run, so a call cut off at its time limit still brings back the rest
  if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu_results.tgz" "$results"/${tag}_*; fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
case $part in
  50m)
    for objective in clm mlm; do
      bench "train_50m_${objective}" benchmarks.train_throughput "${size_50m[@]}" --bf16 --objective $objective \
        --profile
      bench "train_50m_${objective}_compiled" benchmarks.train_throughput "${size_50m[@]}" --bf16 \
        --objective $objective --compile --profile
      # HELM's other backbones beside the eager transformer (pure PyTorch: no mamba-ssm kernels)
      bench "train_50m_${objective}_backbones" benchmarks.train_throughput "${size_50m[@]}" --bf16 \
        --objective $objective --backbones mamba hyena
    done ;;
  1b)
    bench train_1b_recompute benchmarks.train_throughput --config $config_1b "${size_1b[@]}" --bf16 \
      --activation-checkpointing --compile
    bench train_1b_compiled benchmarks.train_throughput --config $config_1b "${size_1b[@]}" --bf16 --compile
    bench train_1b benchmarks.train_throughput --config $config_1b "${size_1b[@]}" --bf16 ;;
  io)
    bench checkpoint_io_1b benchmarks.checkpoint_io --config $config_1b --procs 1 --backends ddp zero1 ;;
  corpus)
    shopt -s nullglob
    fastas=("${CORPUS_DIR:-.data}"/*.fasta.gz)
    [ ${#fastas[@]} -gt 0 ] || { echo "no *.fasta.gz in ${CORPUS_DIR:-.data}"; exit 2; }
    for fasta in "${fastas[@]}"; do
      name=$(basename "$fasta" .fasta.gz)
      python -m helm_scale.cli prep "$fasta" --frame trim -o "/tmp/corpus_$name" --overwrite --quiet || exit 1
      bench "train_50m_${name}_packed" benchmarks.train_throughput "${size_corpus[@]}" --bf16 --compile \
        --dataset "/tmp/corpus_$name" --layout packed --batch $rows_packed
      bench "train_50m_${name}_padded" benchmarks.train_throughput "${size_corpus[@]}" --bf16 --compile \
        --dataset "/tmp/corpus_$name" --layout padded --batch $rows_padded
    done ;;
  *) echo "unknown part $part: 50m, 1b, io or corpus"; exit 2 ;;
esac
exit $failed
