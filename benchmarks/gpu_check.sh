#!/usr/bin/env bash
# The GPU checks, as one prepared script for a CUDA machine (none of this runs on CI, which has
# no GPU): install a CUDA build of torch beside Loom's requirements in a fresh venv, run the
# tests that need CUDA (they skip on a CPU-only machine), then the SD-size benchmark: a random-
# weight SD 1.5-architecture model, fp16, 512 px, 20 Euler steps, guidance 7, Loom's graph vs
# diffusers' StableDiffusionPipeline side by side, with peak VRAM, then one image in each of Loom's
# --vram modes (high/auto/low/none: peak VRAM, time, same image). Aims to finish in < 8 min.
#
#   bash benchmarks/gpu_check.sh [WORK_DIR]
#
# LOOM_GPU_TORCH overrides the torch requirement (default: the newest CUDA build pip finds that
# Loom's range admits).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-$(mktemp -d "${TMPDIR:-/tmp}/loom-gpu.XXXXXX")}
START=$SECONDS
stamp() { printf '=== [%4d s] %s\n' $((SECONDS - START)) "$1"; }

stamp "venv in $WORK"
python3 -m venv "$WORK/venv"
# shellcheck disable=SC1091
source "$WORK/venv/bin/activate"
python -m pip install --quiet --upgrade pip
stamp "torch (CUDA build)"
python -m pip install --quiet "${LOOM_GPU_TORCH:-torch>=2.4,<2.14}"
python -m pip install --quiet -r requirements-dev.txt
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
free, total = torch.cuda.mem_get_info()
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
      f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free, bf16 {torch.cuda.is_bf16_supported()}")
PY

stamp "tests that need CUDA"
QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 python -m pytest -q -rs \
    tests/test_sampling_cuda.py tests/test_loaders.py tests/test_controlnet.py tests/test_vram.py -k "cuda or gpu"

stamp "SD-size benchmark: fp16, 512 px, 20 steps"
HF_HUB_OFFLINE=1 python benchmarks/bench_sd.py --sd15-random "$WORK/sd15" --device cuda \
    --dtype fp16 --size 512 --steps 20 --scale 7 --rescale 0 --pairs 3
stamp "done"
