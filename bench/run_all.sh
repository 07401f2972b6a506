#!/usr/bin/env bash
# Runs every benchmark in bench/ in turn (each prints its own side-by-side ratios).
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
scripts=(bench/*.py)
if [ ${#scripts[@]} -eq 0 ]; then echo "no benchmarks yet"; exit 0; fi
for s in "${scripts[@]}"; do echo "== $s"; .venv/bin/python "$s"; done
