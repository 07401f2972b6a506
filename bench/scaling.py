"""Benchmark: training samples/s with 1 and 2 data-parallel processes (`piperctl train --num-processes`).

Weak scaling: every process keeps the same per-process batch, so N processes consume N times the
samples per step; perfect scaling is a ratio of N. Each configuration trains the same ACT policy on
the same synthesized camera dataset; samples/s = effective batch / median step time, read from the
per-step timings in metrics.jsonl after a few warm-up steps (start-up and the final save are not
training speed). On a CPU-only machine the processes share the cores (gloo); with CUDA each process
gets its own GPU, so configurations with more processes than GPUs are skipped.

Usage: .venv/bin/python bench/scaling.py [--device auto|cpu|cuda] [--processes 1,2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "scaling"
BIN = Path(sys.executable).parent


def run(cmd: list[str]) -> None:
    """Run a command to completion; exit with its stderr tail if it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(WORK / "hf_cache")}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")


def measure(device: str, processes: int, args: argparse.Namespace, data: Path) -> dict:
    """Train once with `processes` processes; samples/s from the steady-state step times."""
    out = WORK / f"run_{device}_{processes}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(BIN / "piperctl"), "train", "--output-dir", str(out), "--dataset-root", str(data)]
    cmd += ["--dataset-id", "local/piper", "--device", device, "--steps", str(args.steps)]
    cmd += ["--save-every", str(args.steps), "--batch-size", str(args.batch_size)]
    cmd += ["--num-workers", str(args.num_workers), "--keep-last", "1", "--num-processes", str(processes)]
    for key, value in args.policy.items():
        cmd += ["--policy-opt", f"{key}={value}"]
    run(cmd)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_times = [1.0 / r["steps_per_s"] for r in rows if "steps_per_s" in r and r["step"] > args.warmup]
    step_s = statistics.median(step_times)
    state = json.loads((out / f"checkpoint-{args.steps}" / "training_state.json").read_text())
    effective = state["effective_batch_size"]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "processes": processes,
        "effective_batch": effective,
        "step_s": step_s,
        "samples_s": effective / step_s,
    }


def main() -> None:
    """Measure each process count on each device and print them side by side with the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CPU, plus CUDA if present), cpu or cuda")
    ap.add_argument("--processes", default="1,2", help="comma-separated process counts")
    ap.add_argument("--batch-size", type=int, default=8, help="per process")
    ap.add_argument("--num-workers", type=int, default=1, help="DataLoader workers per process")
    ap.add_argument("--quick", action="store_true", help="tiny policy and few steps (smoke run)")
    args = ap.parse_args()
    args.steps, args.warmup = (6, 2) if args.quick else (14, 4)
    args.policy = {"pretrained_backbone_weights": "null"}
    if args.quick:
        args.policy.update(
            dim_model=64, n_heads=2, dim_feedforward=128, n_encoder_layers=1, n_decoder_layers=1
        )

    import torch

    gpus = torch.cuda.device_count()
    devices = {"auto": ["cpu", "cuda"] if gpus else ["cpu"], "cpu": ["cpu"], "cuda": ["cuda"]}[args.device]
    counts = [int(n) for n in args.processes.split(",")]
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    data = WORK / "piper"
    print(f"synthesizing dataset {data} ...", flush=True)
    run([str(BIN / "piperctl"), "dataset", "synth", str(data), "--episodes", "8", "--frames", "60:80"])
    print(
        f"machine: {os.cpu_count()} CPU cores, {gpus} CUDA device(s)"
        + (f" ({torch.cuda.get_device_name(0)})" if gpus else "")
        + f"; load average before: {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    for device in devices:
        results = []
        for n in counts:
            if device == "cuda" and n > gpus:
                print(f"{device}: {n} processes skipped (needs {n} GPUs, found {gpus})", flush=True)
                continue
            print(f"{device}: training with {n} process(es) ...", flush=True)
            results.append(measure(device, n, args, data))
        if not results:
            continue
        base = results[0]
        print(
            f"\n{device}: per-process batch {args.batch_size}, {args.num_workers} loader worker(s) per process"
        )
        print(
            f"{'processes':>9} {'eff. batch':>10} {'s/step':>8} {'samples/s':>10} {'vs ' + str(base['processes']):>6}"
        )
        for r in results:
            ratio = r["samples_s"] / base["samples_s"]
            print(
                f"{r['processes']:>9} {r['effective_batch']:>10} {r['step_s']:>8.3f} {r['samples_s']:>10.1f} {ratio:>6.2f}"
            )
        print(flush=True)
    # Other work on the machine skews these numbers: say how busy it was.
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
