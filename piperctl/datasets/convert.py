"""`piperctl dataset convert`: LeRobot v2.1 -> v3.0 on lerobot's own converter functions, never touching SRC.

lerobot's `convert_dataset_v21_to_v30.convert_dataset` renames the source folder in place; its building
blocks (`convert_info`, `convert_tasks`, `convert_data`, `convert_videos`, the episode-metadata helpers)
read a `root` and write a `new_root`, so piperctl calls them with SRC as the read-only root and a staging
folder beside OUT as the new root, then renames the finished dataset into place.
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from piperctl import hub
from piperctl.console import Bar, log, progress_bar
from piperctl.datasets import inspect as dsi
from piperctl.defaults import TOLERANCE_S
from piperctl.errors import PiperctlError
from piperctl.fs import TMP_PREFIX, prepare_out_folder, publish_folder

RETIME_NOTE = "piperctl"  # key under features.timestamp in OUT's meta/info.json


@dataclass
class ConvertResult:
    """What `convert` wrote."""

    out: Path
    source_version: str
    episodes: int
    frames: int
    cameras: list[str] = field(default_factory=list)
    retimed: bool = False


def resolve_source(src: str | Path) -> Path:
    """A local dataset folder for SRC: the folder itself, or a Hub dataset id downloaded to the HF cache."""
    source = hub.local_or_repo_id(src)
    if isinstance(source, Path):
        if not source.exists():
            raise PiperctlError(
                f"{src}: no such dataset folder", hint="check the path, or give a Hub id owner/name"
            )
        if not source.is_dir():
            raise PiperctlError(
                f"{src} is a file, not a dataset folder", hint="pass the dataset's root folder"
            )
        return source
    if hub.offline():
        raise PiperctlError(
            f"{src} is not a local folder and the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)",
            hint="download it where you are online, or pass the local folder",
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, repo_type="dataset"))
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises many types; the user needs one line
        raise PiperctlError(
            f"cannot download dataset {src} from the Hub: {type(e).__name__}: {e}",
            hint="check the id and your connection, or pass a local folder",
        ) from e


def _check_legacy_layout(src: Path, info: dict) -> None:
    """lerobot's converter pairs files with episodes by sorted position: SRC must hold exactly what meta lists."""
    from piperctl.datasets.legacy import legacy_episodes, legacy_files

    for name in ("episodes.jsonl", "episodes_stats.jsonl", "tasks.jsonl"):
        if not (src / "meta" / name).is_file():
            raise PiperctlError(f"{src} lacks meta/{name}", hint="restore it from the dataset's source")
    indices = [int(e["episode_index"]) for e in legacy_episodes(src)]
    if indices != list(range(len(indices))):
        gap = next(i for i, e in enumerate(indices) if e != i)
        raise PiperctlError(
            f"{src}/meta/episodes.jsonl does not number its episodes 0..{len(indices) - 1} (no episode {gap})",
            hint="renumber the episodes before converting",
        )
    files = legacy_files(src, info)
    missing = dsi.missing_files(src)
    if missing:
        raise PiperctlError(
            dsi.missing_files_message(src, missing),
            hint="restore the files before converting (nothing was written)",
        )
    found = {"data": sorted(str(p.relative_to(src)) for p in src.glob("data/*/*.parquet"))}
    for key in files:
        if key != "data":
            found[key] = sorted(str(p.relative_to(src)) for p in src.glob(f"videos/*/{key}/*.mp4"))
    for key, paths in files.items():
        extra = sorted(set(found[key]) - set(paths))
        if extra:
            raise PiperctlError(
                f"{src} holds {extra[0]}, which meta/episodes.jsonl does not list",
                hint="move files of removed episodes out of the dataset before converting",
            )


@contextmanager
def _lerobot_progress(module: object, bar: Bar) -> Iterator[None]:
    """Route the converter's per-episode tqdm loops into our progress bar (and keep tqdm off the terminal)."""

    def tracked(iterable, desc: str = "", **_: object):
        counted = desc.startswith(("convert data files", "convert videos of"))
        for item in iterable:
            yield item
            if counted:
                bar.update(1)

    saved = module.tqdm
    module.tqdm = SimpleNamespace(tqdm=tracked)
    # Reading a v2.1 info.json makes lerobot warn about its legacy keys (total_chunks, total_videos),
    # which is exactly what this conversion removes.
    utils_log = logging.getLogger("lerobot.datasets.utils")
    level = utils_log.level
    utils_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        module.tqdm = saved
        utils_log.setLevel(level)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the staging folder is cleaned up when a job is killed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ANN001 - signal handler signature
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _convert_v21(src: Path, new_root: Path, bar: Bar) -> None:
    import av.logging
    from datasets import Dataset
    from lerobot.datasets import aggregate_stats
    from lerobot.datasets.io_utils import write_episodes, write_stats
    from lerobot.datasets.utils import DEFAULT_DATA_FILE_SIZE_IN_MB, DEFAULT_VIDEO_FILE_SIZE_IN_MB
    from lerobot.scripts import convert_dataset_v21_to_v30 as conv

    # lerobot's encoders restore FFmpeg's default logger, which prints muxer notes ("moving the moov
    # atom") straight to stderr while videos are concatenated.
    av.logging.set_level(av.logging.ERROR)
    with _lerobot_progress(conv, bar):
        conv.convert_info(src, new_root, DEFAULT_DATA_FILE_SIZE_IN_MB, DEFAULT_VIDEO_FILE_SIZE_IN_MB)
        conv.convert_tasks(src, new_root)
        episodes_metadata = conv.convert_data(src, new_root, DEFAULT_DATA_FILE_SIZE_IN_MB)
        videos_metadata = conv.convert_videos(src, new_root, DEFAULT_VIDEO_FILE_SIZE_IN_MB)
    # conv.convert_episodes_metadata, except that the rows go through Dataset.from_list: no Arrow
    # cache in the user's HF cache (nothing left behind, no stale entry reused) and no dill hashing of
    # the generator, which costs more than the conversion of a small dataset.
    legacy = conv.legacy_load_episodes(src)
    stats = conv.legacy_load_episodes_stats(src)
    counts = {len(legacy), len(episodes_metadata)} | ({len(videos_metadata)} if videos_metadata else set())
    if len(counts) != 1:
        raise PiperctlError(f"{src}: episodes in meta, data and videos differ in number ({sorted(counts)})")
    rows = list(conv.generate_episode_metadata_dict(legacy, episodes_metadata, stats, videos_metadata))
    ds = Dataset.from_list(rows)
    write_episodes(ds, new_root)
    write_stats(aggregate_stats(list(stats.values())), new_root)
    bar.update(1)


def _copy_tree(src: Path, dst: Path) -> None:
    # Plain copies (no hard links): OUT must never share an inode with the user's SRC.
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".cache", f"{TMP_PREFIX}*"))


def _mark_retimed(root: Path, source_version: str, tolerance_s: float) -> None:
    import json

    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    # A note inside the timestamp feature: lerobot keeps unknown feature keys silently, while an
    # unknown top-level info.json key makes it log a warning on every load.
    info["features"]["timestamp"][RETIME_NOTE] = {
        "retimed": "timestamp = frame_index / fps",
        "retimed_from": f"the stored timestamps of the {source_version} source (not frame_index / fps)",
        "checked": f"every video holds one frame per data row at frame_index / fps (tolerance {tolerance_s:g} s)",
    }
    path.write_text(json.dumps(info, indent=4))


def convert(
    src: str | Path,
    out: str | Path,
    *,
    retime: bool = False,
    tolerance_s: float = TOLERANCE_S,
    force: bool = False,
) -> ConvertResult:
    """Convert the LeRobot v2.1 dataset SRC (folder or Hub id) to v3.0 at OUT; with `retime`, also fix timestamps.

    SRC is only read. The result is built in a `.piperctl-tmp-*` folder beside OUT and renamed into
    place, so an interrupted conversion leaves neither OUT nor the temporary folder behind.
    """
    out = Path(out)
    src_path = resolve_source(src)
    prepare_out_folder(out, force, inside=src_path)
    info = dsi.read_info(src_path)
    version = info.get("codebase_version")
    if version == dsi.CURRENT and not retime:
        raise PiperctlError(
            f"{src} is already LeRobot {version}: nothing to convert",
            hint="train on it directly, or add --retime to rewrite its timestamps as frame_index / fps",
        )
    if version not in (dsi.CURRENT, dsi.CONVERTIBLE):
        raise PiperctlError(
            f"{src} is LeRobot {version}; piperctl converts {dsi.CONVERTIBLE} (and repairs {dsi.CURRENT})",
            hint="bring it to v2.1 with lerobot's own scripts first",
        )
    if version == dsi.CONVERTIBLE:
        _check_legacy_layout(src_path, info)
    else:
        dsi.require_files(src_path, hint="restore the files before converting (nothing was written)")
    fps = float(info["fps"])
    video_keys = [k for k, ft in info["features"].items() if ft.get("dtype") == "video"]
    if not retime:
        off = dsi.check_timestamps(src_path, fps, tolerance_s)
        if off is not None:
            # Converted as asked, but lerobot will refuse these timestamps when it loads the result.
            log(
                f"warning: {src}: {off.summary()}; lerobot refuses such timestamps when loading "
                "— convert with --retime to rewrite them as frame_index / fps"
            )

    from piperctl.quiet import quiet_third_party

    quiet_third_party()
    if retime:
        n_files = sum(len(v) for k, v in dsi.expected_files(src_path).items() if k != "data")
        with progress_bar("checking videos (one frame per row)", n_files) as bar:
            bad = dsi.check_video_frames(src_path, fps, tolerance_s, on_file=lambda: bar.update(1))
        if bad is not None:
            raise PiperctlError(
                f"cannot retime {src}: {bad.message()}",
                hint="--retime only rewrites timestamps of videos that hold exactly one frame per row",
            )

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}-", dir=out.parent))
    new_root = staging / "dataset"
    n_eps = int(info.get("total_episodes") or 0)
    try:
        with _terminate_as_interrupt():
            if version == dsi.CONVERTIBLE:
                total = n_eps * (1 + len(video_keys)) + 1 + int(retime)
                with progress_bar(f"converting {src_path.name} to v3.0", total) as bar:
                    _convert_v21(src_path, new_root, bar)
                    if retime:
                        _retime(new_root, fps, version, tolerance_s)
                        bar.update(1)
            else:
                with progress_bar(f"retiming {src_path.name}", 2) as bar:
                    _copy_tree(src_path, new_root)
                    bar.update(1)
                    _retime(new_root, fps, version, tolerance_s)
                    bar.update(1)
            publish_folder(new_root, out, staging)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise PiperctlError(
            f"converting {src} to {out} failed: {e.strerror or e}{where}",
            hint="check free space and permissions; OUT was left as it was",
        ) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    final = dsi.read_info(out)
    return ConvertResult(
        out=out,
        source_version=str(version),
        episodes=int(final.get("total_episodes") or 0),
        frames=int(final.get("total_frames") or 0),
        cameras=[dsi.camera_name(k) for k in dsi.camera_keys(final)],
        retimed=retime,
    )


def _retime(root: Path, fps: float, source_version: str, tolerance_s: float) -> None:
    from piperctl.datasets.timestamps import frame_index_over_fps, rewrite_timestamps

    rewrite_timestamps(root, frame_index_over_fps(fps))
    _mark_retimed(root, source_version, tolerance_s)
