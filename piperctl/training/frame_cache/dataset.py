"""Serve LeRobotDataset items and batches from the frame cache: `CachedVideoDataset`, `collate`, `pick_frames`.

Only lerobot's `_query_videos` step is replaced (see the package docstring); the entries it reads are
built by `piperctl.training.frame_cache.store`.
"""

from __future__ import annotations

import copy
import functools
import mmap
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from piperctl.training.frame_cache.store import Frames, _Entry


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
        self._maps: dict[Path, Frames] = {}

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

    def _frames(self, path: Path) -> Frames:
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
            scratch = None if reader._return_uint8 else np.empty(cached.shape[1:], np.uint8)
            for dst, pick in zip(frames.view(len(picks), *cached.shape[1:]), picks, strict=True):
                if scratch is None:
                    cached.read_into(pick, dst.numpy())
                    continue
                cached.read_into(pick, scratch)
                dst.copy_(torch.from_numpy(scratch))
                # lerobot computes `uint8.type(float32) / 255`: the same cast and float32 division,
                # in place in the tensor returned (no intermediate float tensors).
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
