#!/usr/bin/env bash
# The GPU window's one command (see DEVELOPERS.md): a CUDA smoke test, the training benchmark and
# profile, the evaluation benchmark, then the zoo build sized to what is left of the command's time.
#   bash scripts/gpu_window.sh [SECONDS]     (default 570: the whole command, inside the device's 600)
# Every finished zoo entry is packed into $OUT/parts at once, so a command stopped at its limit
# still hands back what it finished. At most 8 files come back from $OUT, so the benchmarks' JSON
# records are merged into one file after every step: $OUT holds log, benchmarks.json
# ({train_throughput, profile, eval_throughput}), again_study.json (with STUDY=...) and per zoo entry
# NN-<id>.parts.json + its parts of at most 15.5 MiB (an fp16 ResNet-18 makes 2 parts: the pair is 6
# files, so a window builds the pair or runs the study, not both: with STUDY set nothing is
# built unless ZOO=1; ZOO=0 skips the build).
# A CPU rehearsal at tiny size (DEVELOPERS.md): DEVICE=cpu WHEELS=0 BENCH="..." ZOO_ARGS="..." bash scripts/gpu_window.sh 300
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
limit=${1:-570}
out=${OUT:-out}
device=${DEVICE:-cuda}
bench=${BENCH:---width 64 --px 32 --batch 512 --steps 20 --warmup 3}
model_size=$(echo "$bench" | grep -oE -- '--(width|px) [0-9]+' | tr '\n' ' ')  # the eval benchmark's model: the same
scratch=$(mktemp -d)  # the benchmarks' own JSON files; $OUT gets them merged (merge_benchmarks)
trap 'rm -rf "$scratch"' EXIT
zoo_args=${ZOO_ARGS:---eval-batch-size 1000}
zoo=${ZOO:-1}; [ -n "${STUDY:-}" ] && zoo=${ZOO:-0}  # a study window builds nothing unless ZOO=1 says so
mkdir -p "$out/parts"
if [ "${WHEELS:-1}" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.whl/site:$PWD
fi
export PYTHONUNBUFFERED=1 AGAINZOO_DATA=$PWD/.data
left() { echo $(( limit - ($(date +%s) - start) )); }
merge_benchmarks() {  # every record that exists so far, in one file (a step's timeout keeps what it wrote)
  compgen -G "$scratch/*.json" > /dev/null || return 0
  python3 -c "import json, pathlib, sys; d = pathlib.Path(sys.argv[1]); print(json.dumps({p.stem: json.loads(p.read_text()) for p in sorted(d.glob('*.json'))}, indent=1))" \
      "$scratch" > "$out/benchmarks.json.tmp" && mv "$out/benchmarks.json.tmp" "$out/benchmarks.json"
}
{
  [ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, timm, pyautoattack, pydantic; print('torch', torch.__version__, 'timm', timm.__version__, 'pyautoattack', pyautoattack.__version__, 'pydantic', pydantic.__version__)" || exit 1
  # the fp16 ONNX file runs on onnxruntime-gpu's CUDA provider only: the smoke step's test of it is skipped (and says so) without it
  python3 -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"
  # the training path end to end at tiny size on this device (bf16, channels_last, fused SGD, AWP,
  # EMA, on-device loader, RNG state, fp16 publication, official AA, packing): fail here, not 8 minutes in
  # (SMOKE=0 / BENCHMARK=0 skip these steps, e.g. on a last try whose time must all go to the build)
  if [ "${SMOKE:-1}" = 1 ]; then
    timeout 150 python3 -m pytest -q -x -p no:cacheprovider -rs -m "slow or not slow" tests/test_cuda_path.py tests/test_zoo_build.py tests/test_onnx_deploy.py::test_fp16_file_on_the_cuda_provider_agrees_with_pytorch || exit 1
    echo "smoke test passed; $(left) s left"
  fi
  [ "${BENCHMARK:-1}" = 1 ] && timeout 60 python3 benchmarks/train_throughput.py --device "$device" $bench \
      --json "$scratch/train_throughput.json"
  merge_benchmarks
  # a profile of the step, and the fast-path candidates against eager (compile, CUDA graphs; about three
  # minutes; the JSON is rewritten after each variant, so a timeout keeps what ran; PROFILE=0 skips)
  [ "${PROFILE:-1}" = 1 ] && timeout 200 python3 benchmarks/train_throughput.py --device "$device" $bench \
      --variants pgd_at,again_pgd_at,again_pgd_at_checked,pgd_at_compiled,again_pgd_at_compiled,again_pgd_at_cudagraphs --profile \
      --json "$scratch/profile.json"
  merge_benchmarks
  # our attacks against the training step (#21): PGD-20 passes/s, contiguous vs channels_last inputs,
  # over the benchmark's training rows, and the quick suite on 1,000 images (EVALBENCH=0 skips)
  if [ "${EVALBENCH:-1}" = 1 ]; then
    vs=(); [ -f "$scratch/train_throughput.json" ] && vs=(--vs-train "$scratch/train_throughput.json")
    timeout 90 python3 benchmarks/eval_throughput.py --device "$device" $model_size --n "${EVAL_N:-1000}" \
        --batch "${EVAL_BATCH:-500}" --suites quick ${vs[@]+"${vs[@]}"} --json "$scratch/eval_throughput.json"
    merge_benchmarks
  fi
  # the AGAIN study at full width when STUDY names its variants (e.g. STUDY=twin,paper,soft,pred):
  # STUDY_SET are its extra overrides of STUDY_RECIPE (epochs, data.limit), STUDY_SECONDS its time (default: all that
  # is left); its JSON in $OUT is rewritten after every run, so the time limit keeps the finished runs
  if [ -n "${STUDY:-}" ]; then
    timeout "${STUDY_SECONDS:-$(( $(left) - 15 ))}" python3 benchmarks/again_study.py --device "$device" --data-dir .data \
        --recipe "${STUDY_RECIPE:-cifar10_resnet18w16_again_study_cpu}" --variants "$STUDY" --seeds "${STUDY_SEEDS:-0,1}" --n 1000 --aa-iter 20 --n-targets 3 --quiet \
        --set model.kwargs.width=64 --set batch_size=512 --set optimizer.lr=0.2 ${STUDY_SET:-} \
        --out runs/study --json "$out/again_study.json"
    echo "study exit $?; $(left) s left"
  fi
  [ "$zoo" = 1 ] || { ls -la "$out"; exit 0; }
  budget=$(( $(left) - 20 ))   # 20 s for the last pack and the transfer
  echo "zoo build with a budget of $budget s"
  timeout $(( budget + 10 )) python3 -m againzoo zoo build --device "$device" --data-dir .data \
      --budget-minutes "$(python3 -c "print($budget / 60)")" --parts-dir "$out/parts" --split-mb 15.5 --quiet $zoo_args
  echo "zoo build exit $?; $(left) s left"
  ls -la "$out/parts"
} 2>&1 | tee "$out/log"
