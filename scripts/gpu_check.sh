#!/usr/bin/env bash
# A GPU self-check that fits in about 5 minutes of a machine with CUDA:
#
#   bash scripts/gpu_check.sh            # from the repository, in the environment of requirements.txt
#
# 1. the tests marked `cuda` (python -m pytest -m cuda);
# 2. one short training run each (the synthetic benchmark's ACoL, 2 optimizer steps, then its
#    evaluation) with bf16 autocast, fp16 autocast (GradScaler), channels_last, torch.compile,
#    data.cache=device, and under torchrun as a 1-process NCCL group;
# 3. VGG16-ACoL training throughput at 224 px, batch 64, bf16, NCHW and channels_last
#    (scripts/benchmark.py), and the model FLOPs utilisation: training FLOP/s over the GPU's dense bf16
#    peak (scripts/benchmark.py's table of known GPUs; another GPU: set PEAK_TFLOPS).
# Each step prints one line: ok / FAILED and its time; the exit status is the number of failures.
# Without CUDA it prints one line saying so and exits 0. Runs go to a temporary folder (removed);
# GPU_CHECK_LOGS=DIR keeps each step's whole output there as NAME.log.
set -uo pipefail
. "$(dirname "$0")/common.sh"

if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
  echo "gpu_check: $PYTHON cannot import torch: activate the environment of requirements.txt (or set PYTHON)" >&2
  exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is false): nothing to check"
  exit 0
fi

WORK=$(mktemp -d)
keep_logs() { [ -z "${GPU_CHECK_LOGS:-}" ] || { mkdir -p "$GPU_CHECK_LOGS" && cp "$WORK"/*.log "$GPU_CHECK_LOGS"/; }; }
trap 'keep_logs; rm -rf "$WORK"' EXIT
FAILURES=0
step() {  # step NAME COMMAND...: run it, one line with its status and time, its output in $WORK/NAME.log
  local name=$1; shift
  local start=$SECONDS
  if "$@" > "$WORK/$name.log" 2>&1; then
    echo "ok      $name ($((SECONDS - start)) s)"
  else
    echo "FAILED  $name ($((SECONDS - start)) s): last lines of its output:"; tail -n 5 "$WORK/$name.log" | sed 's/^/        /'
    FAILURES=$((FAILURES + 1))
  fi
}

"$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")'
# deterministic cuBLAS for the bit-identical resume test (train.deterministic sets it too, for a fresh process)
CUBLAS_WORKSPACE_CONFIG=:4096:8 step cuda_tests "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider "$REPO/tests"

TRAIN=(-m acol.train --config "$REPO/experiments/synthetic_acol.toml" train.device=cuda train.max_steps=2
       "data.root=$WORK/data" "data.metadata_root=$WORK/data/metadata" "log.runs_dir=$WORK/runs")
step train_bf16 "$PYTHON" "${TRAIN[@]}" --name bf16 train.amp=bf16
step train_fp16 "$PYTHON" "${TRAIN[@]}" --name fp16 train.amp=fp16
step train_channels_last "$PYTHON" "${TRAIN[@]}" --name channels_last train.channels_last=true
step train_compile "$PYTHON" "${TRAIN[@]}" --name compile train.compile=true
step train_cache_device "$PYTHON" "${TRAIN[@]}" --name cache_device data.cache=device
step train_nccl_1_process "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node=1 "${TRAIN[@]}" \
  --name nccl

BENCH=("$REPO/scripts/benchmark.py" --model acol --backbone vgg16 --size 224 --batch 64 --device cuda --amp bf16
       --steps 10 --localizers inforward ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"})
for layout in nchw channels_last; do
  step "throughput_$layout" "$PYTHON" "${BENCH[@]}" $([ $layout = channels_last ] && echo --channels-last)
  grep -E "^\| training \||utilisation" "$WORK/throughput_$layout.log" | sed 's/^/        /'
done
echo "gpu_check: $FAILURES failed"
exit "$FAILURES"
