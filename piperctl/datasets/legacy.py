"""The LeRobot v2.1 layout: one parquet and one MP4 per episode, metadata in JSON lines.

piperctl reads it to check a dataset before converting it, and writes it (from a v3.0 dataset whose
videos hold one episode per file) so the tests can model the v2.1 datasets people still publish.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
# What v2.1 kept per episode and feature; v3.0 adds quantiles that v2.1 readers never wrote.
V21_STATS = ("min", "max", "mean", "std", "count")


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file, skipping blank lines."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def legacy_episodes(root: Path) -> list[dict]:
    """meta/episodes.jsonl of a v2.1 root, sorted by episode_index."""
    return sorted(read_jsonl(root / "meta" / "episodes.jsonl"), key=lambda e: e["episode_index"])


def legacy_files(root: Path, info: dict) -> dict[str, list[str]]:
    """Relative paths a v2.1 root's metadata says exist: key "data" and one key per video feature."""
    chunks = int(info.get("chunks_size") or 1000)
    eps = [int(e["episode_index"]) for e in legacy_episodes(root)]
    files: dict[str, list[str]] = {
        "data": [info["data_path"].format(episode_chunk=e // chunks, episode_index=e) for e in eps]
    }
    for key, ft in info["features"].items():
        if ft.get("dtype") == "video" and info.get("video_path"):
            files[key] = [
                info["video_path"].format(episode_chunk=e // chunks, video_key=key, episode_index=e)
                for e in eps
            ]
    return files


def write_v21(v30: Path, out: Path) -> None:
    """Write the v3.0 dataset at `v30` (one video file per episode) as a v2.1 dataset at `out`."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    info = json.loads((v30 / "meta" / "info.json").read_text())
    chunks = int(info["chunks_size"])
    episodes = pads.dataset(sorted(v30.glob("meta/episodes/*/*.parquet"))).to_table().to_pylist()
    data = pa.concat_tables(pq.read_table(p) for p in sorted(v30.glob("data/*/*.parquet")))
    video_keys = [k for k, ft in info["features"].items() if ft["dtype"] == "video"]
    stats_keys = [k for k, ft in info["features"].items() if ft["dtype"] not in ("string", "language")]

    out.mkdir(parents=True)
    meta = out / "meta"
    meta.mkdir()
    lines: dict[str, list[str]] = {"episodes": [], "episodes_stats": []}
    for row in episodes:
        e = int(row["episode_index"])
        where = {"episode_chunk": e // chunks, "episode_index": e}
        path = out / V21_DATA_PATH.format(**where)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(data.filter(pc.equal(data["episode_index"], e)), path)
        for key in video_keys:
            if row[f"videos/{key}/from_timestamp"] != 0.0:
                raise ValueError(f"episode {e} of {key} does not start its own video file")
            src = v30 / info["video_path"].format(
                video_key=key,
                chunk_index=row[f"videos/{key}/chunk_index"],
                file_index=row[f"videos/{key}/file_index"],
            )
            dst = out / V21_VIDEO_PATH.format(video_key=key, **where)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        lines["episodes"].append(
            json.dumps({"episode_index": e, "tasks": list(row["tasks"]), "length": int(row["length"])})
        )
        stats = {k: {s: row[f"stats/{k}/{s}"] for s in V21_STATS} for k in stats_keys}
        lines["episodes_stats"].append(json.dumps({"episode_index": e, "stats": stats}))
    for name, rows in lines.items():
        (meta / f"{name}.jsonl").write_text("".join(r + "\n" for r in rows))
    tasks = pq.read_table(v30 / "meta" / "tasks.parquet").to_pylist()
    (meta / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": t["task_index"], "task": t["task"]}) + "\n" for t in tasks)
    )

    features = {}
    for key, ft in info["features"].items():
        features[key] = {k: v for k, v in ft.items() if not (k == "fps" and ft["dtype"] != "video")}
    legacy_info = {
        "codebase_version": "v2.1",
        "robot_type": info.get("robot_type"),
        "total_episodes": info["total_episodes"],
        "total_frames": info["total_frames"],
        "total_tasks": info["total_tasks"],
        "total_videos": info["total_episodes"] * len(video_keys),
        "total_chunks": max(math.ceil(info["total_episodes"] / chunks), 1),
        "chunks_size": chunks,
        "fps": info["fps"],
        "splits": info.get("splits", {}),
        "data_path": V21_DATA_PATH,
        "video_path": V21_VIDEO_PATH if video_keys else None,
        "features": features,
    }
    (meta / "info.json").write_text(json.dumps(legacy_info, indent=4))
