"""The resumable data order: seeded per-sample loading, the epoch sampler, and the DataLoader over them."""

from __future__ import annotations

import atexit
import itertools
import multiprocessing.util  # noqa: F401  (its exit hook first: ours, registered later, runs before it)
import random
import signal
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from piperctl.checkpoints.format import DataOrder
from piperctl.errors import PiperctlError
from piperctl.fs import first_line
from piperctl.training import frame_cache
from piperctl.training.rng import derive_seed


@contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch for a block, then put the caller's generator states back."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


class SeededDataset(torch.utils.data.Dataset):
    """Loads item `(epoch, index)` under generators seeded from (run seed, epoch, index).

    Any randomness in loading (image augmentations) is then a pure function of the data order: the
    same in a worker or the main process, with any number of workers, before and after a resume.
    """

    def __init__(
        self, dataset, seed: int, transform: Any = None, camera_keys: list[str] | tuple[str, ...] = ()
    ) -> None:
        self.dataset = dataset
        self.seed = seed
        self.transform = transform
        self.camera_keys = tuple(camera_keys)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict]:
        """A batch of items; a frame-cached dataset writes its frames straight into batch tensors."""
        getitems = getattr(self.dataset, "getitems", None)
        if getitems is None or self.transform is not None:
            return [self[k] for k in keys]

        def seeded(row: int) -> Any:
            epoch, index = keys[row]
            return isolated_rng(derive_seed(self.seed, epoch + 1, index))

        return getitems([index for _, index in keys], around=seeded)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        with isolated_rng(derive_seed(self.seed, epoch + 1, index)):
            item = self.dataset[index]
            if self.transform is not None:
                # As lerobot applies image_transforms: each camera's frame (or stack of frames).
                for cam in self.camera_keys:
                    if cam in item:
                        item[cam] = self.transform(item[cam])
            return item


class EpochSampler(torch.utils.data.Sampler):
    """Yields `(epoch, frame index)` from lerobot's EpisodeAwareSampler, from a saved position, for one rank.

    With several processes a global batch is `batch_size * world_size` consecutive positions of the
    epoch order and rank r takes its r-th `batch_size` of them, so the order (and a saved position, in
    global samples) is the same for any number of processes. For training (`drop_incomplete`) an
    epoch's incomplete last global batch is skipped, as DDP needs every rank to take a step; the next
    epoch is shuffled anew, so no frame is left out every time. One process keeps today's order exactly.
    """

    def __init__(
        self, inner, batch_size: int = 1, rank: int = 0, world_size: int = 1, drop_incomplete: bool = True
    ) -> None:
        self.inner = inner
        self.epoch = 0
        self.start = 0
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.drop_incomplete = drop_incomplete

    @property
    def global_batch(self) -> int:
        """Positions of the epoch order consumed by one step of all ranks together."""
        return self.batch_size * self.world_size

    def global_count(self, local: int) -> int:
        """Samples all ranks took in a step in which this rank took `local` (full batches if several)."""
        return local if self.world_size == 1 else self.global_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.inner.load_state_dict({"epoch": epoch, "start_index": self.start})
        if self.world_size == 1:
            for index in self.inner:
                yield epoch, index
            return
        order = iter(self.inner)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        while chunk := list(itertools.islice(order, self.global_batch)):
            if len(chunk) < self.global_batch and self.drop_incomplete:
                return
            for index in chunk[mine]:
                yield epoch, index

    def __len__(self) -> int:
        remaining = len(self.inner) - self.start
        if self.world_size == 1:
            return remaining
        full, tail = divmod(remaining, self.global_batch)
        n = full * self.batch_size
        if tail and not self.drop_incomplete:
            n += min(self.batch_size, max(0, tail - self.rank * self.batch_size))
        return n


def image_transforms(enabled: bool, config_file: str | None = None) -> Any:
    """lerobot's ImageTransforms (defaults, or the fields of a TOML/JSON file), or None when not enabled."""
    if not enabled:
        return None
    import draccus
    from lerobot.transforms.transforms import ImageTransforms, ImageTransformsConfig

    from piperctl.training.config import read_fields_file

    fields = read_fields_file(config_file, "--augment-config", "ImageTransformsConfig") if config_file else {}
    try:
        cfg = draccus.decode(ImageTransformsConfig, {**fields, "enable": True})
        return ImageTransforms(cfg)
    except Exception as e:  # noqa: BLE001 - draccus and torchvision raise many types for bad fields
        raise PiperctlError(
            f"--augment-config {config_file}: {first_line(e)}",
            hint="see lerobot's ImageTransformsConfig for the fields (max_num_transforms, tfs, ...)",
        ) from e


def make_sampler(meta, episodes: list[int], shuffle: bool, seed: int, drop_n_last_frames: int = 0):
    """lerobot's episode-aware sampler over `episodes`, shuffled per epoch from (seed, epoch)."""
    from lerobot.datasets.sampler import EpisodeAwareSampler

    return EpisodeAwareSampler(
        meta.episodes["dataset_from_index"],
        meta.episodes["dataset_to_index"],
        episode_indices_to_use=episodes,
        drop_n_last_frames=drop_n_last_frames,
        shuffle=shuffle,
        seed=seed,
    )


def make_loader(
    dataset,
    sampler: EpochSampler,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    transform: Any = None,
    camera_keys: list[str] | tuple[str, ...] = (),
):
    """A DataLoader over `(epoch, index)` keys; workers persist across epochs; `transform` augments cameras."""
    loader = torch.utils.data.DataLoader(
        SeededDataset(dataset, sampler.inner.seed, transform, camera_keys),
        collate_fn=frame_cache.collate,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
        # Without its own generator every iter(loader) draws a worker seed from the global torch RNG,
        # which would shift the training RNG stream on resume (SeededDataset makes that seed unused).
        generator=torch.Generator().manual_seed(sampler.inner.seed),
        worker_init_fn=_leave_signals_to_the_trainer if num_workers > 0 else None,
    )
    if num_workers > 0:
        _LOADERS_WITH_WORKERS.add(loader)
    return loader


def stop_workers(loader) -> None:
    """Shut down a DataLoader's persistent worker processes now (a no-op without workers)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        workers = list(getattr(iterator, "_workers", []))
        iterator._shutdown_workers()  # asks each worker to finish, waits up to 5 s
        for worker in workers:
            if worker.is_alive():  # stuck: it ignores SIGTERM, so torch's terminate() did nothing
                worker.kill()
                worker.join()
    loader._iterator = None


_LOADERS_WITH_WORKERS: weakref.WeakSet = weakref.WeakSet()


@atexit.register  # registered after multiprocessing's exit hook, so it runs before it
def _stop_all_workers() -> None:
    # multiprocessing's hook would SIGTERM the workers still alive at exit and join them; they ignore
    # SIGTERM, so a loader not closed on some path (an API user's, an early error) is stopped here.
    for loader in list(_LOADERS_WITH_WORKERS):
        stop_workers(loader)


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    """A DataLoader worker ignores SIGINT and SIGTERM: the trainer decides when its workers stop."""
    # Ctrl-C, `timeout`, SLURM and systemd signal the whole process group. A worker that died of it
    # made the trainer's next batch fail ("DataLoader worker ... is killed by signal") before it
    # could save; one that inherited the trainer's own handlers logged "saving a checkpoint".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def batches(loader, sampler: EpochSampler, position: DataOrder) -> Iterator[dict]:
    """Endless batches from `position`; updates `position` (in global samples) after each batch is handed out."""
    while True:
        sampler.epoch, sampler.start = position.epoch, position.offset
        for batch in loader:
            position.offset += sampler.global_count(len(batch["index"]))
            yield batch
        position.epoch += 1
        position.offset = 0
