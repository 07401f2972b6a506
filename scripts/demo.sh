#!/usr/bin/env bash
# The end-to-end demo behind `make demo`: everything offline, on data piperctl makes itself.
set -euo pipefail
PIPERCTL="${PIPERCTL:-.venv/bin/piperctl}"
DEMO_DIR="${DEMO_DIR:-outputs/demo}"
export HF_HUB_OFFLINE=1
export HF_DATASETS_CACHE="${HF_DATASETS_CACHE:-$DEMO_DIR/.hf_cache}"

mkdir -p "$DEMO_DIR"
DATA="$DEMO_DIR/piper_demo"
echo "== 1. synthesize a PiPER pick-and-place dataset ($DATA)"
"$PIPERCTL" dataset synth "$DATA" --episodes 12 --frames 60:90 --seed 0 --force
echo "demo dataset: $DATA"
