"""Read back the frames of a few episodes (the ones a streaming aggregate singled out)."""

from __future__ import annotations

import polars as pl

from piperctl.leakage.layout import Layout
from piperctl.leakage.scan import _collect, batches


def read_episodes(layout: Layout, runs: pl.DataFrame, ids: list[int], columns: list[str]) -> pl.DataFrame:
    """`columns` of every frame of the episodes `ids`, sorted by episode and frame_index.

    Only the files that hold those episodes (from the scan's per-file runs) are read.
    """
    if not ids:
        return pl.DataFrame()
    rels = set(runs.filter(pl.col("episode_index").is_in(ids))["file"].to_list())
    files = [f for f in layout.files if f.rel in rels]
    if not files:
        return pl.DataFrame()
    wanted = [
        "episode_index",
        "frame_index",
        *[c for c in columns if c not in ("episode_index", "frame_index")],
    ]
    parts = []
    for batch in batches(files):
        q = batch.scan().filter(pl.col("episode_index").is_in(ids)).select(wanted)
        parts.append(_collect(batch, [q], wanted)[0])
    return pl.concat(parts, how="vertical_relaxed").sort("episode_index", "frame_index")
