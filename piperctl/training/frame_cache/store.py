"""The frame cache on disk: which video files a dataset reads, decoding them into compressed entries, disk space.

`build` makes sure every video file a dataset reads has a complete entry (see the package docstring
for the layout); `piperctl.training.frame_cache.dataset` serves items from those entries.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from piperctl.console import log, progress_bar
from piperctl.errors import PiperctlError, from_os_error
from piperctl.fs import TMP_PREFIX, atomic_replace, atomic_write

# Bump when the entry layout or the decoding changes, so older entries are rebuilt rather than misread.
FORMAT_VERSION = 2
# Each frame is stored losslessly: the row above subtracted (PNG's "Up" filter), then zstd. Measured on
# real 480x640 AV1 footage (cr5, docs/benchmarks.md): ~4x smaller than raw frames (level 1: 2.6x, no
# filter: 1.8x) for ~3 ms of decoding per frame, far below the 30 ms PyAV takes to seek and decode one.
_ZSTD_LEVEL = 3
# Free space asked for before building: decoded bytes / this (real footage compresses 2.6-4x).
_ASSUMED_RATIO = 2
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
        """Bytes of the decoded uint8 frames (the cache stores them compressed in fewer)."""
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
    """Bytes of every decoded uint8 frame of every video file `dataset` reads (the cache takes 2-4x less on disk)."""
    seen: dict[Path, _Source] = {s.path: s for s in _sources(dataset).values()}
    return sum(s.nbytes for s in seen.values())


# ------------------------------------------------------------------------------------------------
# Building entries


def encode_frame(chw: np.ndarray, compressor: Any) -> bytes:
    """One C x H x W uint8 frame, losslessly compressed (Up filter, then zstd)."""
    filtered = chw.copy()
    np.subtract(chw[:, 1:, :], chw[:, :-1, :], out=filtered[:, 1:, :])
    return compressor.compress(filtered.data)


def decode_frame(blob: Any, out: np.ndarray, decompressor: Any) -> None:
    """Undo `encode_frame` into `out` (a C x H x W uint8 array)."""
    filtered = np.frombuffer(decompressor.decompress(blob), dtype=np.uint8).reshape(out.shape)
    np.cumsum(filtered, axis=1, dtype=np.uint8, out=out)


class Frames:
    """The frames of one cached video file, decoded on demand from a memory map of its entry."""

    def __init__(self, path: Path, shape: tuple[int, int, int, int], offsets: list[int]) -> None:
        import zstandard

        self.shape = shape
        self._offsets = offsets
        self._data = np.memmap(path, dtype=np.uint8, mode="r") if offsets[-1] else np.empty(0, np.uint8)
        self._decompressor = zstandard.ZstdDecompressor()

    def __len__(self) -> int:
        return self.shape[0]

    def read_into(self, index: int, out: np.ndarray) -> None:
        """Frame `index` (C x H x W uint8) written into `out`."""
        lo, hi = self._offsets[index], self._offsets[index + 1]
        decode_frame(self._data[lo:hi], out, self._decompressor)

    def __getitem__(self, index: int | slice) -> np.ndarray:
        if isinstance(index, slice):
            rows = range(*index.indices(len(self)))
            out = np.empty((len(rows), *self.shape[1:]), np.uint8)
            for dst, i in zip(out, rows, strict=True):
                self.read_into(i, dst)
            return out
        out = np.empty(self.shape[1:], np.uint8)
        self.read_into(int(index), out)
        return out


@dataclass
class _Entry:
    """A complete cache entry: its frames file and the timestamps lerobot's decoder gives each frame."""

    frames_path: Path
    timestamps: list[float]  # float(pts * time_base), exactly as lerobot's PyAV path computes them
    shape: tuple[int, int, int, int]  # N, C, H, W
    offsets: list[int]  # frame i is bytes offsets[i]:offsets[i + 1] of the frames file

    def open(self) -> Frames:
        """The frames, decoded on demand (each process opens its own: memory maps do not travel)."""
        return Frames(self.frames_path, self.shape, self.offsets)

    @property
    def disk_bytes(self) -> int:
        """Bytes the compressed frames take on disk."""
        return self.offsets[-1]


def _paths(cache_dir: Path, entry: str) -> tuple[Path, Path]:
    return cache_dir / f"{entry}.frames", cache_dir / f"{entry}.json"


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
        offsets = [int(x) for x in info["offsets"]]
        on_disk = frames_path.stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(shape) != 4 or len(ts) != shape[0] or len(offsets) != shape[0] + 1 or on_disk != offsets[-1]:
        return None
    return _Entry(frames_path, ts, shape, offsets)  # type: ignore[arg-type]


@contextmanager
def _locked(cache_dir: Path, who: str) -> Iterator[None]:
    """Hold the build lock of one video file (other processes building the same file wait here)."""
    fd = os.open(cache_dir / f"{who}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _decode_into(
    path: Path, shape: tuple[int, int, int], out: Any, on_frame: Callable[[], None]
) -> tuple[list[float], list[int]]:
    """Decode every frame of a video as lerobot's PyAV path does (rgb24, CHW), appending them compressed to `out`.

    Returns the frames' timestamps and their byte offsets in `out`.
    """
    import av
    import zstandard

    c, h, w = shape
    compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    timestamps: list[float] = []
    offsets = [0]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        # One pass over the whole file: let the decoder use its frame threads (same output).
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
            blob = encode_frame(np.ascontiguousarray(arr.transpose(2, 0, 1)), compressor)
            out.write(blob)
            offsets.append(offsets[-1] + len(blob))
            timestamps.append(float(frame.pts * stream.time_base))
            on_frame()
    if not timestamps:
        raise PiperctlError(
            f"{path} holds no video frames", hint="the video is damaged: copy or re-record it"
        )
    return timestamps, offsets


def _write_entry(cache_dir: Path, src: _Source, on_frame: Callable[[], None]) -> _Entry:
    """Decode `src` into a new entry (frames file first, JSON last); remove older entries of the same file."""
    frames_path, meta_path = _paths(cache_dir, src.entry)
    who = src.entry.split("-")[0]
    # Under the lock, temp files of this video can only be left by a builder that died.
    for stale in cache_dir.glob(f"{TMP_PREFIX}{who}-*"):
        stale.unlink(missing_ok=True)
    timestamps: list[float] = []
    offsets: list[int] = []

    def decode(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            ts, offs = _decode_into(src.path, src.shape, f, on_frame)
        timestamps.extend(ts)
        offsets.extend(offs)

    atomic_replace(frames_path, decode)
    shape = (len(timestamps), *src.shape)
    info = {
        "format": FORMAT_VERSION,
        "source": str(src.path),
        "size": src.size,
        "mtime_ns": src.mtime_ns,
        "shape": list(shape),
        "timestamps": timestamps,
        "offsets": offsets,
    }
    atomic_write(meta_path, json.dumps(info))
    for old in cache_dir.glob(f"{who}-*"):
        if old.name not in (frames_path.name, meta_path.name):
            old.unlink(missing_ok=True)
    return _Entry(frames_path, timestamps, shape, offsets)  # type: ignore[arg-type]


def _require_space(cache_dir: Path, missing: list[_Source]) -> None:
    need = sum(s.nbytes for s in missing) // _ASSUMED_RATIO
    free = shutil.disk_usage(cache_dir).free
    if need + _HEADROOM_BYTES > free:
        raise PiperctlError(
            f"the frame cache needs about {need / 2**30:.1f} GiB in {cache_dir} and only {free / 2**30:.1f} GiB is free",
            hint="free some space, give another folder with --cache-dir, or train without it (--no-frame-cache)",
        )


def build(
    dataset: Any,
    cache_dir: Path,
    progress: bool = True,
    sources: dict[tuple[str, int], _Source] | None = None,
) -> dict[Path, _Entry]:
    """Make sure every video file `dataset` reads has a complete cache entry; decode the missing ones."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise from_os_error(e) from e
    by_path = {s.path: s for s in (sources if sources is not None else _sources(dataset)).values()}
    entries: dict[Path, _Entry] = {}
    missing: list[_Source] = []
    for path, src in by_path.items():
        entry = _load_entry(cache_dir, src)
        if entry is None:
            missing.append(src)
        else:
            entries[path] = entry
    if not missing:
        return entries
    _require_space(cache_dir, missing)
    total = sum(s.frames_hint for s in missing)
    if progress:
        log(
            f"caching the frames of {len(missing)} video file(s) in {cache_dir} "
            f"({sum(s.nbytes for s in missing) / 2**30:.2f} GiB decoded, stored compressed; "
            "once per video version, --no-frame-cache to skip)"
        )
    with progress_bar("caching video frames", total) if progress else _no_bar() as bar:
        for src in missing:
            try:
                with _locked(cache_dir, src.entry.split("-")[0]):
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
def _no_bar() -> Iterator[_Silent]:
    yield _Silent()
