"""Build small LeRobot datasets (v3.0 and v2.1) directly with pyarrow, clean or with planted faults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

FPS = 30
DIM = 7
NAMES = ["joint_1", "joint_2", "joint_3", "joint_4", "joint_5", "joint_6", "gripper"]
TASKS = ["pick the cube", "place the cube"]


# The PiPER's joint limits in radians and its gripper range in metres (piperctl.leakage.robots).
LOW = np.array([-2.6179, 0.0, -2.967, -1.745, -1.22, -2.09439, 0.0])
HIGH = np.array([2.6179, 3.14, 0.0, 1.745, 1.22, 2.09439, 0.07])
HOME = (LOW + HIGH) / 2  # the rest pose of `frames(rest=...)`: every episode starts and ends there


def frames(lengths: tuple[int, ...] = (40, 50, 45, 60), seed: int = 0, rest: int = 0) -> pl.DataFrame:
    """Clean frames: smooth random walks of state and action inside the PiPER's limits (radians, metres),
    so no value repeats anywhere.

    With `rest`, each episode starts and ends holding the same home pose for `rest` frames (state and
    action identical, as a real arm at rest reads), and moves smoothly away from and back to it.
    """
    rng = np.random.default_rng(seed)
    half = (HIGH - LOW) / 2
    parts = []
    start = 0
    for ep, n in enumerate(lengths):
        if rest:
            moving = n - 2 * rest
            walk = np.cumsum(rng.normal(0, 0.01, (moving + 1, DIM)) * half / 1.5, axis=0)
            # A bridge: leave home and come back to it without a jump.
            walk -= np.outer(np.linspace(0, 1, moving + 1), walk[-1])
            path = HOME + walk[1:]
            state = np.concatenate([np.tile(HOME, (rest, 1)), path, np.tile(HOME, (rest, 1))])
            action = state + np.concatenate(
                [np.zeros((rest, DIM)), rng.normal(0, 0.002, (moving, DIM)) * half, np.zeros((rest, DIM))]
            )
        else:
            state = np.cumsum(rng.normal(0, 0.01, (n, DIM)) * half / 1.5, axis=0)
            state += LOW + half * (1 + rng.uniform(-0.5, 0.5, DIM))
            action = state + rng.normal(0, 0.005, (n, DIM)) * half / 1.5
        fi = np.arange(n)
        parts.append(
            pl.DataFrame(
                {
                    "observation.state": state.astype(np.float32),
                    "action": action.astype(np.float32),
                    "timestamp": (fi / FPS).astype(np.float32),
                    "frame_index": fi,
                    "episode_index": np.full(n, ep),
                    "index": np.arange(start, start + n),
                    "task_index": np.full(n, ep % len(TASKS)),
                },
                schema={
                    "observation.state": pl.Array(pl.Float32, DIM),
                    "action": pl.Array(pl.Float32, DIM),
                    "timestamp": pl.Float32,
                    "frame_index": pl.Int64,
                    "episode_index": pl.Int64,
                    "index": pl.Int64,
                    "task_index": pl.Int64,
                },
            )
        )
        start += n
    return pl.concat(parts)


def set_rows(df: pl.DataFrame, column: str, rows: list[int], values: list) -> pl.DataFrame:  # type: ignore[type-arg]
    """A copy of `df` with `column` replaced at the given row positions."""
    s = df[column].to_list()
    for r, v in zip(rows, values, strict=True):
        s[r] = v
    return df.with_columns(pl.Series(column, s, dtype=df.schema[column]))


def rows_of(df: pl.DataFrame, episode: int) -> list[int]:
    """Row positions of `episode` in `df`."""
    return df.with_row_index("_r").filter(pl.col("episode_index") == episode)["_r"].to_list()


def episodes_meta(df: pl.DataFrame) -> pl.DataFrame:
    """The episode metadata lerobot would write for `df` (lengths, index ranges, tasks, file)."""
    g = (
        df.with_row_index("_r")
        .group_by("episode_index", maintain_order=True)
        .agg(
            length=pl.len(),
            dataset_from_index=pl.col("index").min(),
            dataset_to_index=pl.col("index").max() + 1,
            task_index=pl.col("task_index").first(),
            file_index=(pl.col("_file").first() if "_file" in df.columns else pl.lit(0)),
        )
    )
    return g.with_columns(
        tasks=pl.col("task_index").map_elements(lambda t: [TASKS[t]], return_dtype=pl.List(pl.String)),
        length=pl.col("length").cast(pl.Int64),
    ).drop("task_index")


def _info(version: str, df: pl.DataFrame, meta: pl.DataFrame) -> dict:
    feats = {
        "observation.state": {"dtype": "float32", "shape": [DIM], "names": NAMES},
        "action": {"dtype": "float32", "shape": [DIM], "names": NAMES},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    n = meta.height
    info = {
        "codebase_version": version,
        "robot_type": "piper",
        "total_episodes": n,
        "total_frames": df.height,
        "total_tasks": len(TASKS),
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": f"0:{n}"},
        "features": feats,
    }
    if version == "v3.0":
        info["data_path"] = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    else:
        info["data_path"] = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
        info["total_chunks"] = 1
    return info


def write(
    root: Path,
    df: pl.DataFrame,
    *,
    version: str = "v3.0",
    meta: pl.DataFrame | None = None,
    info: dict | None = None,
) -> Path:
    """Write `df` as a dataset at `root`; `meta`/`info` override what would be derived from `df`.

    A `_file` column in `df` picks the data file of each row (v3.0 file index, v2.1 episode file);
    by default v3.0 puts everything in file 0 and v2.1 one file per episode.
    """
    meta = episodes_meta(df) if meta is None else meta
    info = _info(version, df, meta) if info is None else info
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    if "_file" not in df.columns:
        # v2.1: a row with a null episode_index stays in the file of the rows before it.
        df = df.with_columns(_file=pl.lit(0) if version == "v3.0" else pl.col("episode_index").forward_fill())
    for (f,), part in df.group_by("_file", maintain_order=True):
        # v2.1 files live in chunk-{episode // chunks_size}; v3.0 tests use one chunk.
        name = (
            f"chunk-000/file-{f:03d}.parquet"
            if version == "v3.0"
            else f"chunk-{f // 1000:03d}/episode_{f:06d}.parquet"
        )
        (root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part.drop("_file").to_arrow(), root / "data" / name)
    if version == "v3.0":
        ep_dir = root / "meta" / "episodes" / "chunk-000"
        ep_dir.mkdir(parents=True, exist_ok=True)
        m = meta.with_columns(
            pl.lit(0).alias("data/chunk_index"),
            pl.col("file_index").alias("data/file_index"),
        ).drop("file_index")
        pq.write_table(m.to_arrow(), ep_dir / "file-000.parquet")
        pq.write_table(
            pl.DataFrame({"task_index": list(range(len(TASKS))), "task": TASKS}).to_arrow(),
            root / "meta" / "tasks.parquet",
        )
    else:
        lines = [
            json.dumps({"episode_index": e, "tasks": t, "length": n})
            for e, t, n in meta.select("episode_index", "tasks", "length").rows()
        ]
        (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
        tasks = [json.dumps({"task_index": i, "task": t}) for i, t in enumerate(TASKS)]
        (root / "meta" / "tasks.jsonl").write_text("\n".join(tasks) + "\n")
    return root


def with_video_feature(root: Path, key: str = "observation.images.front") -> None:
    """Declare a video feature (v2.1 path template) in meta/info.json of the dataset at `root`."""
    p = root / "meta" / "info.json"
    info = json.loads(p.read_text())
    info["features"][key] = {"dtype": "video", "shape": [16, 16, 3], "names": ["height", "width", "channels"]}
    info["video_path"] = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    p.write_text(json.dumps(info, indent=2))


def write_video(path: Path, frames_count: int, fps: int = FPS) -> Path:
    """A tiny MPEG-4 video of `frames_count` 16x16 frames (PyAV), as one camera of one episode."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(frames_count):
            img = np.full((16, 16, 3), (i * 7) % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
