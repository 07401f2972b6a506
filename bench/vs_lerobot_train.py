"""Benchmark: does `piperctl train` learn like `lerobot-train`? Same data, seed, batch, steps and ACT, side by side.

One synthesized camera dataset; the last --held-out episodes are kept out of training by both tools
(lerobot-train: `--dataset.episodes=[0..N-1]`; piperctl: `--val-episodes`). Both train the same small
ACT (ResNet-18 backbone from scratch: `pretrained_backbone_weights=null`, offline) with ImageNet
statistics for the cameras (lerobot-train's `use_imagenet_stats`, piperctl's default), the same
seed, batch size, workers, steps and learning rate. Then:

* training loss side by side: lerobot-train logs the mean loss of each window of --log-every steps;
  the same windows are averaged from piperctl's per-step metrics.jsonl; their relative difference;
* held-out open-loop action error: `piperctl eval` of both final models on the held-out episodes
  (it reads a lerobot-train output folder as it is);
* normalization: the state/action statistics each model saved in its processors, checked against the
  statistics of the training episodes only and of all episodes (lerobot's `aggregate_stats` over the
  dataset's per-episode statistics): piperctl's come from the training episodes, lerobot-train's
  from meta/stats.json, which counts the held-out episodes too.

The two tools draw the initial weights and the data order from their own RNG streams, so the same
seed does not give the same per-step batches: curves agree in trend and level, not bit for bit.

Phases (training: 160 steps at about 1.1-1.4 steps/s per tool on 2 quiet CPU cores, i.e. 2-3 minutes
each with start-up, longer on a shared machine; results accumulate in
bench/_work/vs_lerobot_train/results.json, so a phase may run on its own):

    .venv/bin/python bench/vs_lerobot_train.py                   # all phases
    .venv/bin/python bench/vs_lerobot_train.py --phase synth|lerobot|piperctl|eval|compare
    .venv/bin/python bench/vs_lerobot_train.py --quick           # a 20-step smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "vs_lerobot_train"
DATA = WORK / "piper"
RESULTS = WORK / "results.json"
BIN = Path(sys.executable).parent
DATASET_ID = "local/piper"
PHASES = ("synth", "lerobot", "piperctl", "eval", "compare")

# The demo's small ACT (scripts/demo.sh): same fields for both tools.
POLICY = {
    "pretrained_backbone_weights": "null",
    "dim_model": 128,
    "n_heads": 4,
    "dim_feedforward": 512,
    "n_encoder_layers": 2,
    "n_decoder_layers": 1,
    "chunk_size": 20,
    "n_action_steps": 20,
    "optimizer_lr": 1e-4,
}


def env() -> dict[str, str]:
    """Offline, with the Arrow cache inside the bench's work folder (both tools share it)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(WORK / "hf_cache")}


def run(cmd: list[str], log: Path) -> tuple[float, str]:
    """Run a command to completion, its stdout+stderr going to `log` as it runs; its wall time and output."""
    t0 = time.perf_counter()
    with log.open("w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env())
        try:
            rc = proc.wait()
        finally:
            # Stopped (Ctrl-C, or SIGTERM from `timeout`): stop the tool too, never leave it running.
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    elapsed = time.perf_counter() - t0
    text = log.read_text(encoding="utf-8", errors="replace")
    if rc != 0:
        sys.exit(f"command failed ({rc}): {' '.join(cmd)}\n{text[-4000:]}")
    return elapsed, text


def load_results() -> dict:
    """The results of earlier phases (empty before the first)."""
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def save_results(results: dict) -> None:
    """Write the accumulated results (atomically: a phase killed mid-write keeps the previous file)."""
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(RESULTS)


def phase_synth(args: argparse.Namespace, results: dict) -> None:
    """A fresh work folder and the dataset both tools train on."""
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    cmd = [str(BIN / "piperctl"), "dataset", "synth", str(DATA), "--episodes", str(args.episodes)]
    cmd += ["--frames", args.frames, "--image-size", args.image_size, "--seed", "0"]
    run(cmd, WORK / "synth.log")
    results.clear()
    results["config"] = {
        "episodes": args.episodes,
        "held_out": list(range(args.episodes - args.held_out, args.episodes)),
        "frames": args.frames,
        "image_size": args.image_size,
        "steps": args.steps,
        "log_every": args.log_every,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "seed": args.seed,
        "policy": POLICY,
    }


def phase_lerobot(cfg: dict, results: dict) -> None:
    """lerobot-train on the training episodes; its logged window losses."""
    out = WORK / "lerobot"
    shutil.rmtree(out, ignore_errors=True)
    train_eps = [e for e in range(cfg["episodes"]) if e not in cfg["held_out"]]
    cmd = [
        str(BIN / "lerobot-train"),
        f"--dataset.repo_id={DATASET_ID}",
        f"--dataset.root={DATA}",
        f"--dataset.episodes=[{','.join(map(str, train_eps))}]",
        "--dataset.use_imagenet_stats=true",
        "--dataset.video_backend=pyav",
        "--policy.type=act",
        "--policy.push_to_hub=false",
        "--policy.device=cpu",
        "--policy.use_amp=false",
        f"--steps={cfg['steps']}",
        f"--save_freq={cfg['steps']}",
        f"--log_freq={cfg['log_every']}",
        f"--batch_size={cfg['batch_size']}",
        f"--num_workers={cfg['num_workers']}",
        f"--seed={cfg['seed']}",
        f"--output_dir={out}",
        "--wandb.enable=false",
    ]
    cmd += [f"--policy.{k}={v}" for k, v in cfg["policy"].items()]
    wall, text = run(cmd, WORK / "lerobot.log")
    # "step:40 smpl:320 ep:4 epch:0.25 loss:1.234 grdn:..." once per --log_freq window.
    losses = [float(m.group(1)) for m in re.finditer(r"step:\S+ smpl:\S+ .*?\bloss:([-\d.]+)", text)]
    want = cfg["steps"] // cfg["log_every"]
    if len(losses) != want:
        sys.exit(f"expected {want} loss lines in {WORK / 'lerobot.log'}, found {len(losses)}")
    results["lerobot"] = {"wall_s": wall, "window_loss": losses, "run": str(out)}


def phase_piperctl(cfg: dict, results: dict) -> None:
    """piperctl train with the same settings, the held-out episodes as its validation split."""
    out = WORK / "piperctl"
    shutil.rmtree(out, ignore_errors=True)
    held = cfg["held_out"]
    cmd = [
        str(BIN / "piperctl"),
        "train",
        "--output-dir",
        str(out),
        "--dataset-root",
        str(DATA),
        "--dataset-id",
        DATASET_ID,
        "--val-episodes",
        f"{held[0]}:{held[-1] + 1}",
        "--steps",
        str(cfg["steps"]),
        "--save-every",
        str(cfg["steps"]),
        "--keep-last",
        "1",
        "--batch-size",
        str(cfg["batch_size"]),
        "--num-workers",
        str(cfg["num_workers"]),
        "--seed",
        str(cfg["seed"]),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--imagenet-stats",
        "--cache-dir",
        str(WORK / "frame_cache"),
    ]
    for k, v in cfg["policy"].items():
        cmd += ["--policy-opt", f"{k}={v}"]
    wall, _ = run(cmd, WORK / "piperctl.log")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    per_step = {r["step"]: r["loss"] for r in rows if "loss" in r}
    if sorted(per_step) != list(range(1, cfg["steps"] + 1)):
        sys.exit(f"{out / 'metrics.jsonl'} does not hold a loss for every step 1..{cfg['steps']}")
    n = cfg["log_every"]
    windows = [
        sum(per_step[s] for s in range(w * n + 1, (w + 1) * n + 1)) / n for w in range(cfg["steps"] // n)
    ]
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    results["piperctl"] = {
        "wall_s": wall,
        "window_loss": windows,
        "val_loss": val[-1] if val else None,
        "run": str(out),
    }


def phase_eval(cfg: dict, results: dict) -> None:
    """piperctl eval of both final models on the held-out episodes."""
    held = cfg["held_out"]
    episodes = f"{held[0]}:{held[-1] + 1}"
    for tool, extra in (("lerobot", []), ("piperctl", ["--final"])):
        report = WORK / f"eval_{tool}.json"
        cmd = [str(BIN / "piperctl"), "eval", results[tool]["run"], "--dataset-root", str(DATA)]
        cmd += ["--episodes", episodes, "--device", "cpu", "--report", str(report), *extra]
        run(cmd, WORK / f"eval_{tool}.log")
        rep = json.loads(report.read_text())
        by_step = [s["policy"]["nmae"] for s in rep["chunk"]["by_step"] if s.get("policy")]
        results[tool]["eval"] = {
            "model": rep["model"]["description"],
            "step": rep["model"]["step"],
            "episodes": rep["episodes"]["ids"],
            "scored_frames": rep["episodes"]["scored_frames"],
            "executed_nmae": rep["summary"]["policy"],
            "chunk_nmae_mean": sum(by_step) / len(by_step),
            "hold_nmae": rep["summary"]["hold"],
            "repeat_nmae": rep["summary"]["repeat"],
        }


def _normalizer(folder: Path) -> dict:
    """The normalizer statistics a saved model's preprocessor holds."""
    from safetensors.torch import load_file

    (path,) = folder.glob("*preprocessor*normalizer*.safetensors")
    return {k: v.double().flatten() for k, v in load_file(str(path)).items()}


def _reference_stats(cfg: dict) -> dict[str, dict]:
    """State/action mean and std computed from the frames themselves: training episodes only, and all episodes."""
    import numpy as np
    import pyarrow.parquet as pq

    keys = ("observation.state", "action")
    files = sorted((DATA / "data").rglob("*.parquet"))
    table = {k: [] for k in ("episode_index", *keys)}
    for f in files:
        part = pq.read_table(f, columns=list(table)).to_pydict()
        for k in table:
            table[k].extend(part[k])
    episode = np.asarray(table["episode_index"])
    train = ~np.isin(episode, cfg["held_out"])
    out: dict[str, dict] = {}
    for which, rows in (("train", train), ("all", np.ones_like(train))):
        out[which] = {}
        for k in keys:
            values = np.asarray(table[k], dtype=np.float64)[rows]
            out[which][k] = {"mean": values.mean(axis=0), "std": values.std(axis=0)}
    return out


def normalization(cfg: dict, results: dict) -> dict:
    """Each model's saved state/action statistics against the training-only and all-episode ones."""
    import torch

    saved = {
        "piperctl": _normalizer(Path(results["piperctl"]["run"]) / "pretrained_model"),
        "lerobot": _normalizer(Path(results["lerobot"]["run"]) / "checkpoints" / "last" / "pretrained_model"),
    }
    ref = _reference_stats(cfg)
    out: dict = {}
    for key in ("observation.state", "action"):
        row: dict = {}
        for tool, stats in saved.items():
            for which, agg in ref.items():
                mean = torch.as_tensor(agg[key]["mean"], dtype=torch.float64).flatten()
                std = torch.as_tensor(agg[key]["std"], dtype=torch.float64).flatten()
                # Largest difference over joints, as a fraction of the reference std.
                row[f"{tool}_vs_{which}"] = {
                    "mean": float(((stats[f"{key}.mean"] - mean).abs() / std).max()),
                    "std": float(((stats[f"{key}.std"] - std).abs() / std).max()),
                }
        a, b = saved["piperctl"], saved["lerobot"]
        row["piperctl_vs_lerobot"] = {
            "mean": float(((a[f"{key}.mean"] - b[f"{key}.mean"]).abs() / b[f"{key}.std"]).max()),
            "std_ratio_min": float((a[f"{key}.std"] / b[f"{key}.std"]).min()),
            "std_ratio_max": float((a[f"{key}.std"] / b[f"{key}.std"]).max()),
        }
        out[key] = row
    cams = sorted({k.rsplit(".", 1)[0] for k in saved["piperctl"] if k.startswith("observation.images.")})
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    out["cameras_imagenet"] = {
        tool: all(
            torch.allclose(stats[f"{c}.{s}"], torch.tensor(v, dtype=torch.float64), atol=1e-6)
            for c in cams
            for s, v in imagenet.items()
        )
        for tool, stats in saved.items()
    }
    return out


def phase_compare(cfg: dict, results: dict) -> None:
    """Print the side-by-side figures."""
    lr, pc = results["lerobot"], results["piperctl"]
    n = cfg["log_every"]
    print(
        f"ACT (dim {cfg['policy']['dim_model']}, ResNet-18 from scratch), {cfg['episodes']} episodes "
        f"({cfg['held_out'][0]}..{cfg['held_out'][-1]} held out), {cfg['image_size']} cameras, batch "
        f"{cfg['batch_size']}, seed {cfg['seed']}, {cfg['steps']} steps, lr {cfg['policy']['optimizer_lr']}"
    )
    print(f"\n{'steps':>11}  {'lerobot-train':>13}  {'piperctl':>9}  {'rel. diff':>9}")
    rel = []
    for w, (a, b) in enumerate(zip(lr["window_loss"], pc["window_loss"], strict=True)):
        rel.append((b - a) / a)
        print(f"{w * n + 1:>5}-{(w + 1) * n:<5}  {a:>13.3f}  {b:>9.3f}  {rel[-1]:>+9.1%}")
    print(f"relative difference (piperctl vs lerobot-train): max |d| {max(map(abs, rel)):.1%}, ", end="")
    print(
        f"mean {sum(rel) / len(rel):+.1%}; after the first window: max |d| {max(map(abs, rel[1:]), default=0):.1%}"
    )
    print(f"wall time: lerobot-train {lr['wall_s']:.0f} s, piperctl {pc['wall_s']:.0f} s (start-up included)")
    if "eval" in lr and "eval" in pc:
        a, b = lr["eval"], pc["eval"]
        print(
            f"\nheld-out open-loop error (piperctl eval, episodes {a['episodes']}, {a['scored_frames']} frames, nmae):"
        )
        print(f"  {'':14}{'executed':>9}{'chunk mean':>12}")
        print(
            f"  {'lerobot-train':14}{a['executed_nmae']:>9.3f}{a['chunk_nmae_mean']:>12.3f}   ({a['model']})"
        )
        print(f"  {'piperctl':14}{b['executed_nmae']:>9.3f}{b['chunk_nmae_mean']:>12.3f}   ({b['model']})")
        print(f"  {'hold':14}{a['hold_nmae']:>9.3f}   repeat {a['repeat_nmae']:.3f}")
        ratio = b["executed_nmae"] / a["executed_nmae"]
        print(
            f"  ratio piperctl / lerobot-train: executed {ratio:.3f}, chunk {b['chunk_nmae_mean'] / a['chunk_nmae_mean']:.3f}"
        )
        results["eval_ratio"] = ratio
    if pc.get("val_loss") is not None:
        print(f"piperctl's validation loss on the held-out episodes at the end: {pc['val_loss']:.3f}")
    norm = normalization(cfg, results)
    results["normalization"] = norm
    print(
        "\nstate/action statistics in the saved processors (largest difference over joints, in reference stds):"
    )
    print(f"  {'':18}{'vs training eps':>18}{'vs all eps':>14}")
    for key in ("observation.state", "action"):
        for tool in ("piperctl", "lerobot"):
            t, a = norm[key][f"{tool}_vs_train"], norm[key][f"{tool}_vs_all"]
            name = "lerobot-train" if tool == "lerobot" else tool
            print(
                f"  {key:18}{name:>14}: mean {t['mean']:.2e} std {t['std']:.2e} | mean {a['mean']:.2e} std {a['std']:.2e}"
            )
        d = norm[key]["piperctl_vs_lerobot"]
        print(
            f"  {key:18}piperctl vs lerobot-train: means differ by up to {d['mean']:.3f} std, "
            f"std ratio {d['std_ratio_min']:.3f}..{d['std_ratio_max']:.3f}"
        )
    print(f"  cameras normalized with ImageNet statistics: {norm['cameras_imagenet']}")


def main() -> None:
    """Run the requested phase (or all), accumulating results in bench/_work/vs_lerobot_train/results.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("all", *PHASES), default="all")
    ap.add_argument("--quick", action="store_true", help="20 steps, logged every 5 (a smoke run)")
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--held-out", type=int, default=4)
    ap.add_argument("--frames", default="60:90")
    ap.add_argument("--image-size", default="48x64")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1000)
    args = ap.parse_args()
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so `run` stops the tool it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.quick:
        args.steps, args.log_every = 20, 5
    if args.steps % args.log_every:
        sys.exit("--steps must be a multiple of --log-every")
    phases = PHASES if args.phase == "all" else (args.phase,)
    results = {} if "synth" in phases else load_results()
    for phase in phases:
        if phase != "synth" and "config" not in results:
            sys.exit("run --phase synth first")
        t0 = time.perf_counter()
        if phase == "synth":
            phase_synth(args, results)
        else:
            globals()[f"phase_{phase}"](results["config"], results)
        save_results(results)
        print(f"[{phase} phase: {time.perf_counter() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
