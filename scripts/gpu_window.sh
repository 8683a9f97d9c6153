#!/usr/bin/env bash
# The GPU window's one command (see DEVELOPERS.md): benchmarks, then the zoo build, results to $OUT.
#   bash scripts/gpu_window.sh [BUDGET_MINUTES]      (default 9: leaves the window's start and transfers room)
set -uo pipefail
cd "$(dirname "$0")/.."
budget=${1:-9}
out=${OUT:-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.whl/site:$PWD PYTHONUNBUFFERED=1 AGAINZOO_DATA=$PWD/.data
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, timm, pyautoattack; print('torch', torch.__version__, 'timm', timm.__version__, 'pyautoattack', pyautoattack.__version__)"
  python3 benchmarks/train_throughput.py --device cuda --width 64 --px 32 --batch 512 --steps 20 --warmup 3 \
      --json "$out/train_throughput.json"
  python3 -m againzoo zoo build --device cuda --budget-minutes "$budget" --data-dir .data --parts-dir "$out/parts" \
      --split-mb 15 --quiet
} 2>&1 | tee "$out/log"
