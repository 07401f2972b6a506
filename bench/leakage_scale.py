"""Benchmark `piperctl leakage` at 1M and 10M frames against the pyarrow read floor and lerobot-doctor.

Generates LeRobot v3.0 datasets directly with pyarrow under bench/_work (7-dim float32 state and
action, episodes of 300-700 frames, ~100 MB data files as lerobot writes them) in each parquet
layout asked for (`--layouts`): one row group per episode as lerobot 0.6.1 writes (`episode-*`) or
one per file (`large-*`), vectors as `list<float>` (`*-list`) or `fixed_size_list<float>`
(`*-fixed`); the same values in every layout. Then runs every tool in its own subprocess and reads
that process's wall time, CPU time and peak RSS from wait4(). Prints one table with wall and CPU
ratios to the pyarrow read of the same columns, and whether the reports of the layouts are identical.
This process stays small (generation runs in a child too): Linux carries a parent's RSS high-water
mark across fork+exec into the child's ru_maxrss, which would inflate every figure.

    .venv/bin/python bench/leakage_scale.py [--sizes 1000000,10000000]
        [--layouts episode-list,episode-fixed,large-fixed] [--tools floor,minimal,full,doctor] [--delete]

`--datasets N` measures the scan of several datasets instead (issue 18): `piperctl leakage full A B`
of two datasets of N frames each (independent recordings, and A with a copy of itself) beside
`piperctl leakage full C` of one dataset of 2N frames, interleaved `--repeat` times, and prints the
ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work"
PY = sys.executable
PIPERCTL = str(Path(PY).parent / "piperctl")
ROWS_PER_FILE = 800_000  # about 100 MB of parquet per file at this row width, lerobot's default size
NAMES = ["joint_1", "joint_2", "joint_3", "joint_4", "joint_5", "joint_6", "gripper"]
# The PiPER's joint limits (rad) and gripper range (m); SPAN scales the random steps per dimension.
LOW = [-2.6179, 0.0, -2.967, -1.745, -1.22, -2.09439, 0.0]
HIGH = [2.6179, 3.14, 0.0, 1.745, 1.22, 2.09439, 0.07]
SPAN = [(h - lo) / 2 for lo, h in zip(LOW, HIGH, strict=True)]
MINIMAL_COLUMNS = ["episode_index", "frame_index", "index", "timestamp"]
FULL_COLUMNS = [*MINIMAL_COLUMNS, "observation.state", "action"]


def _lengths(frames: int, rng) -> list[int]:  # type: ignore[no-untyped-def]
    out, total = [], 0
    while total < frames:
        n = int(min(rng.integers(300, 701), frames - total))
        out.append(n)
        total += n
    return out


def generate(path: Path, frames: int, layout: str = "episode-list", fps: int = 30, seed: int = 0) -> Path:
    """Write a clean v3.0 dataset of `frames` frames in `layout` (reused when already there).

    The same `frames` and `seed` give the same values in every layout; only the parquet layout differs.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    row_groups, lists = layout.split("-")

    def _vec(a: np.ndarray) -> pa.Array:
        values = pa.array(a.reshape(-1))
        if lists == "fixed":
            return pa.FixedSizeListArray.from_arrays(values, a.shape[1])
        offsets = pa.array(np.arange(0, a.size + 1, a.shape[1], dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, values)

    marker = path / ".complete"
    if marker.is_file() and marker.read_text() == f"{frames},{seed},{layout},piper-limits":
        return path
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(seed)
    lengths = _lengths(frames, rng)
    LOW_, HIGH_, SPAN_ = np.array(LOW), np.array(HIGH), np.array(SPAN)  # noqa: N806
    (path / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (path / "data" / "chunk-000").mkdir(parents=True)
    meta_rows: list[dict] = []
    file_index, start, ep = 0, 0, 0
    while ep < len(lengths):
        group = []
        while ep < len(lengths) and (not group or sum(group) + lengths[ep] <= ROWS_PER_FILE):
            group.append(lengths[ep])
            ep += 1
        n = sum(group)
        first_ep = ep - len(group)
        ep_ids = np.repeat(np.arange(first_ep, ep), group)
        starts = np.repeat(np.cumsum([0, *group[:-1]]), group)
        fi = np.arange(n) - starts
        # Random walks restarted at each episode inside the PiPER's joint limits (radians, gripper
        # in metres, as robot_type "piper" declares): smooth joints, no value repeated.
        steps = (rng.normal(0, 0.002, (n, 7)) * SPAN_).astype(np.float32)
        walk = np.cumsum(steps, axis=0)
        walk -= np.repeat(walk[np.cumsum([0, *group[:-1]])], group, axis=0)
        starts = LOW_ + (HIGH_ - LOW_) * rng.uniform(0.3, 0.7, (len(group), 7))
        state = walk + np.repeat(starts.astype(np.float32), group, axis=0)
        action = state + (rng.normal(0, 0.001, (n, 7)) * SPAN_).astype(np.float32)
        table = pa.table(
            {
                "observation.state": _vec(state.astype(np.float32)),
                "action": _vec(action.astype(np.float32)),
                "timestamp": pa.array((fi / fps).astype(np.float32)),
                "frame_index": pa.array(fi.astype(np.int64)),
                "episode_index": pa.array(ep_ids.astype(np.int64)),
                "index": pa.array(np.arange(start, start + n, dtype=np.int64)),
                "task_index": pa.array(np.zeros(n, dtype=np.int64)),
            }
        )
        out = path / "data" / "chunk-000" / f"file-{file_index:03d}.parquet"
        if row_groups == "episode":
            # lerobot 0.6.1 appends each episode to the open file: one row group per episode.
            with pq.ParquetWriter(out, table.schema) as writer:
                for first, length in zip(np.cumsum([0, *group[:-1]]), group, strict=True):
                    writer.write_table(table.slice(int(first), length))
        else:
            pq.write_table(table, out)
        offset = start
        for i, length in enumerate(group):
            meta_rows.append(
                {
                    "episode_index": first_ep + i,
                    "tasks": ["pick and place"],
                    "length": length,
                    "data/chunk_index": 0,
                    "data/file_index": file_index,
                    "dataset_from_index": offset,
                    "dataset_to_index": offset + length,
                }
            )
            offset += length
        start += n
        file_index += 1
    pq.write_table(
        pa.Table.from_pylist(meta_rows), path / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    )
    pq.write_table(pa.table({"task_index": [0], "task": ["pick and place"]}), path / "meta" / "tasks.parquet")
    vec = {"dtype": "float32", "shape": [7], "names": NAMES}
    scalar = {"shape": [1], "names": None}
    info = {
        "codebase_version": "v3.0",
        "robot_type": "piper",
        "total_episodes": len(lengths),
        "total_frames": frames,
        "total_tasks": 1,
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": fps,
        "splits": {"train": f"0:{len(lengths)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": None,
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
    marker.write_text(f"{frames},{seed},{layout},piper-limits")
    return path


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float, int, str]:
    """Run `cmd`; returns (wall s, CPU s, peak RSS MB of that process, exit code, its output)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 1024, proc.returncode, output.decode(errors="replace")


_FLOOR = """
import sys, pyarrow.parquet as pq, pathlib
cols = sys.argv[2].split(',')
for f in sorted(pathlib.Path(sys.argv[1], 'data').glob('**/*.parquet')):
    pq.read_table(f, columns=cols)
"""

# The cheapest pyarrow read we know of for files of many small row groups: read_table threads over
# row groups and pays per group, iter_batches streams them (3.4x less CPU on one row group per episode).
_FLOOR_BATCHES = """
import sys, pyarrow.parquet as pq, pathlib
cols = sys.argv[2].split(',')
for f in sorted(pathlib.Path(sys.argv[1], 'data').glob('**/*.parquet')):
    for _ in pq.ParquetFile(f, pre_buffer=False).iter_batches(batch_size=131072, columns=cols):
        pass
"""


def doctor_exe() -> tuple[str | None, str]:
    """lerobot-doctor in its own venv under bench/_work (never the project venv); (path, note)."""
    env_dir = WORK / "doctor-venv"
    exe = env_dir / "bin" / "lerobot-doctor"
    if exe.exists():
        return str(exe), "installed"
    probe = subprocess.run(
        [
            PY,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            str(WORK / "doctor-probe"),
            "lerobot-doctor==0.2.0",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return None, "lerobot-doctor is not available from the package index here; no figures"
    venv.create(env_dir, with_pip=True)
    inst = subprocess.run(
        [str(env_dir / "bin" / "pip"), "install", "-q", "lerobot-doctor==0.2.0"],
        capture_output=True,
        text=True,
    )
    if inst.returncode != 0 or not exe.exists():
        return None, f"lerobot-doctor failed to install: {inst.stderr.strip()[-200:]}"
    return str(exe), "installed"


LAYOUTS = ("episode-list", "episode-fixed", "large-list", "large-fixed")


def _floor_name(name: str) -> str:
    return (
        "pyarrow read, full columns"
        if "full" in name or name == "lerobot-doctor"
        else "pyarrow read, minimal columns"
    )


def double(src: Path, dst: Path) -> Path:
    """`src` followed by a copy of itself as one dataset (episodes and index renumbered), row groups kept."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    marker = dst / ".complete"
    if marker.is_file() and marker.read_text() == str(src):
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    info = json.loads((src / "meta" / "info.json").read_text())
    frames, episodes = info["total_frames"], info["total_episodes"]
    files = sorted((src / "data" / "chunk-000").glob("file-*.parquet"))
    (dst / "data" / "chunk-000").mkdir(parents=True)
    (dst / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    for half in (0, 1):
        for k, f in enumerate(files):
            pf = pq.ParquetFile(f)
            out = dst / "data" / "chunk-000" / f"file-{k + half * len(files):03d}.parquet"
            with pq.ParquetWriter(out, pf.schema_arrow) as writer:
                for g in range(pf.metadata.num_row_groups):
                    t = pf.read_row_group(g)
                    for col, shift in (("episode_index", episodes), ("index", frames)):
                        i = t.schema.get_field_index(col)
                        t = t.set_column(i, col, pc.add(t[col], half * shift))
                    writer.write_table(t)
    meta = pq.read_table(src / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    shifted = [
        {
            **m,
            "episode_index": m["episode_index"] + episodes,
            "data/file_index": m["data/file_index"] + len(files),
            "dataset_from_index": m["dataset_from_index"] + frames,
            "dataset_to_index": m["dataset_to_index"] + frames,
        }
        for m in meta
    ]
    pq.write_table(
        pa.Table.from_pylist(meta + shifted), dst / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    )
    shutil.copy(src / "meta" / "tasks.parquet", dst / "meta" / "tasks.parquet")
    info.update(total_frames=2 * frames, total_episodes=2 * episodes, splits={"train": f"0:{2 * episodes}"})
    (dst / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    marker.write_text(str(src))
    return dst


def datasets_mode(frames: int, layout: str, repeat: int, delete: bool) -> None:
    """Two datasets of `frames` frames scanned together, beside one dataset of their total frames."""
    import statistics

    WORK.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    made = []
    for name, n, seed in (("a", frames, 1), ("b", frames, 2), ("total", 2 * frames, 1)):
        ds = WORK / f"multi_{name}_{n}_{layout}"
        subprocess.run([PY, __file__, "--generate", str(n), layout, str(ds), "--seed", str(seed)], check=True)
        made.append(ds)
    a, b, total = made
    copy = WORK / f"multi_a_copy_{frames}_{layout}"
    if not (copy / "meta" / "info.json").is_file():
        shutil.copytree(a, copy)
    made.append(copy)
    doubled = WORK / f"multi_a_doubled_{frames}_{layout}"
    subprocess.run([PY, __file__, "--double", str(a), str(doubled)], check=True)
    made.append(doubled)
    scan = [PIPERCTL, "leakage", "full", "--json", "--no-progress"]
    runs = {
        f"one dataset of {2 * frames:,} frames": ([*scan, str(total)], 0),
        f"two independent datasets of {frames:,}": ([*scan, str(a), str(b)], 0),
        f"a dataset of {frames:,} and its copy": ([*scan, str(a), str(copy)], 1),
        f"one dataset: those {frames:,} twice": ([*scan, str(doubled)], 1),
    }
    print(
        f"cpus available: {len(os.sched_getaffinity(0))}, layout {layout}, {repeat} runs of each, interleaved"
    )
    times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in runs}
    for _ in range(repeat):
        for name, (cmd, expected) in runs.items():
            wall, cpu, rss, code, out = measure(cmd, env)
            if code != expected:
                raise SystemExit(f"{name}: exit {code}, expected {expected}: {out[-500:]}")
            times[name].append((wall, cpu, rss))
            print(
                f"  {name:40s} {wall:7.2f} s wall {cpu:7.2f} s cpu {rss:6.0f} MB (load {os.getloadavg()[0]:.1f})"
            )
    print(
        f"\n{'scan':40s} {'wall s':>7} {'cpu s':>7} {'peak MB':>8} {'x one (wall)':>12} {'x one (cpu)':>11}"
    )
    base = None
    for name, ts in times.items():
        wall = statistics.median(t[0] for t in ts)
        cpu = statistics.median(t[1] for t in ts)
        rss = max(t[2] for t in ts)
        base = base or (wall, cpu)
        print(f"{name:40s} {wall:7.2f} {cpu:7.2f} {rss:8.0f} {wall / base[0]:12.2f} {cpu / base[1]:11.2f}")
    print("\nmedians of the runs; x one: over the scan of one dataset of the same total frames")
    if delete:
        for ds in made:
            shutil.rmtree(ds, ignore_errors=True)


def main() -> None:
    """Generate, run, print the side-by-side table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="comma-separated frame counts")
    ap.add_argument(
        "--layouts",
        default="episode-list,episode-fixed,large-fixed",
        help=f"comma-separated parquet layouts, ROWGROUPS-LISTS: {', '.join(LAYOUTS)} (episode: one row "
        "group per episode as lerobot 0.6.1 writes; large: one row group per file; list: list<float> "
        "vectors; fixed: fixed_size_list<float>)",
    )
    ap.add_argument(
        "--tools", default="floor,minimal,full,doctor", help="which of floor,minimal,full,doctor to run"
    )
    ap.add_argument("--no-doctor", action="store_true", help="skip lerobot-doctor")
    ap.add_argument("--delete", action="store_true", help="delete each dataset after its runs")
    ap.add_argument(
        "--datasets",
        type=int,
        metavar="N",
        help="time 'leakage full A B' (two datasets of N frames) against one scan of a dataset of 2N frames",
    )
    ap.add_argument("--repeat", type=int, default=3, help="with --datasets: runs of each, interleaved")
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--double", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    ap.add_argument("--generate", nargs=3, metavar=("FRAMES", "LAYOUT", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        generate(Path(args.generate[2]), int(args.generate[0]), args.generate[1], seed=args.seed)
        return
    if args.double:
        double(Path(args.double[0]), Path(args.double[1]))
        return
    if args.datasets:
        datasets_mode(args.datasets, args.layouts.split(",")[0], args.repeat, args.delete)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    layouts = args.layouts.split(",")
    bad = [x for x in layouts if x not in LAYOUTS]
    if bad:
        ap.error(f"unknown layout(s) {', '.join(bad)}; use {', '.join(LAYOUTS)}")
    tools = set(args.tools.split(","))
    WORK.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    print(
        f"cpus available: {len(os.sched_getaffinity(0))}, polars threads: {os.environ.get('POLARS_MAX_THREADS', 'auto')}"
    )
    wants_doctor = "doctor" in tools and not args.no_doctor
    doctor, doctor_note = doctor_exe() if wants_doctor else (None, "skipped")
    rows: list[tuple[str, str, str, float, float, float, str]] = []
    reports: dict[tuple[str, str], str] = {}
    for frames in sizes:
        label = f"{frames / 1e6:g}M"
        for layout in layouts:
            t0 = time.perf_counter()
            ds = WORK / f"ds_{frames}_{layout}"
            subprocess.run([PY, __file__, "--generate", str(frames), layout, str(ds)], check=True)
            size_mb = sum(f.stat().st_size for f in (ds / "data").glob("**/*.parquet")) / 1e6
            print(
                f"dataset {ds.name}: {frames:,} frames, {size_mb:.0f} MB of parquet "
                f"(ready in {time.perf_counter() - t0:.1f} s)"
            )
            runs: dict[str, list[str]] = {}
            for scan, columns in (("minimal", MINIMAL_COLUMNS), ("full", FULL_COLUMNS)):
                if "floor" in tools and scan in tools:
                    runs[f"pyarrow read, {scan} columns"] = [PY, "-c", _FLOOR, str(ds), ",".join(columns)]
                    runs[f"pyarrow batches, {scan} columns"] = [
                        PY,
                        "-c",
                        _FLOOR_BATCHES,
                        str(ds),
                        ",".join(columns),
                    ]
                if scan in tools:
                    runs[f"piperctl leakage {scan}"] = [
                        PIPERCTL,
                        "leakage",
                        scan,
                        str(ds),
                        "--json",
                        "--no-progress",
                    ]
            if doctor and frames <= 1_000_000 and layout.startswith("episode"):
                runs["lerobot-doctor"] = [doctor, str(ds)]
            for name, cmd in runs.items():
                wall, cpu, rss, code, out = measure(cmd, env)
                ok = code == 0 or (name == "lerobot-doctor" and code in (0, 1))
                note = "" if ok else f"exit {code}: {out.strip().splitlines()[-1] if out.strip() else ''}"
                if name.startswith("piperctl") and ok:
                    report = json.loads(out)
                    report.pop("root", None)
                    report.pop("dataset", None)
                    reports[(label, name + layout)] = json.dumps(report, sort_keys=True)
                    if report["status"] != "pass":
                        note = f"status {report['status']} on a clean dataset"
                rows.append((label, layout, name, wall, cpu, rss, note))
                print(
                    f"  {layout:14s} {name:32s} {wall:7.2f} s wall {cpu:7.2f} s cpu {rss:7.0f} MB  "
                    f"(load {os.getloadavg()[0]:.1f}) {note}",
                    flush=True,
                )
            if args.delete:
                shutil.rmtree(ds, ignore_errors=True)
    print()
    print(f"lerobot-doctor: {doctor_note}")
    print()
    print(
        f"{'frames':>6}  {'layout':14s} {'tool':32s} {'wall s':>7} {'cpu s':>7} {'peak RSS MB':>11} "
        f"{'x floor wall':>12} {'x floor cpu':>11} {'x batches cpu':>13} {'doctor/us wall':>14}"
    )
    for label, layout, name, wall, cpu, rss, note in rows:
        same = {n: (w, c) for lb, la, n, w, c, _, _ in rows if lb == label and la == layout}
        floor = same.get(_floor_name(name))
        show = floor and not name.startswith("pyarrow")
        ratio_w = f"{wall / floor[0]:12.2f}" if show else " " * 12
        ratio_c = f"{cpu / floor[1]:11.2f}" if show else " " * 11
        batches = same.get(_floor_name(name).replace("read", "batches"))
        ratio_b = f"{cpu / batches[1]:13.2f}" if batches and not name.startswith("pyarrow") else " " * 13
        doc = same.get("lerobot-doctor")
        vs = f"{doc[0] / wall:14.1f}" if doc and name.startswith("piperctl") else " " * 14
        print(
            f"{label:>6}  {layout:14s} {name:32s} {wall:7.2f} {cpu:7.2f} {rss:11.0f} {ratio_w} {ratio_c} {ratio_b} {vs} {note}"
        )
    print(
        "\nx floor: time over the pyarrow read (read_table) of the same columns; x batches: CPU over pyarrow's "
        "iter_batches of the same columns; doctor/us: lerobot-doctor wall over ours."
    )
    # The same data in every layout must give the same report.
    for label in dict.fromkeys(r[0] for r in rows):
        for mode in ("piperctl leakage minimal", "piperctl leakage full"):
            found = {la: reports[(label, mode + la)] for la in layouts if (label, mode + la) in reports}
            if len(found) > 1:
                same = len(set(found.values())) == 1
                print(f"{label} {mode}: reports of {', '.join(found)} {'identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
