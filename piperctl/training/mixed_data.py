"""Several datasets served as one: a concatenated index space, each item renamed and converted to what the
policy sees, and the resumable orders over all of them.

Frame `i` of the mix is frame `i - offset[d]` of dataset `d` (offsets: the datasets' frame counts
added up), so lerobot's `EpisodeAwareSampler` orders the mix exactly as it orders one dataset: over
the concatenated episode boundaries, a pure function of (seed, epoch). One dataset without renames
or conversions is served as it is. `--dataset-weights` use `WeightedSampler`, also a pure function
of (seed, epoch), so that `DataOrder`'s (epoch, offset) stays the whole exact state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from piperctl.training.multi_dataset import Source


class ItemMap:
    """Turns one dataset's item into the policy's: features renamed (with their `_is_pad` masks), units converted."""

    def __init__(self, source: Source) -> None:
        self.rename = dict(source.rename)
        self.convert = {
            key: (torch.tensor(scale, dtype=torch.float32), torch.tensor(offset, dtype=torch.float32))
            for key, (scale, offset) in source.convert.items()
        }

    @property
    def identity(self) -> bool:
        """True when items pass unchanged."""
        return not self.rename and not self.convert

    def __call__(self, item: dict) -> dict:
        for old, new in self.rename.items():
            for suffix in ("", "_is_pad"):
                if old + suffix in item:
                    item[new + suffix] = item.pop(old + suffix)
        for key, (scale, offset) in self.convert.items():
            if key in item:
                item[key] = (item[key] * scale + offset).to(item[key].dtype)
        return item


class MixedDataset(torch.utils.data.Dataset):
    """The datasets of a run as one map-style dataset over their concatenated frames."""

    def __init__(self, parts: list[Any], maps: list[ItemMap]) -> None:
        self.parts = parts
        self.maps = maps
        self.offsets = np.cumsum([0, *(len(p) for p in parts)]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict:
        d = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.maps[d](self.parts[d][index - self.offsets[d]])


def mix(parts: list[Any], sources: list[Source]) -> Any:
    """The datasets as one; a single dataset whose items need no change is served as it is."""
    maps = [ItemMap(s) for s in sources]
    if len(parts) == 1 and maps[0].identity:
        return parts[0]
    return MixedDataset(parts, maps)


def offsets(sources: list[Source]) -> list[int]:
    """Where each dataset's frames start in the mix."""
    return np.cumsum([0, *(s.meta.total_frames for s in sources)]).tolist()


def _boundaries(sources: list[Source]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Every dataset's episode boundaries in the mix's index space, and the first mixed episode number of each."""
    starts, ends, first = [], [], []
    episodes = 0
    for s, off in zip(sources, offsets(sources), strict=False):
        starts.append(np.asarray(s.meta.episodes["dataset_from_index"], dtype=np.int64) + off)
        ends.append(np.asarray(s.meta.episodes["dataset_to_index"], dtype=np.int64) + off)
        first.append(episodes)
        episodes += len(starts[-1])
    return np.concatenate(starts), np.concatenate(ends), first


def episode_sampler(
    sources: list[Source],
    episodes: list[list[int]],
    shuffle: bool,
    seed: int,
    drop_n_last_frames: int = 0,
):
    """lerobot's episode-aware sampler over `episodes[d]` of every dataset d, in the mix's index space."""
    from lerobot.datasets.sampler import EpisodeAwareSampler

    starts, ends, first = _boundaries(sources)
    use = [first[d] + e for d, eps in enumerate(episodes) for e in eps]
    return EpisodeAwareSampler(
        starts.tolist(),
        ends.tolist(),
        episode_indices_to_use=use,
        drop_n_last_frames=drop_n_last_frames,
        shuffle=shuffle,
        seed=seed,
    )


class WeightedSampler:
    """Draws each position's dataset with probability weight / sum of weights; within a dataset, its training
    frames in an order shuffled anew each time they are used up. An epoch is as long as all training frames.

    A pure function of (seed, epoch), with `EpisodeAwareSampler`'s state interface (epoch, start_index).
    """

    def __init__(self, frames: list[list[int]], weights: list[float], seed: int) -> None:
        self.frames = [np.asarray(f, dtype=np.int64) for f in frames]
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.seed = seed
        self._epoch = 0
        self._start = 0

    def load_state_dict(self, state: dict) -> None:
        """Position the next `__iter__` at `start_index` of `epoch`."""
        self._epoch, self._start = state["epoch"], state["start_index"]

    def __len__(self) -> int:
        return sum(len(f) for f in self.frames)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's frames in mix indices."""
        g = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0])
        )
        n = len(self)
        choice = torch.multinomial(self.weights, n, replacement=True, generator=g).numpy()
        out = np.empty(n, dtype=np.int64)
        for d, frames in enumerate(self.frames):
            where = np.flatnonzero(choice == d)
            laps = -(-len(where) // len(frames))
            picks = [frames[torch.randperm(len(frames), generator=g).numpy()] for _ in range(laps)]
            out[where] = np.concatenate(picks)[: len(where)] if picks else []
        return out

    def __iter__(self) -> Iterator[int]:
        epoch, start = self._epoch, self._start
        self._epoch, self._start = epoch + 1, 0
        return iter(self.order(epoch)[start:].tolist())


def train_sampler(sources: list[Source], seed: int, drop_n_last_frames: int = 0):
    """The training order over every dataset's training episodes: by frame, or by --dataset-weights."""
    train = [s.train_episodes for s in sources]
    weights = [s.weight for s in sources]
    if any(w is None for w in weights):
        return episode_sampler(sources, train, True, seed, drop_n_last_frames)
    frames = [
        episode_sampler(
            sources, [eps if i == d else [] for i in range(len(sources))], False, seed, drop_n_last_frames
        ).indices
        for d, eps in enumerate(train)
    ]
    return WeightedSampler(frames, [float(w) for w in weights], seed)  # type: ignore[arg-type]
