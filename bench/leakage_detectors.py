"""Detector benchmark for the kinematic leakage checks: recall per planted fault, clean episodes flagged.

Generates one LeRobot v3.0 PiPER dataset (radians, gripper in metres, 30 fps) with our own motion
model: every episode starts and ends holding the same home pose, moves through 3-6 waypoints along
minimum-jerk paths at varied speeds, closes and opens the gripper, with encoders quantised to 1e-4 rad
and an action that leads the state by one frame (plus leader-arm noise). Each fault kind is planted in
FAULTY episodes of its own; CLEAN episodes carry none. Then runs `DatasetLeakageTester.run_all_tests()`
once and counts, per fault kind, the share of its episodes that the check meant for it names
(recall), and the share of clean episodes named by any check (false alarms).

    .venv/bin/python bench/leakage_detectors.py [--clean 600] [--faulty 100] [--seed 0]
        [--layouts episode-list,large-fixed]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work"
FPS = 30
NAMES = ["joint_1", "joint_2", "joint_3", "joint_4", "joint_5", "joint_6", "gripper"]
LOW = np.array([-2.6179, 0.0, -2.967, -1.745, -1.22, -2.09439, 0.0])
HIGH = np.array([2.6179, 3.14, 0.0, 1.745, 1.22, 2.09439, 0.07])
HOME = np.array([0.0, 0.3, -0.4, 0.0, 0.3, 0.0, 0.07])
QUANTUM = 1e-4

# fault kind -> the check meant to find it
FAULTS = {
    "joint_jump": "velocity_spikes",
    "action_lag_30": "action_state",
    "gripper_in_mm": "units_and_ranges",
    "five_frame_episode": "short_episodes",
    "joint_frozen": "frozen_joints",
    "timestamp_jitter": "timestamps",
    "beyond_joint_limit": "units_and_ranges",
}


def _min_jerk(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    s = np.linspace(0, 1, n + 1)[1:, None]
    return a + (b - a) * (10 * s**3 - 15 * s**4 + 6 * s**5)


def clean_episode(rng: np.random.Generator) -> np.ndarray:
    """State frames (n, 7) of one clean episode: rest, waypoints, rest."""
    parts = [np.tile(HOME, (int(rng.integers(15, 46)), 1))]
    pose = HOME.copy()
    waypoints = int(rng.integers(3, 7))
    for w in range(waypoints):
        target = LOW + (HIGH - LOW) * rng.uniform(0.2, 0.8, 7)
        target[6] = HOME[6] if w in (0, waypoints - 1) else rng.uniform(0.005, 0.03)  # grasp mid-way
        if w == waypoints - 1:
            target = HOME.copy()
        seg = _min_jerk(pose, target, int(rng.integers(25, 90)))  # 0.8-3 s per move: varied speeds
        parts.append(seg)
        pose = target
    parts.append(np.tile(HOME, (int(rng.integers(15, 46)), 1)))
    state = np.concatenate(parts)
    state[:, :6] = np.round(state[:, :6] / QUANTUM) * QUANTUM
    return state


def action_of(state: np.ndarray, rng: np.random.Generator, lead: int = 1) -> np.ndarray:
    """The commanded action: the state `lead` frames later plus leader-arm noise while moving."""
    n = len(state)
    idx = np.clip(np.arange(n) + lead, 0, n - 1)
    action = state[idx].copy()
    moving = np.any(np.abs(np.diff(state, axis=0, prepend=state[:1])) > 0, axis=1)
    action[moving] += rng.normal(0, 2e-4, (int(moving.sum()), 7))
    return action


def plant(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(state, action, timestamps) of one episode with fault `kind`."""
    state = clean_episode(rng)
    lead = -29 if kind == "action_lag_30" else 1  # lags by 30 frames relative to the usual lead of 1
    action = action_of(state, rng, lead)
    n = len(state)
    ts = np.arange(n) / FPS
    if kind == "joint_jump":
        moving = np.nonzero(np.any(np.diff(state[:, :6], axis=0) != 0, axis=1))[0]
        f, j = int(rng.choice(moving[5:-5])), int(rng.integers(0, 6))
        state[f, j] += rng.choice([-1, 1]) * rng.uniform(0.15, 0.4)  # one frame, then back
    elif kind == "gripper_in_mm":
        state[:, 6] *= 1000
        action[:, 6] *= 1000
    elif kind == "five_frame_episode":
        state, action, ts = state[:5], action[:5], ts[:5]
    elif kind == "joint_frozen":
        j = int(rng.integers(0, 6))
        state[:, j] = state[0, j]
        action[:, j] = state[0, j]
    elif kind == "timestamp_jitter":
        ts = ts + rng.normal(0, 0.002, n)  # 2 ms of jitter; the mean step stays 1/fps
        ts[0] = 0.0
        ts = np.maximum.accumulate(ts)
    elif kind == "beyond_joint_limit":
        state[:, 2] += 0.8  # joint_3 (limit 0 rad) pushed 0.4 rad past it at the rest pose
        action[:, 2] += 0.8
    return state, action, ts


def generate(path: Path, clean: int, faulty: int, seed: int, layout: str = "episode-list") -> dict[int, str]:
    """Write the dataset in `layout` (ROWGROUPS-LISTS, as in leakage_scale.py); returns episode -> fault kind."""
    row_groups, lists = layout.split("-")
    rng = np.random.default_rng(seed)
    kinds = ["clean"] * clean + [k for k in FAULTS for _ in range(faulty)]
    rng.shuffle(kinds)
    shutil.rmtree(path, ignore_errors=True)
    (path / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (path / "data" / "chunk-000").mkdir(parents=True)
    cols: dict[str, list] = {k: [] for k in ("state", "action", "ts", "fi", "ep")}
    meta, start = [], 0
    for e, kind in enumerate(kinds):
        if kind == "clean":
            s = clean_episode(rng)
            a, ts = action_of(s, rng), np.arange(len(s)) / FPS
        else:
            s, a, ts = plant(kind, rng)
        n = len(s)
        for k, v in (("state", s), ("action", a), ("ts", ts), ("fi", np.arange(n)), ("ep", np.full(n, e))):
            cols[k].append(v)
        meta.append(
            {
                "episode_index": e,
                "tasks": ["pick and place"],
                "length": n,
                "data/chunk_index": 0,
                "data/file_index": 0,
                "dataset_from_index": start,
                "dataset_to_index": start + n,
            }
        )
        start += n

    def fsl(x: np.ndarray) -> pa.Array:
        values = pa.array(x.astype(np.float32).reshape(-1))
        if lists == "fixed":
            return pa.FixedSizeListArray.from_arrays(values, 7)
        return pa.ListArray.from_arrays(pa.array(np.arange(0, len(values) + 1, 7, dtype=np.int32)), values)

    table = pa.table(
        {
            "observation.state": fsl(np.concatenate(cols["state"])),
            "action": fsl(np.concatenate(cols["action"])),
            "timestamp": pa.array(np.concatenate(cols["ts"]).astype(np.float32)),
            "frame_index": pa.array(np.concatenate(cols["fi"]).astype(np.int64)),
            "episode_index": pa.array(np.concatenate(cols["ep"]).astype(np.int64)),
            "index": pa.array(np.arange(start, dtype=np.int64)),
            "task_index": pa.array(np.zeros(start, dtype=np.int64)),
        }
    )
    out = path / "data" / "chunk-000" / "file-000.parquet"
    if row_groups == "episode":  # as lerobot 0.6.1 writes: one row group per episode
        with pq.ParquetWriter(out, table.schema) as writer:
            for m in meta:
                writer.write_table(table.slice(m["dataset_from_index"], m["length"]))
    else:
        pq.write_table(table, out)
    pq.write_table(pa.Table.from_pylist(meta), path / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({"task_index": [0], "task": ["pick and place"]}), path / "meta" / "tasks.parquet")
    vec = {"dtype": "float32", "shape": [7], "names": NAMES}
    scalar = {"shape": [1], "names": None}
    info = {
        "codebase_version": "v3.0",
        "robot_type": "piper",
        "total_episodes": len(kinds),
        "total_frames": start,
        "total_tasks": 1,
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": f"0:{len(kinds)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "features": {
            "observation.state": vec,
            "action": vec,
            "timestamp": {"dtype": "float32", **scalar},
            "frame_index": {"dtype": "int64", **scalar},
            "episode_index": {"dtype": "int64", **scalar},
            "index": {"dtype": "int64", **scalar},
            "task_index": {"dtype": "int64", **scalar},
        },
    }
    (path / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    return dict(enumerate(kinds))


def main() -> None:
    """Generate, scan once, print recall per fault kind and the clean episodes flagged."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", type=int, default=600)
    ap.add_argument("--faulty", type=int, default=100, help="episodes per fault kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--layouts",
        default="episode-list,large-fixed",
        help="comma-separated parquet layouts (episode-list, episode-fixed, large-list, large-fixed); "
        "the same episodes are written in each, and their reports must be identical",
    )
    args = ap.parse_args()
    from piperctl.leakage import DatasetLeakageTester

    docs = {}
    for layout in args.layouts.split(","):
        path = WORK / f"detectors-{layout}"
        t0 = time.perf_counter()
        kinds = generate(path, args.clean, args.faulty, args.seed, layout)
        t1 = time.perf_counter()
        report = DatasetLeakageTester(path, progress=False).run_all_tests()
        t2 = time.perf_counter()
        doc = report.to_dict()
        doc.pop("root")
        doc.pop("dataset")
        # The retime fix names this dataset's own folder; the rest must match to the byte.
        docs[layout] = json.dumps(doc, sort_keys=True).replace(str(path), "<dataset>")
        _print(report, kinds, layout, t1 - t0, t2 - t1)
        shutil.rmtree(path, ignore_errors=True)
    if len(docs) > 1:
        same = len(set(docs.values())) == 1
        print(f"reports of {', '.join(docs)}: {'identical' if same else 'DIFFER'}")


def _print(report, kinds: dict[int, str], layout: str, gen_s: float, scan_s: float) -> None:  # type: ignore[no-untyped-def]
    named: dict[str, set[int]] = {c.name: set(c.episodes) for c in report.checks}
    anywhere = set().union(*named.values())
    print(
        f"layout {layout}: {report.info['episodes']} episodes, {report.info['frames']:,} frames "
        f"(generated in {gen_s:.1f} s, scanned in {scan_s:.1f} s, load {os.getloadavg()[0]:.1f})"
    )
    print(f"{'fault':22s} {'check':18s} {'episodes':>8s} {'recall':>8s} {'any check':>9s}")
    for kind, check in FAULTS.items():
        eps = {e for e, k in kinds.items() if k == kind}
        hit = len(eps & named[check]) / len(eps)
        anyc = len(eps & anywhere) / len(eps)
        print(f"{kind:22s} {check:18s} {len(eps):8d} {hit:8.1%} {anyc:9.1%}")
    clean = {e for e, k in kinds.items() if k == "clean"}
    flagged = clean & anywhere
    by_check = {c: len(clean & eps) for c, eps in named.items() if clean & eps}
    print(
        f"clean episodes flagged by any check: {len(flagged)}/{len(clean)} = {len(flagged) / len(clean):.2%}"
    )
    if by_check:
        print("  by check:", ", ".join(f"{c} {n}" for c, n in sorted(by_check.items())))


if __name__ == "__main__":
    main()
