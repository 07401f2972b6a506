"""SIGKILL campaign: kill real `piperctl train`/`resume` processes at random moments, resume until done.

Each trial trains the same small ACT run; a killer sends SIGKILL at a random moment (and, for a
share of the trials, inside the crash windows that matter most: before the first checkpoint, during
the final save, while a checkpoint is written), then `piperctl resume RUN` is run until the run
completes (resumes are killed too, with some probability). Every finished trial is compared with an
uninterrupted reference run: same per-step losses and bit-identical final weights.

Reported: kills, kills during a save (a `.piperctl-tmp-*` folder existed at the moment of the kill),
bit-exact outcomes, dead ends (a run that no `piperctl` command could take further: goal 0) and
temporary folders left after the run completed (goal 0).

Usage: .venv/bin/python bench/kill_campaign.py [--kills 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "kill_campaign"
PIPERCTL = str(Path(sys.executable).with_name("piperctl"))
TINY_ACT = {
    "pretrained_backbone_weights": None,
    "dim_model": 32,
    "n_heads": 2,
    "dim_feedforward": 64,
    "n_encoder_layers": 1,
    "n_decoder_layers": 1,
    "chunk_size": 5,
    "n_action_steps": 5,
    "latent_dim": 8,
}
STEPS, SAVE_EVERY = 24, 4
# Crash windows forced by fault injection in some trials (the rest are random-moment kills).
WINDOWS = ["after-start:0", "mid-save:4", "mid-final-save:24", "mid-save:12", "mid-rotate:16"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(WORK / "hf_cache")}


def train_cmd(run: Path, data: Path) -> list[str]:
    """The command line of the campaign's run."""
    cmd = [PIPERCTL, "train", "--output-dir", str(run), "--dataset-root", str(data), "--steps", str(STEPS)]
    cmd += ["--save-every", str(SAVE_EVERY), "--keep-last", "2", "--batch-size", "4", "--num-workers", "0"]
    cmd += ["--val-episodes", "1", "--seed", "3"]
    for k, v in TINY_ACT.items():
        cmd += ["--policy-opt", f"{k}={json.dumps(v)}"]
    return cmd


def losses(run: Path) -> list[float]:
    """Per-step losses of a run."""
    rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in rows if "loss" in r]  # not the checkpoint timing lines


def weights(run: Path) -> dict:
    """The final weights of a run."""
    from safetensors.torch import load_file

    return load_file(str(run / "pretrained_model" / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    """Bit-identical final weights."""
    import torch

    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def leftovers(run: Path) -> list[str]:
    """Our temporary folders and files in a run folder."""
    return (
        sorted(p.name for p in run.iterdir() if p.name.startswith(".piperctl-tmp-")) if run.exists() else []
    )


def run_killed(cmd: list[str], rng: random.Random, max_delay: float, env: dict) -> tuple[int, bool]:
    """Start `cmd` and SIGKILL it after a random delay, unless it ends first; (exit code, killed)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + rng.uniform(0.3, max_delay)
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode, proc.returncode == -signal.SIGKILL


def main() -> None:
    """Run the campaign and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=40, help="stop after this many SIGKILLs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    data = WORK / "data"
    subprocess.run(
        [
            PIPERCTL,
            "dataset",
            "synth",
            str(data),
            "--episodes",
            "5",
            "--frames",
            "20:26",
            "--cameras",
            "front",
        ]
        + ["--image-size", "32x40", "--no-video", "--seed", "2"],
        check=True,
        env=ENV,
        capture_output=True,
    )
    reference = WORK / "reference"
    t0 = time.monotonic()
    subprocess.run(train_cmd(reference, data), check=True, env=ENV, capture_output=True)
    full_s = time.monotonic() - t0
    print(f"reference run: {STEPS} steps in {full_s:.1f} s", flush=True)

    kills = in_save = trials = exact = dead_ends = left = 0
    problems: list[str] = []
    while kills < args.kills:
        trials += 1
        run = WORK / f"trial-{trials}"
        # Odd trials start with a forced crash window, even ones with a kill at a random moment.
        window = WINDOWS[(trials // 2) % len(WINDOWS)] if trials % 2 == 1 else None
        starts, finished, ok = 0, False, False
        while not finished:
            starts += 1
            # The way forward after a kill is always `piperctl resume RUN`; a process killed before
            # writing run.json never made RUN a run: train again.
            cmd = [PIPERCTL, "resume", str(run)] if (run / "run.json").exists() else train_cmd(run, data)
            if starts == 1 and window is not None:
                res = subprocess.run(
                    cmd, env={**ENV, "PIPERCTL_FAULT": window}, capture_output=True, text=True
                )
                code, killed = res.returncode, res.returncode == -signal.SIGKILL
            elif starts <= 3 and kills < args.kills and rng.random() < 0.7:
                code, killed = run_killed(cmd, rng, full_s * 1.2, ENV)
            else:
                res = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
                code, killed = res.returncode, False
            if killed:
                kills += 1
                in_save += bool(leftovers(run))
                # Killed after the final model was sealed (its manifest is written last): the run is done.
                finished = (run / "pretrained_model" / "manifest.json").exists()
            elif code == 0:
                finished = True
            else:
                dead_ends += 1
                problems.append(f"trial {trials}: '{' '.join(cmd[1:3])}' exited {code} (a dead end)")
                break
        if finished:
            ok = losses(run) == losses(reference) and same_weights(run, reference)
            exact += ok
            if not ok:
                problems.append(f"trial {trials}: finished but not bit-exact")
            verify = subprocess.run(
                [PIPERCTL, "checkpoints", "verify", str(run)], env=ENV, capture_output=True
            )
            if verify.returncode != 0:
                problems.append(f"trial {trials}: checkpoints verify exited {verify.returncode}")
            left += bool(leftovers(run))
        print(
            f"trial {trials}: {'window ' + window if window else 'random kill'}, {starts} start(s), "
            f"{'bit-exact' if ok else 'FAILED'}; kills so far {kills}",
            flush=True,
        )
    print()
    print(f"trials: {trials}, kills: {kills}, kills during a save: {in_save}")
    print(f"bit-exact outcomes: {exact} of {trials}")
    print(f"dead ends: {dead_ends} (goal 0)")
    print(f"runs left with temporary folders: {left} (goal 0)")
    for p in problems:
        print("  " + p)
    sys.exit(1 if dead_ends or left or exact != trials or problems else 0)


if __name__ == "__main__":
    main()
