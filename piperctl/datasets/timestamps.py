"""Rewrite the stored timestamps of a LeRobot v3.0 dataset, keeping its statistics consistent."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from piperctl.fs import atomic_replace

# Called with (episode_index, frame_index array of that episode's rows) -> new timestamps (seconds).
Stamps = Callable[[int, np.ndarray], np.ndarray]


def frame_index_over_fps(fps: int) -> Stamps:
    """The timestamps lerobot's own writer records: frame_index / fps."""

    def stamps(episode: int, frame_index: np.ndarray) -> np.ndarray:
        return frame_index / fps

    return stamps


def rewrite_timestamps(root: Path, stamps: Stamps) -> dict[int, np.ndarray]:
    """Set the `timestamp` column of the v3.0 dataset at `root` (a copy we own) and its per-episode and global stats.

    Returns the new timestamps per episode.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from lerobot.datasets.compute_stats import aggregate_feature_stats, get_feature_stats
    from lerobot.datasets.io_utils import write_table_one_row_group_per_episode

    per_episode: dict[int, np.ndarray] = {}
    for path in sorted(root.glob("data/*/*.parquet")):
        table = pq.read_table(path)
        ep = table.column("episode_index").to_numpy()
        fi = table.column("frame_index").to_numpy()
        new = np.empty(len(ep), dtype=np.float64)
        for e in np.unique(ep):
            rows = ep == e
            new[rows] = stamps(int(e), fi[rows])
        col = table.schema.get_field_index("timestamp")
        ts_type = table.schema.field(col).type
        values = new.astype(ts_type.to_pandas_dtype())
        table = table.set_column(col, table.schema.field(col), pa.array(values, type=ts_type))
        for e in np.unique(ep):
            per_episode[int(e)] = values[ep == e]
        atomic_replace(path, lambda p, t=table: write_table_one_row_group_per_episode(t, p))

    stats = {e: get_feature_stats(ts, axis=0, keepdims=True) for e, ts in per_episode.items()}
    for path in sorted(root.glob("meta/episodes/*/*.parquet")):
        table = pq.read_table(path)
        episodes = table.column("episode_index").to_pylist()
        for name in list(table.column_names):
            if not name.startswith("stats/timestamp/"):
                continue
            key = name.rsplit("/", 1)[1]
            col = table.schema.get_field_index(name)
            field = table.schema.field(col)
            rows = [stats[e][key].tolist() for e in episodes]
            table = table.set_column(col, field, pa.array(rows, type=field.type))
        atomic_replace(path, lambda p, t=table: pq.write_table(t, p))

    stats_path = root / "meta" / "stats.json"
    if stats_path.is_file():
        global_stats = json.loads(stats_path.read_text())
        if "timestamp" in global_stats:
            keys = set(global_stats["timestamp"])
            agg = aggregate_feature_stats([{k: v for k, v in s.items() if k in keys} for s in stats.values()])
            global_stats["timestamp"] = {k: np.asarray(v).tolist() for k, v in agg.items() if k in keys}
            text = json.dumps(global_stats, indent=4)
            atomic_replace(stats_path, lambda p: p.write_text(text))
    return per_episode
