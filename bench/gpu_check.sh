#!/usr/bin/env bash
# The GPU checks of issue 14, in one script that fits in 8 minutes on one CUDA GPU:
#   1. piperctl vs lerobot-train steps/s on default ACT, fp32 and bf16 (lerobot-train: use_amp)
#   2. the training loop's stall per checkpoint save, background vs synchronous
#   3. SIGKILL -> resume exactness on the GPU with deterministic algorithms
#   4. (issue 19) a smolVLA LoRA fine-tune vs lerobot-train --peft: steps/s, save cost, sizes, memory
# Usage: bash bench/gpu_check.sh            (CUDA)
#        bash bench/gpu_check.sh --device cpu   (a dry run of the same steps, small sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=cuda
if [[ "${1:-}" == "--device" ]]; then DEVICE=$2; fi
QUICK=()
if [[ "$DEVICE" == "cpu" ]]; then QUICK=(--quick); fi
export HF_HUB_OFFLINE=1

echo "== machine"
$PY - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY

echo "== 1+2. steps/s vs lerobot-train and the save stall, fp32"
$PY bench/train_throughput.py "${QUICK[@]}" --device "$DEVICE" --precision fp32
echo "== 1. steps/s vs lerobot-train, bf16 (lerobot-train: --policy.use_amp=true)"
$PY bench/train_throughput.py "${QUICK[@]}" --device "$DEVICE" --precision bf16

echo "== 3. SIGKILL -> resume exactness (deterministic algorithms)"
$PY bench/exact_resume_check.py --device "$DEVICE" --precision fp32 --deterministic
$PY bench/exact_resume_check.py --device "$DEVICE" --precision bf16 --deterministic

# Needs lerobot/smolvla_base and HuggingFaceTB/SmolVLM2-500M-Video-Instruct in the Hugging Face cache
# (the run is offline); skipped on the CPU dry run (a 450M-parameter model).
if [[ "$DEVICE" != "cpu" ]]; then
  echo "== 4. smolVLA LoRA fine-tune: steps/s vs lerobot-train --peft, save cost, checkpoint size, memory"
  $PY bench/finetune_throughput.py --device "$DEVICE" --precision fp16
fi
