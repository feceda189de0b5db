#!/usr/bin/env bash
# Everything the GPU path needs measured, in one short call (device time is scarce):
#   the CUDA-only tests, then `scripts/bench.py --device cuda` on the digits MLP, MLP 800,
#   AlexNet and ResNet-18 (HAT/Naive, suite/raw, suite-HAT/raw-HAT, raw-HAT/raw and what
#   folding the gates buys, hat-unfolded/HAT, side by side),
#   then task inference's cost on cuda. Each step has its own time limit, so a slow one does
#   not cost the others; logs and JSON go to $OUT (default results/gpu).
#
#   OUT=/some/folder PY=python bash scripts/gpu_check.sh
set -u
out=${OUT:-results/gpu}
py=${PY:-.venv/bin/python}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA GPU here: nothing measured (run this on the GPU machine)"
  exit 2
fi
timeout 150 "$py" -m pytest -q -p no:cacheprovider tests/strategies/baselines/test_cuda.py \
  tests/strategies/rehearsal/test_base.py > "$out/tests.log" 2>&1
echo "cuda tests: exit $? ($(tail -1 "$out/tests.log"))"
timeout 330 "$py" scripts/bench.py --device cuda --cases digits,mlp,alexnet,resnet18 \
  --rounds 3 --unfolded --out "$out/bench.json" > "$out/bench.log" 2>&1
echo "bench: exit $?"
tail -30 "$out/bench.log"
timeout 90 "$py" scripts/bench_task_inference.py --device cuda --rounds 3 \
  > "$out/task_inference.log" 2>&1
echo "task inference: exit $?"
tail -12 "$out/task_inference.log"
