"""Time `piperctl dataset convert` against lerobot 0.6.1's own v2.1 -> v3.0 script on the same input.

Both run end to end in their own process (interpreter start, imports, conversion), alternately, on one
synthesized v2.1 dataset; lerobot's script converts a fresh copy each time because it renames its
input in place (the copy is not timed). The outputs must hold the same data: every data parquet table
equal, the same meta/episodes table (indices, time ranges, stats), tasks, info.json and stats.json,
and identical video bytes.

    .venv/bin/python bench/convert_speed.py [--episodes 30] [--frames 60:90] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "_work" / "convert"


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env["HF_DATASETS_CACHE"] = str(WORK / "hf_datasets")
    env["HF_LEROBOT_HOME"] = str(WORK / "hf_lerobot")
    return env


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return elapsed


def _ours(src: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    return _timed([sys.executable, "-m", "piperctl", "dataset", "convert", str(src), str(out)])


def _lerobot(src: Path, root: Path) -> float:
    for p in (root, root.with_name(root.name + "_old"), root.with_name(root.name + "_v30")):
        shutil.rmtree(p, ignore_errors=True)
    shutil.copytree(src, root)  # the script renames its input to <root>_old: give it a copy
    script = "lerobot.scripts.convert_dataset_v21_to_v30"
    args = ["--repo-id", "local/bench", "--root", str(root), "--push-to-hub", "false"]
    return _timed([sys.executable, "-m", script, *args])


def _same_output(a: Path, b: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    problems = []
    data_a = sorted(p.relative_to(a) for p in a.glob("data/*/*.parquet"))
    data_b = sorted(p.relative_to(b) for p in b.glob("data/*/*.parquet"))
    if data_a != data_b:
        problems.append(f"data files differ: {data_a} vs {data_b}")
    for rel in data_a:
        if rel in data_b and not pq.read_table(a / rel).equals(pq.read_table(b / rel)):
            problems.append(f"{rel}: content differs")

    def episodes(root: Path) -> pa.Table:
        return pa.concat_tables(pq.read_table(p) for p in sorted(root.glob("meta/episodes/*/*.parquet")))

    if not episodes(a).equals(episodes(b)):
        problems.append("meta/episodes differ")
    if not pq.read_table(a / "meta/tasks.parquet").equals(pq.read_table(b / "meta/tasks.parquet")):
        problems.append("meta/tasks.parquet differs")
    for rel in ("meta/info.json", "meta/stats.json"):
        if json.loads((a / rel).read_text()) != json.loads((b / rel).read_text()):
            problems.append(f"{rel} differs")
    for p in sorted(a.glob("videos/**/*.mp4")):
        q = b / p.relative_to(a)
        if (
            not q.is_file()
            or hashlib.sha256(p.read_bytes()).digest() != hashlib.sha256(q.read_bytes()).digest()
        ):
            problems.append(f"{p.relative_to(a)}: video differs")
    return problems


def main() -> None:
    """Synthesize the input once, then time both converters alternately and compare their outputs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--frames", default="60:90")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    src = WORK / f"v21_{args.episodes}ep"
    if not (src / "meta" / "info.json").is_file():
        shutil.rmtree(src, ignore_errors=True)
        print(f"synthesizing {src} ...", flush=True)
        synth = [sys.executable, "-m", "piperctl", "dataset", "synth", str(src), "--version", "v2.1"]
        _timed([*synth, "--episodes", str(args.episodes), "--frames", args.frames, "--seed", "1"])
    size_mb = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) / 1e6
    frames = sum(1 for _ in (src / "meta" / "episodes.jsonl").open())
    print(f"input: {src.name}, {frames} episodes, {size_mb:.1f} MB, two 96x128 MP4 cameras")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average before {os.getloadavg()[0]:.2f}")  # fmt: skip

    ours_out, lerobot_root = WORK / "ours_v30", WORK / "lerobot"
    times: dict[str, list[float]] = {"piperctl dataset convert": [], "lerobot convert script": []}
    for i in range(args.repeats):
        times["lerobot convert script"].append(_lerobot(src, lerobot_root))
        times["piperctl dataset convert"].append(_ours(src, ours_out))
        print(f"run {i + 1}: lerobot {times['lerobot convert script'][-1]:.2f} s, "
              f"piperctl {times['piperctl dataset convert'][-1]:.2f} s, "
              f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip

    problems = _same_output(ours_out, lerobot_root)
    print()
    print("| tool | median s | min s | runs |")
    print("|---|---:|---:|---|")
    for name, ts in times.items():
        runs = ", ".join(f"{t:.2f}" for t in ts)
        print(f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f} | {runs} |")
    ratio = statistics.median(times["lerobot convert script"]) / statistics.median(
        times["piperctl dataset convert"]
    )
    print(
        f"\nspeed ratio piperctl / lerobot (median wall time of lerobot / ours): {ratio:.2f}x (goal >= 1.0)"
    )
    print(f"load average after {os.getloadavg()[0]:.2f}")
    if problems:
        print("OUTPUTS DIFFER:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print(
        "outputs: same data parquet tables, meta/episodes, tasks, info.json, stats.json; identical video bytes"
    )


if __name__ == "__main__":
    main()
