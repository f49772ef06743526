#!/usr/bin/env bash
# The GPU check, for a machine with one CUDA GPU; about 5-8 minutes. Run from the repository root:
#     bash benchmarks/gpu_check.sh            # PYTHON=... to use another interpreter (torch with CUDA)
# 1. the CUDA unit tests (tests/test_cuda.py: a GPU step against the CPU's);
# 2. the training-step benchmark at Gemma-2-2B's width, 16,384 and 65,536 latents, bf16 autocast;
# 3. a short paper-shaped run: SmolLM2 activations harvested, then a Matryoshka and a BatchTopK
#    SAE of 16,384 latents trained on them, with tokens/s and peak memory per stage.
# Everything it prints is also written to build/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p build
exec > >(tee build/gpu_check.log) 2>&1
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU: this check is for a GPU machine'; \
print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__)"
start=$(date +%s)
echo "== 1. CUDA unit tests"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py
echo "== 2. training step at Gemma width (bf16 autocast)"
"$PYTHON" benchmarks/train_speed.py --device cuda --autocast bfloat16 --rounds 3 --no-memory \
    --sizes "2304,16384,4096,64;2304,65536,2048,64"
echo "== 3. a short paper-shaped run (SmolLM2, 16,384 latents)"
"$PYTHON" benchmarks/paper_shaped.py --device cuda --tokens 2000000 --width 16384 --steps 500 --batch 4096
echo "== done in $(( $(date +%s) - start )) s"
