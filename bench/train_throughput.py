"""Benchmark: `piperctl train` vs `lerobot-train` steps/s on the same data, policy, batch and workers.

Both tools run the same ACT policy on the same synthesized camera dataset. Start-up (imports, dataset
and policy construction) differs between tools and is not training speed, so each tool runs twice, for
SHORT and LONG steps, and steps/s = (LONG - SHORT) / (time(LONG) - time(SHORT)). The checkpoint-save
stall is measured the same way: a LONG run that saves every SAVE_EVERY steps against one that saves
once.

Usage: .venv/bin/python bench/train_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "train_throughput"
BIN = Path(sys.executable).parent


def run(cmd: list[str]) -> float:
    """Run a command to completion and return its wall time in seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(WORK / "hf_cache")}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return elapsed


def main() -> None:
    """Run both trainers side by side and print steps/s, the ratio and the save stall."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small policy and few steps (smoke run)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-workers", type=int, default=2)
    args = ap.parse_args()

    short, long_, save_every = (4, 12, 4) if args.quick else (10, 40, 10)
    policy = {"pretrained_backbone_weights": "null"}
    if args.quick:
        policy.update(dim_model=64, n_heads=2, dim_feedforward=128, n_encoder_layers=1, n_decoder_layers=1)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    data = WORK / "piper"
    print(f"synthesizing dataset {data} ...", flush=True)
    run(
        [
            str(BIN / "piperctl"),
            "dataset",
            "synth",
            str(data),
            "--episodes",
            "20",
            "--frames",
            "60:90",
            "--image-size",
            "96x128",
        ]
    )

    common = {"batch": args.batch_size, "workers": args.num_workers}

    def piperctl(steps: int, out: str, every: int | None = None) -> float:
        cmd = [
            str(BIN / "piperctl"),
            "train",
            "--output-dir",
            str(WORK / out),
            "--dataset-root",
            str(data),
            "--dataset-id",
            "local/piper",
            "--steps",
            str(steps),
            "--save-every",
            str(every or steps),
            "--batch-size",
            str(common["batch"]),
            "--num-workers",
            str(common["workers"]),
            "--device",
            "cpu",
            "--keep-last",
            "0",
        ]
        for k, v in policy.items():
            cmd += ["--policy-opt", f"{k}={v}"]
        return run(cmd)

    def lerobot(steps: int, out: str) -> float:
        cmd = [
            str(BIN / "lerobot-train"),
            "--dataset.repo_id=local/piper",
            f"--dataset.root={data}",
            "--policy.type=act",
            "--policy.push_to_hub=false",
            "--policy.device=cpu",
            f"--steps={steps}",
            f"--save_freq={steps}",
            f"--batch_size={common['batch']}",
            f"--num_workers={common['workers']}",
            f"--output_dir={WORK / out}",
            "--wandb.enable=false",
            f"--log_freq={steps}",
        ]
        cmd += [f"--policy.{k}={v}" for k, v in policy.items()]
        return run(cmd)

    print(
        f"ACT{' (small)' if args.quick else ' (default size)'}, batch {args.batch_size}, {args.num_workers} workers, "
        f"steps {short} and {long_}",
        flush=True,
    )
    # Warm-up (untimed): the first load of a dataset builds the Hugging Face Arrow cache both tools share.
    lerobot(1, "lr_warmup")
    piperctl(1, "pc_warmup")
    t = {}
    # Interleave the tools so that drift in machine load hits both alike.
    t["lerobot_short"] = lerobot(short, "lr_short")
    t["ours_short"] = piperctl(short, "pc_short")
    t["lerobot_long"] = lerobot(long_, "lr_long")
    t["ours_long"] = piperctl(long_, "pc_long")
    t["ours_long_saving"] = piperctl(long_, "pc_saves", every=save_every)
    for k, v in t.items():
        print(f"  {k:18s} {v:7.1f} s", flush=True)

    span = long_ - short
    ours = span / (t["ours_long"] - t["ours_short"])
    theirs = span / (t["lerobot_long"] - t["lerobot_short"])
    extra_saves = long_ // save_every - 1
    stall = (t["ours_long_saving"] - t["ours_long"]) / extra_saves
    print()
    print(f"piperctl train : {ours:6.3f} steps/s")
    print(f"lerobot-train  : {theirs:6.3f} steps/s")
    print(f"ratio (piperctl / lerobot-train): {ours / theirs:.2f}x")
    ckpt = next((WORK / "pc_saves").glob("checkpoint-*"))
    size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    print(
        f"checkpoint save stall (atomic + fsync + sha256 manifest): {stall:.2f} s per save ({size / 1e6:.0f} MB checkpoint)"
    )


if __name__ == "__main__":
    main()
