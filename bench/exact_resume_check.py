"""SIGKILL -> resume exactness on a chosen device and precision (for bench/gpu_check.sh).

Trains a small ACT run uninterrupted, then the same run killed with SIGKILL right after a checkpoint
and resumed; prints PASS when the per-step losses and the final weights are bit-identical.

Usage: .venv/bin/python bench/exact_resume_check.py [--device cuda] [--precision bf16] [--deterministic]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "exact_resume"
PIPERCTL = str(Path(sys.executable).with_name("piperctl"))


def main() -> None:
    """Run the uninterrupted and the killed-and-resumed run, compare them, exit 1 on any difference."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--deterministic", action="store_true", help="torch deterministic algorithms (CUDA)")
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(WORK / "hf_cache")}
    data = WORK / "data"
    subprocess.run(
        [
            PIPERCTL,
            "dataset",
            "synth",
            str(data),
            "--episodes",
            "6",
            "--frames",
            "40:60",
            "--image-size",
            "96x128",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    half = args.steps // 2

    def train(run: Path, fault: str | None = None) -> subprocess.CompletedProcess:
        cmd = [
            PIPERCTL,
            "train",
            "--output-dir",
            str(run),
            "--dataset-root",
            str(data),
            "--steps",
            str(args.steps),
        ]
        cmd += ["--save-every", str(half), "--batch-size", "8", "--num-workers", "2", "--device", args.device]
        cmd += ["--precision", args.precision, "--policy-opt", "pretrained_backbone_weights=null"]
        if args.deterministic:
            cmd.append("--deterministic")
        run_env = {**env, "PIPERCTL_FAULT": fault} if fault else env
        return subprocess.run(cmd, env=run_env, capture_output=True, text=True)

    ref, run = WORK / "reference", WORK / "interrupted"
    res = train(ref)
    if res.returncode != 0:
        sys.exit(f"reference run failed:\n{res.stderr[-2000:]}")
    res = train(run, fault=f"after-save:{half}")
    print(f"killed after checkpoint-{half}: exit {res.returncode}")
    res = subprocess.run([PIPERCTL, "resume", str(run)], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"resume failed:\n{res.stderr[-2000:]}")

    import torch
    from safetensors.torch import load_file

    def losses(r: Path) -> list[float]:
        rows = map(json.loads, (r / "metrics.jsonl").read_text().splitlines())
        return [row["loss"] for row in rows if "loss" in row]  # not the checkpoint timing lines

    wa, wb = (
        load_file(str(ref / "pretrained_model" / "model.safetensors")),
        load_file(str(run / "pretrained_model" / "model.safetensors")),
    )
    same_weights = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    same_losses = losses(ref) == losses(run)
    verdict = "PASS" if same_weights and same_losses else "FAIL"
    print(
        f"{verdict}: {args.device} {args.precision}{' deterministic' if args.deterministic else ''}: "
        f"losses {'identical' if same_losses else 'differ'}, final weights {'identical' if same_weights else 'differ'}"
    )
    sys.exit(0 if verdict == "PASS" else 1)


if __name__ == "__main__":
    main()
