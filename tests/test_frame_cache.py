"""The frame cache serves exactly what lerobot's LeRobotDataset serves, from frames decoded once."""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from piperctl.errors import PiperctlError
from piperctl.training.data import open_dataset
from piperctl.training.frame_cache import FrameCache, cache_size_bytes, collate, pick_frames, store
from piperctl.training.loading import isolated_rng

FPS = 30
FRONT, WRIST = "observation.images.front", "observation.images.wrist"
# Two frames of one camera (a diffusion-style observation window), one of the other, an action chunk.
DELTA = {
    FRONT: [-1 / FPS, 0.0],
    "observation.state": [-1 / FPS, 0.0],
    "action": [i / FPS for i in range(5)],
}


@pytest.fixture(scope="module")
def video_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two cameras in MP4, stored timestamps jittered off the frame times (matched within tolerance)."""
    from piperctl.datasets.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("fc") / "video"
    cfg = SynthConfig(
        episodes=3,
        frames=(10, 14),
        cameras=["front", "wrist"],
        image_size=(24, 32),
        seed=5,
        timestamp_jitter_s=5e-5,
    )
    return synthesize(out, cfg)


def _open(root: Path, delta: dict | None = DELTA):
    return open_dataset("local/fc", root, delta)


def assert_same(a: dict, b: dict) -> None:
    """Same keys in the same order, same dtypes and shapes, equal tensors, equal other values."""
    assert list(a) == list(b)
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor), key
            assert (x.dtype, x.shape) == (y.dtype, y.shape), key
            assert torch.equal(x, y), key
        else:
            assert x == y, key


def test_every_sample_equals_lerobots(video_ds: Path, tmp_path: Path) -> None:
    plain = _open(video_ds)
    cached = FrameCache.wrap(_open(video_ds), tmp_path / "cache", progress=False)
    assert len(cached) == len(plain)
    for i in range(len(plain)):
        assert_same(plain[i], cached[i])
    # The windows reach past both ends of episodes, so padded frames were compared too.
    pads = torch.stack([plain[i][f"{FRONT}_is_pad"] for i in range(len(plain))])
    assert pads.any() and not pads.all()
    assert cached[3][FRONT].shape == (2, 3, 24, 32) and cached[3][WRIST].shape == (3, 24, 32)
    # Every frame of both cameras decoded is this many bytes; the entries hold them compressed, in less.
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").glob("*.frames"))
    assert cache_size_bytes(plain) == 2 * len(plain) * 3 * 24 * 32
    assert 0 < on_disk < cache_size_bytes(plain) / 2


def test_a_damaged_entry_is_rebuilt_not_misread(video_ds: Path, tmp_path: Path) -> None:
    plain = _open(video_ds)
    FrameCache.wrap(_open(video_ds), tmp_path / "cache", progress=False)
    frames = sorted((tmp_path / "cache").glob("*.frames"))
    with open(frames[0], "r+b") as f:  # a cut-short entry, as a full disk or a crash elsewhere leaves it
        f.truncate(f.seek(0, 2) - 7)
    again = FrameCache.wrap(_open(video_ds), tmp_path / "cache", progress=False)
    for i in (0, len(plain) // 2, len(plain) - 1):
        assert_same(plain[i], again[i])


def test_batches_in_dataloader_workers(video_ds: Path, tmp_path: Path) -> None:
    plain = _open(video_ds)
    cached = FrameCache.wrap(_open(video_ds), tmp_path / "cache", progress=False)
    order = torch.randperm(len(plain), generator=torch.Generator().manual_seed(3)).tolist()
    expected = list(DataLoader(plain, sampler=order, batch_size=5, num_workers=0))
    with_collate = DataLoader(cached, sampler=order, batch_size=5, num_workers=2, collate_fn=collate)
    default = DataLoader(cached, sampler=order, batch_size=5, num_workers=2)
    for loader in (with_collate, default):
        got = list(loader)
        assert len(got) == len(expected)
        for a, b in zip(expected, got, strict=True):
            assert_same(a, b)


def test_collate_hands_over_the_batch_without_copying(video_ds: Path, tmp_path: Path) -> None:
    plain = _open(video_ds)
    cached = FrameCache.wrap(_open(video_ds), tmp_path / "cache", progress=False)
    rows = [0, 7, 20, 35]
    batch = cached.getitems(rows)
    out = collate(batch)
    assert_same(default_collate([plain[i] for i in rows]), out)
    # The frames were written into one batch tensor, which collate returns as it is.
    assert out[FRONT].data_ptr() == batch[0][FRONT].data_ptr()
    assert out[WRIST].data_ptr() == batch[0][WRIST].data_ptr()


def test_pickles_without_frames_for_spawned_workers(video_ds: Path, tmp_path: Path) -> None:
    plain = _open(video_ds)
    cached = FrameCache.wrap(_open(video_ds), tmp_path / "cache", progress=False)
    cached[0]  # opens the memory maps, which must not travel
    blob = pickle.dumps(cached)
    assert len(blob) < cache_size_bytes(plain)
    assert_same(plain[5], pickle.loads(blob)[5])


def test_second_wrap_reuses_the_cache_and_never_decodes(
    video_ds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    FrameCache.wrap(_open(video_ds), tmp_path / "cache", progress=False)
    plain = _open(video_ds)
    expected = [plain[i] for i in range(0, len(plain), 4)]

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded a video")

    monkeypatch.setattr(store, "_decode_into", no_decoding)
    monkeypatch.setattr("lerobot.datasets.dataset_reader.decode_video_frames", no_decoding)
    capsys.readouterr()
    cached = FrameCache.wrap(_open(video_ds), tmp_path / "cache", progress=True)
    for i, want in zip(range(0, len(plain), 4), expected, strict=True):
        assert_same(want, cached[i])
    # Where the cache lives and what it costs, said even when nothing had to be built.
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("frame cache:")]
    assert f"in {tmp_path / 'cache'}" in line and "MiB of compressed frames for" in line and "MiB, " in line


def test_a_changed_video_is_decoded_again(
    video_ds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "ds"
    shutil.copytree(video_ds, root)
    cache = tmp_path / "cache"
    FrameCache.wrap(_open(root), cache, progress=False)
    # Replace the front camera's video with the wrist camera's (same frames and timestamps, other pixels).
    front = next((root / "videos" / FRONT).rglob("*.mp4"))
    wrist = next((root / "videos" / WRIST).rglob("*.mp4"))
    shutil.copyfile(wrist, front)
    decoded: list[Path] = []
    real = store._decode_into

    def counting(path: Path, *args: object, **kwargs: object) -> list[float]:
        decoded.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(store, "_decode_into", counting)
    plain = _open(root)
    cached = FrameCache.wrap(_open(root), cache, progress=False)
    assert decoded == [front.resolve()]
    for i in range(len(plain)):
        assert_same(plain[i], cached[i])
    assert torch.equal(cached[4][FRONT][1], cached[4][WRIST])
    # The entry of the old front video is gone: one entry per video file.
    assert len(list(cache.glob("*.frames"))) == 2


def test_image_transforms_still_apply(video_ds: Path, tmp_path: Path) -> None:
    from lerobot.transforms.transforms import ImageTransforms, ImageTransformsConfig

    transforms = ImageTransforms(ImageTransformsConfig(enable=True, max_num_transforms=3))
    plain, inner = _open(video_ds), _open(video_ds)
    plain.set_image_transforms(transforms)
    inner.set_image_transforms(transforms)
    cached = FrameCache.wrap(inner, tmp_path / "cache", progress=False)
    untransformed = _open(video_ds)[6][WRIST]
    for i in (0, 6, 17):
        torch.manual_seed(i)
        a = plain[i]
        torch.manual_seed(i)
        assert_same(a, cached[i])
    assert not torch.equal(cached[6][WRIST], untransformed)
    # The batch path, each sample under its own seeded generators as the trainer loads them.
    rows = [1, 2, 3]
    batch = collate(cached.getitems(rows, around=lambda row: isolated_rng(100 + row)))
    expected = []
    for row, i in enumerate(rows):
        with isolated_rng(100 + row):
            expected.append(plain[i])
    assert_same(default_collate(expected), batch)


def test_frame_choice_is_lerobots_for_any_query(video_ds: Path, tmp_path: Path) -> None:
    """Arbitrary query times, ties halfway between frames included, pick the frame lerobot's decoder returns."""
    from lerobot.datasets.video_utils import FrameTimestampError, decode_video_frames_pyav

    ds = _open(video_ds, None)
    cached = FrameCache.wrap(ds, tmp_path / "cache", progress=False)
    path = next((video_ds / "videos" / FRONT).rglob("*.mp4")).resolve()
    entry = cached._entries[path]
    frames, ts = torch.from_numpy(entry.open()[:]), entry.timestamps
    rng = random.Random(0)
    queries = [[rng.uniform(0, ts[-1] + 0.02) for _ in range(3)] for _ in range(12)]
    queries += [[(ts[i] + ts[i + 1]) / 2] for i in (0, 5, 17)] + [[ts[0]], [ts[-1]], [ts[9], ts[3]]]
    for q in queries:
        want = decode_video_frames_pyav(path, q, tolerance_s=1.0)
        got = frames[pick_frames(ts, q, 1.0, path)].type(torch.float32) / 255
        assert torch.equal(want, got), q
    far = [ts[-1] + 1.0]
    with pytest.raises(FrameTimestampError):
        decode_video_frames_pyav(path, far, tolerance_s=1e-4)
    with pytest.raises(FrameTimestampError):
        pick_frames(ts, far, 1e-4, path)


def test_image_dataset_passes_through(tiny_cam_ds: Path, tmp_path: Path) -> None:
    ds = _open(tiny_cam_ds, None)
    assert FrameCache.wrap(ds, tmp_path / "cache", progress=False) is ds
    assert not (tmp_path / "cache").exists()
    assert cache_size_bytes(ds) == 0


def test_too_little_disk_space_is_one_clear_error(
    video_ds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 10**6))
    with pytest.raises(PiperctlError) as err:
        FrameCache.wrap(_open(video_ds), tmp_path / "cache", progress=False)
    assert str(tmp_path / "cache") in err.value.message and "--no-frame-cache" in (err.value.hint or "")
    assert not list((tmp_path / "cache").glob("*.frames"))


def test_two_video_datasets_train_from_a_cache_each_on_the_same_batches(tmp_path: Path) -> None:
    """`train --dataset A --dataset B` with the cache: one cache entry per dataset's video, the same samples."""
    from piperctl.datasets.synth import SynthConfig, synthesize
    from piperctl.training import build
    from piperctl.training.config import TrainConfig
    from piperctl.training.distributed import Dist
    from piperctl.training.frame_cache.dataset import CachedVideoDataset
    from piperctl.training.policy import make_policy_config
    from tests.conftest import TINY_ACT

    small = {"episodes": 2, "frames": (6, 8), "cameras": ["front"], "image_size": (24, 32)}
    a = synthesize(tmp_path / "lab", SynthConfig(**small, seed=1))
    b = synthesize(tmp_path / "home", SynthConfig(**small, seed=2, fps=15))  # another rate: its own frames
    policy_cfg = make_policy_config("act", "cpu", dict(TINY_ACT))
    options = {"dataset": [str(a), str(b)], "mixed_fps": "own-rate", "cache_dir": str(tmp_path / "cache")}
    split = build.open_split(TrainConfig.from_options(tmp_path / "run", None, options))
    cached, plain = (
        build.open_feed(
            TrainConfig.from_options(tmp_path / "run", None, {**options, "frame_cache": cache}),
            Dist(),
            "cpu",
            split,
            policy_cfg,
        )
        for cache in (True, False)
    )
    assert all(isinstance(p, CachedVideoDataset) for p in cached.dataset.parts)
    assert len(list((tmp_path / "cache").glob("*.frames"))) == 2  # each dataset's one video file
    # Every sample of both datasets is the same, so is every batch the loaders draw (hence every loss).
    frames = [json.loads((d / "meta" / "info.json").read_text())["total_frames"] for d in (a, b)]
    assert len(cached.dataset) == len(plain.dataset) == sum(frames)
    for i in range(len(plain.dataset)):
        assert_same(plain.dataset[i], cached.dataset[i])
