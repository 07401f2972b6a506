"""Decode each camera video once into an on-disk uint8 frame cache, then serve LeRobotDataset items from it.

`FrameCache.wrap(dataset, cache_dir)` returns a dataset whose items equal `dataset[i]` bit for bit
(same keys, dtypes, delta-timestamp windows, `*_is_pad` masks, image transforms) for datasets read
with lerobot's PyAV backend, without decoding video per sample. Everything that is not a video frame
still comes from lerobot's own `DatasetReader.get_item`: only its `_query_videos` step is replaced,
by a lookup that picks the frame lerobot's PyAV decoder would pick for each query timestamp.

One cache entry per video file: `<cache_dir>/<entry>.frames` (raw uint8 N x C x H x W, read through
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
import mmap
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from piperctl.console import log, progress_bar
from piperctl.errors import PiperctlError, from_os_error
from piperctl.fs import TMP_PREFIX, atomic_replace, atomic_write

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

    def open(self) -> np.ndarray:
        """The frames as a read-only-in-practice memory map (copy-on-write: torch wants writable arrays)."""
        return np.memmap(self.frames_path, dtype=np.uint8, mode="c", shape=self.shape)


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
        on_disk = frames_path.stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(shape) != 4 or on_disk != int(np.prod(shape)) or len(ts) != shape[0]:
        return None
    return _Entry(frames_path, ts, shape)  # type: ignore[arg-type]


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
) -> list[float]:
    """Decode every frame of a video as lerobot's PyAV path does (rgb24, CHW), appending them to `out`; their timestamps."""
    import av

    c, h, w = shape
    timestamps: list[float] = []
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
            out.write(np.ascontiguousarray(arr.transpose(2, 0, 1)).data)
            timestamps.append(float(frame.pts * stream.time_base))
            on_frame()
    if not timestamps:
        raise PiperctlError(
            f"{path} holds no video frames", hint="the video is damaged: copy or re-record it"
        )
    return timestamps


def _write_entry(cache_dir: Path, src: _Source, on_frame: Callable[[], None]) -> _Entry:
    """Decode `src` into a new entry (frames file first, JSON last); remove older entries of the same file."""
    frames_path, meta_path = _paths(cache_dir, src.entry)
    who = src.entry.split("-")[0]
    # Under the lock, temp files of this video can only be left by a builder that died.
    for stale in cache_dir.glob(f"{TMP_PREFIX}{who}-*"):
        stale.unlink(missing_ok=True)
    timestamps: list[float] = []

    def decode(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            timestamps.extend(_decode_into(src.path, src.shape, f, on_frame))

    atomic_replace(frames_path, decode)
    shape = (len(timestamps), *src.shape)
    info = {
        "format": FORMAT_VERSION,
        "source": str(src.path),
        "size": src.size,
        "mtime_ns": src.mtime_ns,
        "shape": list(shape),
        "timestamps": timestamps,
    }
    atomic_write(meta_path, json.dumps(info))
    for old in cache_dir.glob(f"{who}-*"):
        if old.name not in (frames_path.name, meta_path.name):
            old.unlink(missing_ok=True)
    return _Entry(frames_path, timestamps, shape)  # type: ignore[arg-type]


def _require_space(cache_dir: Path, missing: list[_Source]) -> None:
    need = sum(s.nbytes for s in missing)
    free = shutil.disk_usage(cache_dir).free
    if need + _HEADROOM_BYTES > free:
        raise PiperctlError(
            f"the frame cache needs {need / 2**30:.1f} GiB in {cache_dir} and only {free / 2**30:.1f} GiB is free",
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
            f"({sum(s.nbytes for s in missing) / 2**30:.2f} GiB; once per video version, --no-frame-cache to skip)"
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


# ------------------------------------------------------------------------------------------------
# Serving


class _Columns:
    """A reader's hf_dataset as one tensor per column, answering the three lookups `get_item` makes.

    The rows are lerobot's own (built through the dataset's torch transform, chunk by chunk), so the
    values and dtypes are the same; what goes away is the Arrow slicing and format copying that
    `datasets` does on every lookup (about 2 ms of a sample's 8 ms once frames come from the cache).
    """

    def __init__(self, names: list[str], columns: dict[str, torch.Tensor]) -> None:
        self.names = names
        self.columns = columns

    @classmethod
    def of(cls, hf_dataset: Any, chunk: int = 16384) -> _Columns | None:
        """The columns of `hf_dataset`, or None if one does not stack into a tensor (images, text)."""
        names = list(hf_dataset.column_names)
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        for start in range(0, len(hf_dataset), chunk):
            batch = hf_dataset[start : start + chunk]
            for name in names:
                values = batch[name]
                if not all(isinstance(v, torch.Tensor) for v in values):
                    return None
                try:
                    parts[name].append(torch.stack(values))
                except RuntimeError:  # ragged lists
                    return None
        if not all(parts.values()):
            return None
        return cls(names, {n: torch.cat(p) for n, p in parts.items()})

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return _Column(self.columns[key])
        if isinstance(key, int):
            # Own storage, as a datasets row has: a view would drag the whole column through pickling.
            return {n: self.columns[n][key].clone() for n in self.names}
        return {n: list(self.columns[n][list(key)].unbind(0)) for n in self.names}


class _Column:
    def __init__(self, values: torch.Tensor) -> None:
        self.values = values

    def __getitem__(self, rows: list[int]) -> list[torch.Tensor]:
        return list(self.values[list(rows)].unbind(0))


class _Sink:
    """One tensor per camera for a whole batch; `getitems` writes each sample's frames into its row.

    In a DataLoader worker the tensors live in shared memory, as default_collate's would, so `collate`
    hands them over as the batch without the copy that stacking per-sample tensors costs (for two
    480x640 cameras, most of what serving a sample costs once the frames come from the cache).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.tensors: dict[str, torch.Tensor] = {}
        # The row tensors handed out, to know at collate time that nothing replaced them (a transform).
        self.handed: dict[str, dict[int, torch.Tensor]] = {}

    def row(self, key: str, shape: tuple[int, ...], dtype: torch.dtype, row: int) -> torch.Tensor | None:
        """The row of `key`'s batch tensor for a sample of `shape`, or None if it cannot hold one."""
        batch = self.tensors.get(key)
        if batch is None:
            batch = _batch_tensor((self.size, *shape), dtype)
            self.tensors[key] = batch
            self.handed[key] = {}
        if batch.shape[1:] != shape or batch.dtype != dtype:
            return None
        out = batch[row]
        self.handed[key][row] = out
        return out

    def whole(self, key: str, values: list) -> torch.Tensor | None:
        """`key`'s batch tensor if `values` are exactly the rows handed out for it, in order."""
        handed = self.handed.get(key)
        if handed is None or len(values) != self.size or len(handed) != self.size:
            return None
        if all(values[i] is handed.get(i) for i in range(self.size)):
            return self.tensors[key]
        return None


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor; in shared memory inside a DataLoader worker, the way default_collate allocates."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    elem = torch.empty(0, dtype=dtype)
    storage = elem._typed_storage()._new_shared(int(np.prod(shape)), device=elem.device)
    out = elem.new(storage).resize_(*shape)
    _prefault(out)
    return out


# madvise(MADV_POPULATE_WRITE), Linux 5.14+: map every page of a range in one system call.
_MADV_POPULATE_WRITE = 23


@functools.cache
def _madvise() -> Any:
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return fn


def _prefault(t: torch.Tensor) -> None:
    """Map a fresh shared-memory tensor's pages at once rather than one page fault per 4 KiB written.

    Measured here: about 8 % of the cost of serving a two-camera 480x640 sample. Where the call is
    unknown (older kernels, other systems) it fails and the pages fault in as usual.
    """
    madvise = _madvise()
    if madvise is None or sys.platform != "linux":
        return
    page = mmap.PAGESIZE
    start = -(-t.data_ptr() // page) * page
    end = (t.data_ptr() + t.nbytes) // page * page
    if end > start:
        madvise(start, end - start, _MADV_POPULATE_WRITE)


class Batch(list):
    """Samples from `CachedVideoDataset.getitems`: a list of items, plus the batch tensors their frames are rows of."""

    def __init__(self, items: list[dict], sink: _Sink | None) -> None:
        super().__init__(items)
        self.sink = sink


def collate(batch: list) -> Any:
    """torch's default_collate, except that frames `getitems` already wrote into one batch tensor are not copied."""
    from torch.utils.data import default_collate

    sink = getattr(batch, "sink", None)
    if sink is None or not batch or not isinstance(batch[0], dict):
        return default_collate(batch)
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        whole = sink.whole(key, values)
        out[key] = whole if whole is not None else default_collate(values)
    return out


class CachedVideoDataset(torch.utils.data.Dataset):
    """A LeRobotDataset whose video frames come from the frame cache; items equal the dataset's bit for bit.

    Build it with `FrameCache.wrap`. `dataset[i]` is one sample; `getitems` (and `__getitems__`, which
    a DataLoader calls when it exists) a batch whose frames `collate` hands over without copying.
    Pickles without its memory maps (DataLoader workers, fork or spawn, open their own). Attributes it
    does not have are read from the wrapped dataset.
    """

    def __init__(
        self,
        dataset: Any,
        entries: dict[Path, _Entry],
        where: dict[tuple[str, int], tuple[Path, float]],
        columns: _Columns | None,
    ) -> None:
        self.dataset = dataset
        self._columns = columns
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
        if name.startswith("__") or name in ("dataset", "_entries", "_where", "_maps", "_columns"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, idx: int | slice) -> dict | list[dict]:
        if isinstance(idx, slice):
            return [self[i] for i in range(*idx.indices(len(self)))]
        return self._get(int(idx), None, 0)

    def getitems(
        self, indices: list[int], around: Callable[[int], AbstractContextManager] | None = None
    ) -> Batch:
        """Samples `indices` (as `dataset[i]` each), the i-th loaded inside `around(i)` if given (e.g. seeded RNGs)."""
        reader = self.dataset._ensure_reader()
        # Transformed frames are new tensors that collate must copy anyway: no batch tensors then.
        sink = _Sink(len(indices)) if reader._image_transforms is None else None
        items = []
        for row, idx in enumerate(indices):
            with around(row) if around is not None else nullcontext():
                items.append(self._get(int(idx), sink, row))
        return Batch(items, sink)

    def __getitems__(self, indices: list[int]) -> Batch:
        return self.getitems(indices)

    def _get(self, idx: int, sink: _Sink | None, row: int) -> dict:
        reader = self.dataset._ensure_reader()
        if reader.hf_dataset is None:
            reader.load_and_activate()
        # lerobot's own get_item on a shallow copy of its reader, with only the video step swapped:
        # the state, action, padding, transforms and task code paths stay lerobot's.
        view = copy.copy(reader)
        view._query_videos = functools.partial(self._query_videos, reader, sink, row)
        if self._columns is not None and len(self._columns) == len(reader.hf_dataset):
            view.hf_dataset = self._columns
        return view.get_item(idx)

    def _frames(self, path: Path) -> np.ndarray:
        arr = self._maps.get(path)
        if arr is None:
            arr = self._maps[path] = self._entries[path].open()
        return arr

    def _query_videos(
        self, reader: Any, sink: _Sink | None, row: int, query_timestamps: dict[str, list[float]], ep_idx: int
    ) -> dict:
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
            cached = self._frames(path)
            # lerobot returns (T, C, H, W) squeezed on its first dimension.
            shape = tuple(cached.shape[1:]) if len(picks) == 1 else (len(picks), *cached.shape[1:])
            dtype = torch.uint8 if reader._return_uint8 else torch.float32
            frames = sink.row(key, shape, dtype, row) if sink is not None else None
            if frames is None:
                frames = torch.empty(shape, dtype=dtype)
            for dst, pick in zip(frames.view(len(picks), *cached.shape[1:]), picks, strict=True):
                src = torch.from_numpy(cached[pick])
                dst.copy_(src)
                if not reader._return_uint8:
                    # lerobot computes `uint8.type(float32) / 255`: the same cast and float32 division,
                    # in place in the tensor returned (no intermediate uint8 or float tensors).
                    dst.div_(255)
            out[key] = frames
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
    lo = max(0, bisect_right(timestamps, first) - 1)
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
        sources = _sources(dataset)
        entries = build(dataset, cache_dir, progress=progress, sources=sources)
        starts = {key: meta.episodes[f"videos/{key}/from_timestamp"] for key in _cached_keys(meta)}
        where = {(key, ep): (src.path, starts[key][ep]) for (key, ep), src in sources.items()}
        return CachedVideoDataset(dataset, entries, where, _Columns.of(dataset.hf_dataset))

    size_bytes = staticmethod(cache_size_bytes)
