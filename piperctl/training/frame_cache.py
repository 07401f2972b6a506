"""Decode each camera video once into an on-disk uint8 frame cache, then serve LeRobotDataset items from it.

`FrameCache.wrap(dataset, cache_dir)` returns a dataset whose items equal `dataset[i]` bit for bit
(same keys, dtypes, delta-timestamp windows, `*_is_pad` masks, image transforms) for datasets read
with lerobot's PyAV backend, without decoding video per sample. Everything that is not a video frame
still comes from lerobot's own `DatasetReader.get_item`: only its `_query_videos` step is replaced,
by a lookup that picks the frame lerobot's PyAV decoder would pick for each query timestamp.

One cache entry per video file: `<cache_dir>/<entry>.npy` (frames, uint8 N x C x H x W, read through
a memory map) and `<entry>.json` (source path, size, mtime, frame timestamps), written atomically
(temp + fsync + rename, JSON last) under a file lock, so several processes may build and read at once.
An entry is named after the video's resolved path, size and mtime: a changed video gets a new entry
and its old one is deleted.
"""

from __future__ import annotations

import copy
import fcntl
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from piperctl.checkpoints.atomic import atomic_write_text, fsync_dir, fsync_file
from piperctl.console import log, progress_bar
from piperctl.errors import PiperctlError, from_os_error

# Bump when the entry layout or the decoding changes, so older entries are rebuilt rather than misread.
FORMAT_VERSION = 1
# Free space kept on the cache's disk beyond what the new entries take.
_HEADROOM_BYTES = 512 * 2**20


def default_cache_dir() -> Path:
    """Where frame caches go unless a folder is given: a `piperctl_frame_cache` folder in lerobot's cache home."""
    from lerobot.utils.constants import HF_LEROBOT_HOME

    return Path(HF_LEROBOT_HOME) / "piperctl_frame_cache"


# ------------------------------------------------------------------------------------------------
# Which files a dataset needs


@dataclass(frozen=True)
class _Source:
    """One video file to cache, as this machine sees it now."""

    path: Path  # resolved: a per-run folder of symlinks (dataset views) still hits the same entry
    size: int
    mtime_ns: int
    frames_hint: int  # frames expected (from the episode metadata), for progress and disk checks
    shape: tuple[int, int, int]  # C, H, W from info.json

    @property
    def entry(self) -> str:
        """The cache entry name: who the file is (path) and which version of it (size, mtime)."""
        who = hashlib.sha256(str(self.path).encode()).hexdigest()[:20]
        version = hashlib.sha256(f"{self.size}:{self.mtime_ns}:{FORMAT_VERSION}".encode()).hexdigest()[:12]
        return f"{who}-{version}"

    @property
    def nbytes(self) -> int:
        """Bytes the cached frames take on disk (without the .npy header)."""
        c, h, w = self.shape
        return self.frames_hint * c * h * w


def _cached_keys(meta: Any) -> list[str]:
    """Video features the cache serves: RGB ones (depth videos keep lerobot's own decoding)."""
    depth = set(getattr(meta, "depth_keys", []) or [])
    return [k for k in meta.video_keys if k not in depth]


def _episodes_of(dataset: Any) -> list[int]:
    episodes = getattr(dataset, "episodes", None)
    return list(range(dataset.meta.total_episodes)) if episodes is None else [int(e) for e in episodes]


def _sources(dataset: Any) -> dict[tuple[str, int], _Source]:
    """(video key, episode) -> the video file holding that episode's frames of that camera."""
    meta, root = dataset.meta, Path(dataset.root)
    episodes = meta.episodes
    lengths = [int(n) for n in episodes["length"]]
    wanted = set(_episodes_of(dataset))
    out: dict[tuple[str, int], _Source] = {}
    for key in _cached_keys(meta):
        h, w, c = _hwc(meta.features[key])
        files: dict[Path, list[int]] = {}
        for ep in range(len(lengths)):
            path = root / meta.get_video_file_path(ep, key)
            if ep not in wanted and not path.exists():
                continue
            try:
                real = path.resolve(strict=True)
            except OSError as e:
                raise from_os_error(e) from e
            files.setdefault(real, []).append(ep)
        for real, eps in files.items():
            if not wanted.intersection(eps):
                continue
            st = real.stat()
            # The whole file is decoded, with the frames of episodes this dataset leaves out.
            src = _Source(real, st.st_size, st.st_mtime_ns, sum(lengths[e] for e in eps), (c, h, w))
            for ep in eps:
                if ep in wanted:
                    out[(key, ep)] = src
    return out


def _hwc(feature: dict) -> tuple[int, int, int]:
    names = feature.get("names") or ["height", "width", "channels"]
    dims = dict(zip(names, feature["shape"], strict=False))
    if {"height", "width", "channels"} <= dims.keys():
        return int(dims["height"]), int(dims["width"]), int(dims["channels"])
    h, w, c = feature["shape"]
    return int(h), int(w), int(c)


def cache_size_bytes(dataset: Any) -> int:
    """Disk bytes the frame cache of `dataset` takes (all frames of every video file it reads, uint8)."""
    seen: dict[Path, _Source] = {s.path: s for s in _sources(dataset).values()}
    return sum(s.nbytes for s in seen.values())


# ------------------------------------------------------------------------------------------------
# Building entries


@dataclass
class _Entry:
    """A complete cache entry: its frames file and the timestamps lerobot's decoder gives each frame."""

    frames_path: Path
    timestamps: list[float]  # float(pts * time_base), exactly as lerobot's PyAV path computes them
    shape: tuple[int, int, int, int]  # N, C, H, W


def _paths(cache_dir: Path, entry: str) -> tuple[Path, Path]:
    return cache_dir / f"{entry}.npy", cache_dir / f"{entry}.json"


def _load_entry(cache_dir: Path, src: _Source) -> _Entry | None:
    """The entry for `src` if a complete, matching one is on disk, else None."""
    frames_path, meta_path = _paths(cache_dir, src.entry)
    try:
        info = json.loads(meta_path.read_text(encoding="utf-8"))
        if (
            info.get("format") != FORMAT_VERSION
            or info.get("source") != str(src.path)
            or info.get("size") != src.size
            or info.get("mtime_ns") != src.mtime_ns
        ):
            return None
        shape = tuple(int(x) for x in info["shape"])
        ts = [float(t) for t in info["timestamps"]]
        arr = np.load(frames_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if arr.dtype != np.uint8 or arr.shape != shape or len(ts) != shape[0]:
        return None
    return _Entry(frames_path, ts, shape)  # type: ignore[arg-type]


@contextmanager
def _locked(cache_dir: Path, src: _Source) -> Iterator[None]:
    """Hold the build lock of one video file (other processes building the same file wait here)."""
    lock = cache_dir / f"{src.entry.split('-')[0]}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _decode_file(path: Path, shape: tuple[int, int, int], on_frame: Any) -> tuple[np.ndarray, list[float]]:
    """Decode every frame of a video as lerobot's PyAV path does (rgb24, CHW): frames and timestamps."""
    import av

    c, h, w = shape
    frames: list[np.ndarray] = []
    timestamps: list[float] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        # Decoding one file start to end: let the decoder use its frame threads (output is the same).
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            arr = frame.to_ndarray(format="rgb24")
            if arr.shape != (h, w, c):
                raise PiperctlError(
                    f"{path} holds {arr.shape[1]}x{arr.shape[0]} frames, not the {w}x{h} meta/info.json declares",
                    hint="fix the dataset's info.json, or train without the frame cache (--no-frame-cache)",
                )
            frames.append(np.ascontiguousarray(arr.transpose(2, 0, 1)))
            timestamps.append(float(frame.pts * stream.time_base))
            on_frame()
    if not frames:
        raise PiperctlError(f"{path} holds no video frames", hint="the video is damaged: copy or re-record it")
    return np.stack(frames), timestamps


def _write_entry(cache_dir: Path, src: _Source, on_frame: Any) -> _Entry:
    """Decode `src` and publish its entry (frames first, JSON last), removing older entries of the same file."""
    frames_path, meta_path = _paths(cache_dir, src.entry)
    frames, timestamps = _decode_file(src.path, src.shape, on_frame)
    tmp = frames_path.with_name(f".tmp-{frames_path.name}.{os.getpid()}")
    try:
        np.save(tmp, frames, allow_pickle=False)
        # np.save appends .npy to a name without it
        tmp_written = tmp if tmp.suffix == ".npy" else tmp.with_name(tmp.name + ".npy")
        fsync_file(tmp_written)
        os.replace(tmp_written, frames_path)
    except BaseException:
        for t in (tmp, tmp.with_name(tmp.name + ".npy")):
            t.unlink(missing_ok=True)
        raise
    fsync_dir(cache_dir)
    info = {
        "format": FORMAT_VERSION,
        "source": str(src.path),
        "size": src.size,
        "mtime_ns": src.mtime_ns,
        "shape": list(frames.shape),
        "timestamps": timestamps,
    }
    atomic_write_text(meta_path, json.dumps(info))
    who = src.entry.split("-")[0]
    for old in cache_dir.glob(f"{who}-*"):
        if old.name not in (frames_path.name, meta_path.name):
            old.unlink(missing_ok=True)
    return _Entry(frames_path, timestamps, tuple(frames.shape))  # type: ignore[arg-type]


def _require_space(cache_dir: Path, missing: list[_Source]) -> None:
    need = sum(s.nbytes for s in missing)
    free = shutil.disk_usage(cache_dir).free
    if need + _HEADROOM_BYTES > free:
        raise PiperctlError(
            f"the frame cache needs {need / 2**30:.1f} GiB in {cache_dir} and only {free / 2**30:.1f} GiB is free",
            hint="free some space, give another folder with --cache-dir, or train without it (--no-frame-cache)",
        )


def build(dataset: Any, cache_dir: Path, progress: bool = True) -> dict[Path, _Entry]:
    """Make sure every video file `dataset` reads has a complete cache entry; decode the missing ones."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise from_os_error(e) from e
    sources = {s.path: s for s in _sources(dataset).values()}
    entries: dict[Path, _Entry] = {}
    missing: list[_Source] = []
    for path, src in sources.items():
        entry = _load_entry(cache_dir, src)
        if entry is None:
            missing.append(src)
        else:
            entries[path] = entry
    if not missing:
        return entries
    _require_space(cache_dir, missing)
    total = sum(s.frames_hint for s in missing)
    with progress_bar("caching video frames", total) if progress else _no_bar(total) as bar:
        for src in missing:
            try:
                with _locked(cache_dir, src):
                    # Another process may have built it while we waited for the lock.
                    entry = _load_entry(cache_dir, src)
                    if entry is None:
                        entry = _write_entry(cache_dir, src, lambda: bar.update(1))
                    else:
                        bar.update(src.frames_hint)
            except OSError as e:
                raise from_os_error(e) from e
            entries[src.path] = entry
    return entries


class _Silent:
    def update(self, advance: int = 1, **fields: object) -> None:
        pass


@contextmanager
def _no_bar(total: int) -> Iterator[_Silent]:
    yield _Silent()


# ------------------------------------------------------------------------------------------------
# Serving


class CachedVideoDataset(torch.utils.data.Dataset):
    """A LeRobotDataset whose video frames come from the frame cache; items equal the dataset's bit for bit.

    Build it with `FrameCache.wrap`. Pickles without its memory maps (DataLoader workers, fork or
    spawn, open their own). Attributes it does not have are read from the wrapped dataset.
    """

    def __init__(self, dataset: Any, entries: dict[Path, _Entry], where: dict[tuple[str, int], tuple[Path, float]]):
        self.dataset = dataset
        self._entries = entries
        # (video key, episode) -> (cached file, the episode's from_timestamp in that file)
        self._where = where
        self._maps: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("dataset", "_entries", "_where", "_maps"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, idx: int | slice) -> dict | list[dict]:
        if isinstance(idx, slice):
            return [self[i] for i in range(*idx.indices(len(self)))]
        reader = self.dataset._ensure_reader()
        if reader.hf_dataset is None:
            reader.load_and_activate()
        # lerobot's own get_item on a shallow copy of its reader, with only the video step swapped:
        # the state, action, padding, transforms and task code paths stay lerobot's.
        view = copy.copy(reader)
        view._query_videos = functools.partial(self._query_videos, reader)
        return view.get_item(idx)

    def _frames(self, path: Path) -> np.ndarray:
        arr = self._maps.get(path)
        if arr is None:
            arr = np.load(self._entries[path].frames_path, mmap_mode="r", allow_pickle=False)
            self._maps[path] = arr
        return arr

    def _query_videos(self, reader: Any, query_timestamps: dict[str, list[float]], ep_idx: int) -> dict:
        from lerobot.datasets.dataset_reader import DatasetReader

        out: dict[str, torch.Tensor] = {}
        for key, query_ts in query_timestamps.items():
            found = self._where.get((key, ep_idx))
            if found is None:  # depth video: lerobot decodes it itself
                out.update(DatasetReader._query_videos(reader, {key: query_ts}, ep_idx))
                continue
            path, from_timestamp = found
            shifted = [from_timestamp + ts for ts in query_ts]
            picks = pick_frames(self._entries[path].timestamps, shifted, reader._tolerance_s, path)
            frames = torch.from_numpy(self._frames(path)[picks])
            if not reader._return_uint8:
                # The conversion of lerobot's PyAV path, operation for operation.
                frames = frames.type(torch.float32) / 255
            out[key] = frames.squeeze(0)
        return out


def pick_frames(timestamps: list[float], query: list[float], tolerance_s: float, path: Path) -> list[int]:
    """The frame lerobot's PyAV decoder returns for each query timestamp, as indices into `timestamps`.

    lerobot decodes from the keyframe before the first query up to the first frame at or after the
    last query, then takes for each query the nearest decoded frame (float32 distances, the first on a
    tie). The frames it decodes always include the nearest frame below and above every query, so the
    same computation over that stretch of the cached timestamps picks the same frames.
    """
    from bisect import bisect_left, bisect_right

    from lerobot.datasets.video_utils import FrameTimestampError

    first, last = min(query), max(query)
    lo = max(0, bisect_right(timestamps, first) - 2)
    hi = min(len(timestamps), bisect_left(timestamps, last) + 1)
    window = timestamps[lo:hi]
    query_t = torch.tensor(query)
    loaded_t = torch.tensor(window)
    dist = torch.cdist(query_t[:, None], loaded_t[:, None], p=1)
    min_, argmin_ = dist.min(1)
    within = min_ < tolerance_s
    if not within.all():
        raise FrameTimestampError(
            f"One or several query timestamps unexpectedly violate the tolerance ({min_[~within]} > {tolerance_s=})."
            f"\nqueried timestamps: {query_t}\nloaded timestamps: {loaded_t}\nvideo: {path}\nbackend: frame cache"
        )
    return [lo + int(i) for i in argmin_]


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
        entries = build(dataset, cache_dir, progress=progress)
        where: dict[tuple[str, int], tuple[Path, float]] = {}
        for (key, ep), src in _sources(dataset).items():
            where[(key, ep)] = (src.path, meta.episodes[ep][f"videos/{key}/from_timestamp"])
        dataset.hf_dataset  # noqa: B018 - loads the reader's table once here rather than in every worker
        return CachedVideoDataset(dataset, entries, where)

    size_bytes = staticmethod(cache_size_bytes)
