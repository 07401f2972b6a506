"""Decode each camera video once into an on-disk uint8 frame cache, then serve LeRobotDataset items from it.

`FrameCache.wrap(dataset, cache_dir)` returns a dataset whose items equal `dataset[i]` bit for bit
(same keys, dtypes, delta-timestamp windows, `*_is_pad` masks, image transforms) for datasets read
with lerobot's PyAV backend, without decoding video per sample. Everything that is not a video frame
still comes from lerobot's own `DatasetReader.get_item`: only its `_query_videos` step is replaced,
by a lookup that picks the frame lerobot's PyAV decoder would pick for each query timestamp.

One cache entry per video file: `<cache_dir>/<entry>.frames` (each uint8 C x H x W frame losslessly
compressed: row-difference filter, then zstd; read through a memory map and decoded per sample) and
`<entry>.json` (source path, size, mtime, frame timestamps, byte offset of each frame), written atomically
(temp + fsync + rename, JSON last) under a file lock, so several processes may build and read at once.
An entry is named after the video's resolved path, size and mtime: a changed video gets a new entry
and its old one is deleted.

The package: `store.py` builds the cache on disk (which video files a dataset reads, decoding them,
entries, locks, disk space); `dataset.py` serves items and batches from it (`CachedVideoDataset`,
`collate`, `pick_frames`); `FrameCache.wrap` here joins the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from piperctl.console import log
from piperctl.errors import PiperctlError
from piperctl.training.frame_cache.dataset import Batch, CachedVideoDataset, _Columns, collate, pick_frames
from piperctl.training.frame_cache.store import (
    FORMAT_VERSION,
    _cached_keys,
    _sources,
    build,
    cache_size_bytes,
    default_cache_dir,
)

__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "CachedVideoDataset",
    "FrameCache",
    "build",
    "cache_size_bytes",
    "collate",
    "default_cache_dir",
    "pick_frames",
]


class FrameCache:
    """Entry points of the frame cache (see the module docstring)."""

    @staticmethod
    def wrap(dataset: Any, cache_dir: Path | None = None, progress: bool = True) -> Any:
        """`dataset` served from a frame cache in `cache_dir` (built now where missing); `dataset` itself if it has no video.

        Call it in the main process before any DataLoader worker starts: workers then only read.
        """
        meta = dataset.meta
        if not _cached_keys(meta):
            return dataset
        from lerobot.datasets.dataset_reader import DatasetReader

        if not all(hasattr(DatasetReader, a) for a in ("_query_videos", "get_item")):
            raise PiperctlError(
                "this lerobot version reads videos in a way the frame cache does not know",
                hint="train without it (--no-frame-cache)",
            )
        if getattr(dataset, "video_backend", "pyav") != "pyav":
            log(
                f"note: frames are cached with PyAV; the dataset uses {dataset.video_backend}, whose decoded "
                "pixels may differ in rounding"
            )
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        sources = _sources(dataset)
        entries = build(dataset, cache_dir, progress=progress, sources=sources)
        if progress:
            files = {src.path: src for src in sources.values()}
            cached = sum(entries[path].disk_bytes for path in files)
            videos = sum(src.size for src in files.values())
            log(
                f"frame cache: {cached / 2**20:.1f} MiB of compressed frames for {len(files)} video file(s) "
                f"({videos / 2**20:.1f} MiB, {cached / max(videos, 1):.0f}x) in {cache_dir} "
                "(--no-frame-cache to read the videos instead)"
            )
        starts = {key: meta.episodes[f"videos/{key}/from_timestamp"] for key in _cached_keys(meta)}
        where = {(key, ep): (src.path, starts[key][ep]) for (key, ep), src in sources.items()}
        return CachedVideoDataset(dataset, entries, where, _Columns.of(dataset.hf_dataset))

    size_bytes = staticmethod(cache_size_bytes)
