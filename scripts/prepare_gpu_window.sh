#!/usr/bin/env bash
# Run HERE (with registry access) before a GPU window: fetch what the GPU image lacks into the
# git-ignored .whl/ and copy the training/evaluation data into the git-ignored .data/.
# Then call the device tool with carry [".whl", ".data"] and the command in DEVELOPERS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${AGAINZOO_DATA:-../shared/data}
rm -rf .whl .data && mkdir -p .whl/site .data
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# pydantic and what it needs, at the versions its METADATA asks for (the GPU image has typer, timm, safetensors, huggingface_hub, pyyaml, tqdm, ...)
python3 -m pip download -q --no-deps "${plat[@]}" -d .whl pydantic==2.14.4 pydantic-core==2.50.5 \
    annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
# pyautoattack's wheel carries 42 MB of example weights: carry its Python sources only (MIT licence)
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps -d "$tmp" pyautoattack==0.2.0
python3 - "$tmp"/pyautoattack-0.2.0-py3-none-any.whl .whl/site <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if n.endswith(".py") and "/examples/" not in n or n.endswith(("METADATA", "RECORD", "WHEEL")):
            z.extract(n, sys.argv[2])
PY
rm -rf "$tmp"
cp "$data/cifar10-jpeg75.npz" .data/
# evaluation needs only the lossless test images: 3 MB instead of 17 (the 64 MiB tree limit)
python3 - "$data/cifar10-lossless-subset.npz" .data/cifar10-lossless-subset.npz <<'PY'
import sys, numpy as np
d = np.load(sys.argv[1])
np.savez_compressed(sys.argv[2], **{k: d[k] for k in ("x_test", "y_test", "test_index", "classes")})
PY
du -sh .whl .data
