"""Read back the frames of a few episodes (the ones a streaming aggregate singled out)."""

from __future__ import annotations

import polars as pl

from piperctl.leakage.layout import Layout
from piperctl.leakage.reader import read_episode_rows
from piperctl.leakage.scan import list_widths


def read_episodes(layout: Layout, runs: pl.DataFrame, ids: list[int], columns: list[str]) -> pl.DataFrame:
    """`columns` of every frame of the episodes `ids`, sorted by episode and frame_index.

    Only the files that hold those episodes (from the scan's per-file runs) are read, and of those
    only the row groups whose statistics may hold them.
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
    df = read_episode_rows(files, ids, wanted, list_widths(layout, wanted))
    return df.sort("episode_index", "frame_index") if df.height else df
