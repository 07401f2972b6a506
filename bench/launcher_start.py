"""Time `piperctl train --num-processes 2` with ranks forked after the imports against fresh-interpreter ranks.

Both are the same tiny 2-step ACT run on one synthesized camera-less dataset, end to end in their own
process (interpreter start, imports, process group, training, checkpoint), alternately. Fresh ranks
are what the launcher does on a GPU machine or with PIPERCTL_FRESH_RANKS=1 (and what torchrun does).
Measured: wall time and CPU time (user + system of the launcher and every rank). Both runs must end
with the same weights.

    .venv/bin/python bench/launcher_start.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "_work" / "launcher"
PIPERCTL = str(Path(sys.executable).with_name("piperctl"))
TINY = {"dim_model": 32, "n_heads": 2, "dim_feedforward": 64, "n_encoder_layers": 1, "n_decoder_layers": 1}


def _env(fresh: bool) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(WORK / "hf_datasets"))
    env["OMP_NUM_THREADS"] = "1"  # both launchers compute identically
    env.pop("PIPERCTL_FRESH_RANKS", None)
    if fresh:
        env["PIPERCTL_FRESH_RANKS"] = "1"
    return env


def _run(run: Path, ds: Path, fresh: bool) -> tuple[float, float]:
    """(wall s, CPU s) of one 2-process run."""
    shutil.rmtree(run, ignore_errors=True)
    cmd = [PIPERCTL, "train", "-o", str(run), "--dataset-root", str(ds), "--device", "cpu"]
    cmd += ["--steps", "2", "--batch-size", "4", "--num-workers", "0", "--val-episodes", "1"]
    cmd += ["--num-processes", "2", "--policy-opt", "pretrained_backbone_weights=null"]
    for k, v in TINY.items():
        cmd += ["--policy-opt", f"{k}={v}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=_env(fresh), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        sys.exit(f"{'fresh' if fresh else 'forked'} run failed:\n{res.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    """Run both launch modes alternately and print medians and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    ds = WORK / "ds"
    if not (ds / "meta" / "info.json").is_file():
        shutil.rmtree(ds, ignore_errors=True)
        subprocess.run(
            [PIPERCTL, "dataset", "synth", str(ds), "--episodes", "5", "--frames", "20:26"]
            + ["--cameras", "none", "--env-state", "--seed", "2"],
            env=_env(False),
            check=True,
            capture_output=True,
        )
    times: dict[str, list[tuple[float, float]]] = {"forked": [], "fresh": []}
    for _ in range(args.repeats):
        for mode in times:
            times[mode].append(_run(WORK / f"run_{mode}", ds, mode == "fresh"))
    from safetensors.torch import load_file

    a, b = (load_file(str(WORK / f"run_{m}" / "pretrained_model" / "model.safetensors")) for m in times)
    same = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.repeats} runs each"
    )
    med = {
        m: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for m, t in times.items()
    }
    for mode, (wall, cpu) in med.items():
        print(f"{mode:>7}: wall {wall:6.1f} s   CPU {cpu:6.1f} s")
    print(
        f"forked / fresh: wall {med['forked'][0] / med['fresh'][0]:.2f}x, CPU {med['forked'][1] / med['fresh'][1]:.2f}x"
    )
    print(f"same final weights: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
