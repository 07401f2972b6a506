"""Benchmark: `piperctl train` vs `lerobot-train` steps/s on the same data, policy, batch and workers.

Both tools run the same ACT policy on the same synthesized camera dataset. Start-up (imports, dataset
and policy construction) differs between tools and is not training speed, so each tool runs twice, for
SHORT and LONG steps, and steps/s = (LONG - SHORT) / (time(LONG) - time(SHORT)). The checkpoint-save
stall is measured the same way: a LONG run that saves every SAVE_EVERY steps against one that saves
once.

The loop's stall per save is measured inside the process (the time `Trainer.save_checkpoint` keeps
the loop waiting) for background saves (the default) and synchronous ones (`--sync-save`), on the
same run; their ratio is the figure issue 14 asks for (goal <= 0.10).

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


def stall_probe(
    out: str,
    data: str,
    steps: int,
    save_every: int,
    policy: dict,
    sync: bool,
    device: str = "cpu",
    precision: str = "fp32",
) -> None:
    """(Run in a child process.) Train, timing every save_checkpoint call; print the stalls as JSON."""
    import json

    from piperctl import train
    from piperctl.training.trainer import Trainer

    stalls: list[float] = []
    original = Trainer.save_checkpoint

    def timed(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - a transparent wrapper
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            stalls.append(time.perf_counter() - t0)

    Trainer.save_checkpoint = timed
    t0 = time.perf_counter()
    train(
        out,
        dataset_root=data,
        steps=steps,
        save_every=save_every,
        keep_last=2,
        device=device,
        precision=precision,
        num_workers=2,
        async_save=not sync,
        policy_options={k: (None if v == "null" else v) for k, v in policy.items()},
    )
    print(json.dumps({"stalls": stalls, "wall_s": time.perf_counter() - t0}))


def measure_stalls(
    data: Path, policy: dict, steps: int, save_every: int, device: str = "cpu", precision: str = "fp32"
) -> dict[str, list[float]]:
    """Stall of each save inside the loop, background vs synchronous saves, same run otherwise."""
    import json

    result = {}
    for mode in ("background", "sync"):
        out = WORK / f"stall_{mode}"
        args = [str(out), str(data), steps, save_every, json.dumps(policy), mode == "sync", device, precision]
        code = (
            f"import sys, json; sys.path.insert(0, {str(ROOT / 'bench')!r}); from train_throughput import stall_probe; "
            f"a = {args!r}; stall_probe(a[0], a[1], a[2], a[3], json.loads(a[4]), a[5], a[6], a[7])"
        )
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(WORK / "hf_cache")}
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if res.returncode != 0:
            sys.exit(f"stall probe failed:\n{res.stderr[-3000:]}")
        result[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Run both trainers side by side and print steps/s, the ratio and the save stall."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small policy and few steps (smoke run)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="piperctl's --precision; lerobot-train gets --policy.use_amp=true for bf16/fp16 "
        "(its only switch for ACT: fp16 on CUDA, bf16 on CPU)",
    )
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
            args.device,
            "--precision",
            args.precision,
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
            f"--policy.device={args.device}",
            f"--policy.use_amp={'false' if args.precision == 'fp32' else 'true'}",
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
        f"ACT{' (small)' if args.quick else ' (default size)'} on {args.device} in {args.precision}, "
        f"batch {args.batch_size}, {args.num_workers} workers, "
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
        f"checkpoint save cost, whole process (atomic + fsync + sha256 manifest): {stall:.2f} s per save "
        f"({size / 1e6:.0f} MB checkpoint)"
    )
    stalls = measure_stalls(data, policy, long_, save_every, args.device, args.precision)
    # The last save is the end of training (it waits for the write): the loop's stall is in the others.
    bg, sync = (stalls[m]["stalls"][:-1] for m in ("background", "sync"))
    bg_mean, sync_mean = sum(bg) / len(bg), sum(sync) / len(sync)
    print(f"loop stall per save, synchronous : {sync_mean:.3f} s  ({', '.join(f'{x:.2f}' for x in sync)})")
    print(f"loop stall per save, background  : {bg_mean:.3f} s  ({', '.join(f'{x:.2f}' for x in bg)})")
    print(f"stall ratio (background / synchronous): {bg_mean / sync_mean:.3f} (goal <= 0.10)")
    print(
        f"wall time of the {long_}-step run: background {stalls['background']['wall_s']:.1f} s, "
        f"synchronous {stalls['sync']['wall_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
