"""Samples/s a DataLoader delivers over lerobot's LeRobotDataset vs over piperctl's frame cache, side by side.

One synthesized video dataset (two 480x640 cameras by default), opened with delta_timestamps for a
16-step action chunk and an observation window of two frames per camera (diffusion-style), then of
one (ACT-style); for each, the same
DataLoader settings (workers, batch size, one shuffled order) over both datasets, alternately. Reports
the cache build time, steady-state samples/s of both, the ratio, the cache size on disk and the peak
memory of each loader (main process + workers), and checks that a sample of batches spread through
the order are bit-identical (every tensor `torch.equal`, same keys, dtypes and tasks).

    .venv/bin/python bench/loader_speed.py [--episodes 6] [--frames 60] [--size 480x640]
        [--workers 2] [--batch-size 8] [--batches 30] [--repeats 2] [--obs-frames 2,1]
        [--root DATASET]   # a local v3.0 video dataset (e.g. real footage) instead of a synthesized one

Also reports the cache's size on disk against the videos it replaces (goal of issue 22: <= 10x at
>= 2x lerobot's samples/s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "_work" / "loader"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_DATASETS_CACHE"] = str(WORK / "hf_datasets")
os.environ["HF_LEROBOT_HOME"] = str(WORK / "hf_lerobot")
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import torch  # noqa: E402


class PeakRss:
    """Peak memory of this process and its children (DataLoader workers), sampled every 100 ms.

    RSS counts pages shared between the processes (libraries, the cache's memory map, batches in
    shared memory) once per process; PSS splits each shared page between the processes mapping it.
    """

    def __init__(self) -> None:
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = pss = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    full = p.memory_full_info()
                except psutil.Error:
                    continue
                total += full.rss
                pss += full.pss
            self.peak = max(self.peak, total)
            self.peak_pss = max(self.peak_pss, pss)
            time.sleep(0.1)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def synth(episodes: int, frames: int, size: tuple[int, int]) -> Path:
    """The benchmark dataset, synthesized once per configuration and reused."""
    from piperctl.datasets.synth import SynthConfig, synthesize

    cfg = SynthConfig(
        episodes=episodes, frames=(frames, frames), cameras=["front", "wrist"], image_size=size, seed=11
    )
    tag = f"{episodes}x{frames}_{size[0]}x{size[1]}"
    root = WORK / f"ds_{tag}"
    if not (root / "meta" / "info.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        synthesize(root, cfg)
        print(f"synthesized {tag} in {time.perf_counter() - t0:.1f} s")
    return root


def loader(dataset, order: list[int], workers: int, batch_size: int):
    """The DataLoader both sides use: same order, workers, batch size and prefetch.

    Over the frame cache it fetches batches through `__getitems__` (torch does when a dataset has it)
    and collates with `frame_cache.collate`, as piperctl's trainer does.
    """
    from piperctl.training.frame_cache import CachedVideoDataset, collate

    return torch.utils.data.DataLoader(
        dataset,
        collate_fn=collate if isinstance(dataset, CachedVideoDataset) else None,
        sampler=order,
        batch_size=batch_size,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        drop_last=True,
    )


def timed(dataset, order: list[int], args) -> tuple[float, PeakRss]:
    """Steady-state samples/s over `args.batches` batches, after 2 warm-up batches (worker start-up)."""
    warmup = 2
    n = 0
    with PeakRss() as rss:
        it = iter(
            loader(dataset, order[: (args.batches + warmup) * args.batch_size], args.workers, args.batch_size)
        )
        for _ in range(warmup):
            next(it)
        t0 = time.perf_counter()
        for batch in it:
            n += len(batch["index"])
        elapsed = time.perf_counter() - t0
        del it
    return n / elapsed, rss


def same_batch(a: dict, b: dict) -> bool:
    """Bit-identical collated batches: same keys in the same order, same dtypes, equal tensors and tasks."""
    if list(a) != list(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            if not (
                isinstance(y, torch.Tensor)
                and x.dtype == y.dtype
                and x.shape == y.shape
                and torch.equal(x, y)
            ):
                return False
        elif x != y:
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", default="480x640")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=30, help="timed batches per run (after 2 warm-up batches)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each loader, alternating")
    ap.add_argument(
        "--obs-frames",
        default="2,1",
        help="frames per camera per sample, one measurement each (diffusion: 2, ACT: 1)",
    )
    ap.add_argument("--check-batches", type=int, default=6, help="batches compared bit for bit")
    ap.add_argument("--root", type=Path, help="a local LeRobot v3.0 dataset with videos to measure instead")
    args = ap.parse_args()
    h, w = (int(x) for x in args.size.lower().split("x"))

    from piperctl.quiet import quiet_third_party

    quiet_third_party()
    WORK.mkdir(parents=True, exist_ok=True)
    root = args.root.resolve() if args.root else synth(args.episodes, args.frames, (h, w))
    print(
        f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load average {os.getloadavg()[0]:.2f} at the start"
    )
    if args.root:
        info = json.loads((root / "meta" / "info.json").read_text())
        print(f"dataset: {root} ({info['total_episodes']} episodes, {info['total_frames']} frames)")
    else:
        print(f"dataset: {args.episodes} episodes x {args.frames} frames, 2 cameras {h}x{w} AV1")
    print(
        f"loader: {args.workers} workers, batch {args.batch_size}, {args.batches} timed batches x {args.repeats} runs each"
    )
    failed = False
    for n in (int(x) for x in args.obs_frames.split(",")):
        failed |= not measure(root, n, args)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    if failed:
        sys.exit("FAILED: batches differ")


def measure(root: Path, obs_frames: int, args) -> bool:
    """One side-by-side measurement with `obs_frames` frames per camera; whether the checked batches matched."""
    from piperctl.training.data import open_dataset
    from piperctl.training.frame_cache import FrameCache, cache_size_bytes

    info = json.loads((root / "meta" / "info.json").read_text())
    fps = info["fps"]
    cameras = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
    obs = [(i - obs_frames + 1) / fps for i in range(obs_frames)]
    delta = {
        **{key: obs for key in cameras},
        "observation.state": obs,
        "action": [(i - 1) / fps for i in range(16)],
    }
    plain = open_dataset("bench/loader", root, delta)
    cache_dir = WORK / "frame_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    t0 = time.perf_counter()
    cached = FrameCache.wrap(open_dataset("bench/loader", root, delta), cache_dir, progress=False)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = FrameCache.wrap(open_dataset("bench/loader", root, delta), cache_dir, progress=False)
    reuse_s = time.perf_counter() - t0
    on_disk = sum(p.stat().st_size for p in cache_dir.iterdir())
    videos = sum(p.stat().st_size for p in (root / "videos").rglob("*.mp4"))

    order = torch.randperm(len(plain), generator=torch.Generator().manual_seed(0)).tolist()
    need = (args.batches + 2) * args.batch_size
    order = (order * (need // len(order) + 1))[: max(need, len(order))]

    # Bit-identity first (untimed): batches spread through the shuffled order, from both loaders in lockstep.
    nb = len(order) // args.batch_size
    picks = sorted({round(i * (nb - 1) / max(1, args.check_batches - 1)) for i in range(args.check_batches)})
    check_order = [i for b in picks for i in order[b * args.batch_size : (b + 1) * args.batch_size]]
    checked = identical = 0
    for a, b in zip(
        loader(plain, check_order, args.workers, args.batch_size),
        loader(cached, check_order, args.workers, args.batch_size),
        strict=True,
    ):
        checked += 1
        identical += same_batch(a, b)

    results: dict[str, list[float]] = {"lerobot": [], "piperctl": []}
    peaks: dict[str, list[int]] = {"lerobot": [0, 0], "piperctl": [0, 0]}
    for _ in range(args.repeats):
        for name, ds in (("lerobot", plain), ("piperctl", cached)):
            rate, rss = timed(ds, order, args)
            results[name].append(rate)
            peaks[name] = [max(peaks[name][0], rss.peak), max(peaks[name][1], rss.peak_pss)]

    print(f"\n## {obs_frames} frame(s) per camera per sample ({len(plain)} samples)")
    print(
        f"cache: built in {build_s:.1f} s, reopened in {reuse_s:.2f} s, {on_disk / 2**20:.1f} MiB on disk "
        f"= {on_disk / videos:.1f}x the {videos / 2**20:.1f} MiB of videos "
        f"(decoded frames: {cache_size_bytes(plain) / 2**20:.0f} MiB, {cache_size_bytes(plain) / on_disk:.1f}x the cache)"
    )
    print(f"bit-identical batches: {identical}/{checked}")
    print("\n| loader | samples/s (median) | runs | peak RSS / PSS (main + workers) |")
    print("|---|---:|---|---:|")
    for name in ("lerobot", "piperctl"):
        runs = ", ".join(f"{r:.1f}" for r in results[name])
        rss, pss = (x / 2**30 for x in peaks[name])
        print(f"| {name} | {statistics.median(results[name]):.1f} | {runs} | {rss:.2f} / {pss:.2f} GiB |")
    ratio = statistics.median(results["piperctl"]) / statistics.median(results["lerobot"])
    print(f"\nratio piperctl / lerobot: {ratio:.2f}x (goal >= 2)")
    return identical == checked


if __name__ == "__main__":
    main()
