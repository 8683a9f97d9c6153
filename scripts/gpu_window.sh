#!/usr/bin/env bash
# The GPU window's one command (see DEVELOPERS.md): a CUDA smoke test, the training benchmark, then
# the zoo build sized to what is left of the command's time; results to $OUT.
#   bash scripts/gpu_window.sh [SECONDS]     (default 570: the whole command, inside the device's 600)
# Every finished zoo entry is packed into $OUT/parts at once, so a command stopped at its limit
# still hands back what it finished. $OUT gets at most 8 files: log, train_throughput.json,
# profile.json, again_study.json (with STUDY=...) and per entry NN-<id>.parts.json + parts of at most
# 15.5 MiB (ZOO=0 skips the build, e.g. a window spent on the study).
# A CPU rehearsal at tiny size (DEVELOPERS.md): DEVICE=cpu WHEELS=0 BENCH="..." ZOO_ARGS="..." bash scripts/gpu_window.sh 300
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
limit=${1:-570}
out=${OUT:-out}
device=${DEVICE:-cuda}
bench=${BENCH:---width 64 --px 32 --batch 512 --steps 20 --warmup 3}
zoo_args=${ZOO_ARGS:---eval-batch-size 1000}
mkdir -p "$out/parts"
if [ "${WHEELS:-1}" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.whl/site:$PWD
fi
export PYTHONUNBUFFERED=1 AGAINZOO_DATA=$PWD/.data
left() { echo $(( limit - ($(date +%s) - start) )); }
{
  [ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, timm, pyautoattack, pydantic; print('torch', torch.__version__, 'timm', timm.__version__, 'pyautoattack', pyautoattack.__version__, 'pydantic', pydantic.__version__)" || exit 1
  # the training path end to end at tiny size on this device (bf16, channels_last, fused SGD, AWP,
  # EMA, on-device loader, RNG state, fp16 publication, official AA, packing): fail here, not 8 minutes in
  # (SMOKE=0 / BENCHMARK=0 skip these steps, e.g. on a last try whose time must all go to the build)
  if [ "${SMOKE:-1}" = 1 ]; then
    timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda_path.py tests/test_zoo_build.py || exit 1
    echo "smoke test passed; $(left) s left"
  fi
  [ "${BENCHMARK:-1}" = 1 ] && timeout 60 python3 benchmarks/train_throughput.py --device "$device" $bench \
      --json "$out/train_throughput.json"
  # a profile of the step, and the fast-path candidates against eager (compile, CUDA graphs; about three
  # minutes; the JSON is rewritten after each variant, so a timeout keeps what ran; PROFILE=0 skips)
  [ "${PROFILE:-1}" = 1 ] && timeout 200 python3 benchmarks/train_throughput.py --device "$device" $bench \
      --variants pgd_at,again_pgd_at,again_pgd_at_checked,pgd_at_compiled,again_pgd_at_compiled,again_pgd_at_cudagraphs --profile \
      --json "$out/profile.json"
  # the AGAIN study at full width when STUDY names its variants (e.g. STUDY=twin,paper,soft,pred):
  # STUDY_SET are its extra overrides (epochs, data.limit), STUDY_SECONDS its time; JSON to $OUT
  if [ -n "${STUDY:-}" ]; then
    timeout "${STUDY_SECONDS:-420}" python3 benchmarks/again_study.py --device "$device" --data-dir .data \
        --variants "$STUDY" --seeds "${STUDY_SEEDS:-0,1}" --n 1000 --aa-iter 20 --n-targets 3 --quiet \
        --set model.kwargs.width=64 --set batch_size=512 --set optimizer.lr=0.2 ${STUDY_SET:-} \
        --out runs/study --json "$out/again_study.json"
    echo "study exit $?; $(left) s left"
    [ "${ZOO:-1}" = 1 ] || { ls -la "$out"; exit 0; }
  fi
  budget=$(( $(left) - 20 ))   # 20 s for the last pack and the transfer
  echo "zoo build with a budget of $budget s"
  timeout $(( budget + 10 )) python3 -m againzoo zoo build --device "$device" --data-dir .data \
      --budget-minutes "$(python3 -c "print($budget / 60)")" --parts-dir "$out/parts" --split-mb 15.5 --quiet $zoo_args
  echo "zoo build exit $?; $(left) s left"
  ls -la "$out/parts"
} 2>&1 | tee "$out/log"
