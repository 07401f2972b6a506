"""Checks of a local LeRobot dataset folder that `train` and `dataset convert` run before any heavy work.

Each function reads only metadata or the few columns it needs. Findings come back as small frozen
dataclasses with a one-line `message()`; the `require_*` variants raise PiperctlError with that line.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from piperctl.defaults import TOLERANCE_S
from piperctl.errors import PiperctlError

CAMERA_PREFIX = "observation.images."
CONVERTIBLE = "v2.1"
CURRENT = "v3.0"


def read_info(root: str | Path) -> dict:
    """meta/info.json of the dataset at `root` as a dict."""
    root = Path(root)
    path = root / "meta" / "info.json"
    if not root.is_dir():
        raise PiperctlError(f"{root}: no such dataset folder", hint="check the path")
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise PiperctlError(
            f"{root} is not a LeRobot dataset (no meta/info.json)",
            hint="pass the dataset's root folder (the one holding meta/, data/ and videos/)",
        ) from None
    except (OSError, ValueError) as e:
        raise PiperctlError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from e
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise PiperctlError(f"{path} is not a LeRobot info.json (no features)")
    return info


def dataset_version(root: str | Path) -> str:
    """The LeRobot codebase version of the dataset at `root`, e.g. "v2.1" or "v3.0"."""
    version = read_info(root).get("codebase_version")
    if not isinstance(version, str) or not version:
        raise PiperctlError(f"{Path(root) / 'meta' / 'info.json'} names no codebase_version")
    return version


def convert_command(root: str | Path, out: str | Path | None = None, retime: bool = False) -> str:
    """The exact `piperctl dataset convert ROOT OUT` command line (OUT: ROOT_v30 beside a v2.1 root, ROOT_retimed beside a v3.0 one)."""
    root = Path(root)
    if out is None:
        try:
            already_v30 = read_info(root).get("codebase_version") == CURRENT
        except PiperctlError:
            already_v30 = False
        out = root.parent / f"{root.name}_{'retimed' if already_v30 else 'v30'}"
    out = Path(out)
    cmd = f"piperctl dataset convert {shlex.quote(str(root))} {shlex.quote(str(out))}"
    return cmd + (" --retime" if retime else "")


def require_v30(root: str | Path) -> None:
    """Raise, with the convert command where one exists, unless `root` is a LeRobot v3.0 dataset."""
    version = dataset_version(root)
    if version == CURRENT:
        return
    if version == CONVERTIBLE:
        # Wall-clock timestamps are common in v2.1 recordings: the command must fix them too.
        retime = check_timestamps(root) is not None
        raise PiperctlError(
            f"{root} is a LeRobot {version} dataset; piperctl trains on {CURRENT}"
            + (" (and its timestamps are not frame_index / fps)" if retime else ""),
            hint=f"convert it once with: {convert_command(root, retime=retime)}",
        )
    raise PiperctlError(
        f"{root} is a LeRobot {version} dataset; piperctl reads {CURRENT} and converts {CONVERTIBLE}",
        hint="convert it to v2.1 with lerobot's own scripts first",
    )


# ---------------------------------------------------------------------------------------------
# Cameras


def camera_keys(info: dict) -> list[str]:
    """Image and video feature keys declared in an info.json dict, in declaration order."""
    return [k for k, ft in info["features"].items() if ft.get("dtype") in ("video", "image")]


def camera_name(key: str) -> str:
    """Short camera name of a feature key: observation.images.top -> top."""
    return key.removeprefix(CAMERA_PREFIX)


def select_cameras(root: str | Path, cameras: str | Sequence[str] | None) -> list[str]:
    """Feature keys of the requested cameras (names like `front` or full keys; None or "all" = all)."""
    keys = camera_keys(read_info(root))
    if cameras is None or cameras == "all":
        return keys
    names = [c.strip() for c in cameras.split(",")] if isinstance(cameras, str) else list(cameras)
    names = [n for n in names if n]
    by_name = {camera_name(k): k for k in keys} | {k: k for k in keys}
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        available = ", ".join(camera_name(k) for k in keys) or "none"
        raise PiperctlError(
            f"{root} has no camera {', '.join(unknown) or '(empty list)'}",
            hint=f"choose from: {available}",
        )
    return list(dict.fromkeys(by_name[n] for n in names))


# ---------------------------------------------------------------------------------------------
# Files that metadata promises


@dataclass(frozen=True)
class MissingFiles:
    """Files of one kind (data parquet, or one camera's videos) that metadata lists but the folder lacks."""

    key: str  # "data" or a video feature key
    missing: int
    total: int
    first: str  # relative path of the first missing file

    def message(self) -> str:
        """One clause, e.g. "camera top: 2 of 8 video files missing, first: videos/...mp4"."""
        what = "data" if self.key == "data" else f"camera {camera_name(self.key)}"
        kind = "parquet" if self.key == "data" else "video"
        return f"{what}: {self.missing} of {self.total} {kind} files missing, first: {self.first}"


def expected_files(root: str | Path, cameras: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Relative data and video paths the metadata of `root` (v2.1 or v3.0) says exist, by key."""
    from piperctl.datasets.legacy import legacy_files

    root = Path(root)
    info = read_info(root)
    version = info.get("codebase_version")
    if version == CONVERTIBLE:
        if not (root / "meta" / "episodes.jsonl").is_file():
            raise PiperctlError(
                f"{root} lacks meta/episodes.jsonl", hint="restore it from the dataset's source"
            )
        files = legacy_files(root, info)
    else:
        files = _v30_files(root, info)
    if cameras is not None:
        files = {k: v for k, v in files.items() if k == "data" or k in cameras}
    return files


def _v30_files(root: Path, info: dict) -> dict[str, list[str]]:
    import polars as pl

    episodes = sorted(root.glob("meta/episodes/*/*.parquet"))
    if not episodes:
        raise PiperctlError(f"{root} lacks meta/episodes/", hint="restore it from the dataset's source")
    video_keys = [k for k, ft in info["features"].items() if ft.get("dtype") == "video"]
    cols = {"data": ("data/chunk_index", "data/file_index")}
    cols |= {k: (f"videos/{k}/chunk_index", f"videos/{k}/file_index") for k in video_keys}
    wanted = [c for pair in cols.values() for c in pair]
    try:
        frame = pl.scan_parquet(episodes, glob=False).select(wanted).unique(maintain_order=True).collect()
    except Exception as e:  # noqa: BLE001 - polars raises several types for missing columns / bad files
        raise PiperctlError(
            f"cannot read the file indices in {root}/meta/episodes: {type(e).__name__}: {e}"
        ) from e
    files: dict[str, list[str]] = {}
    for key, (chunk, file) in cols.items():
        pairs = frame.select(chunk, file).unique(maintain_order=True).sort(chunk, file).rows()
        if key == "data":
            files[key] = [info["data_path"].format(chunk_index=c, file_index=f) for c, f in pairs]
        else:
            files[key] = [
                info["video_path"].format(video_key=key, chunk_index=c, file_index=f) for c, f in pairs
            ]
    return files


def missing_files(root: str | Path, cameras: Sequence[str] | None = None) -> dict[str, MissingFiles]:
    """Data and video files that the metadata of `root` lists but the folder lacks, by key ("data" or camera key).

    `cameras` limits the video check to those feature keys (data files are always checked).
    """
    root = Path(root)
    result = {}
    for key, paths in expected_files(root, cameras).items():
        absent = [p for p in paths if not (root / p).is_file()]
        if absent:
            result[key] = MissingFiles(key=key, missing=len(absent), total=len(paths), first=absent[0])
    return result


def missing_files_message(root: str | Path, missing: dict[str, MissingFiles]) -> str:
    """One line naming each camera (and the data) with files missing and its first missing file."""
    return f"{root} is incomplete: " + "; ".join(m.message() for m in missing.values())


def require_files(root: str | Path, cameras: Sequence[str] | None = None, hint: str | None = None) -> None:
    """Raise PiperctlError naming each camera's first missing file, if any listed file is missing."""
    missing = missing_files(root, cameras)
    if missing:
        if hint is None:
            hint = "restore the files"
            if any(k != "data" for k in missing):
                hint += ", or leave those cameras out (train --cameras)"
        raise PiperctlError(missing_files_message(root, missing), hint=hint)


# ---------------------------------------------------------------------------------------------
# Timestamps


@dataclass(frozen=True)
class TimestampMismatch:
    """The first row whose stored timestamp is not frame_index / fps, and how many rows differ."""

    root: str
    episode: int
    frame: int
    timestamp: float
    expected: float
    tolerance_s: float
    rows: int
    episodes: int
    max_error: float  # the largest |timestamp - frame_index / fps| of any row (s)

    def summary(self) -> str:
        """How far off the timestamps are: rows, episodes, the largest error and the first row."""
        return (
            f"{self.rows} rows in {self.episodes} episodes are off frame_index / fps by up to "
            f"{self.max_error:.4g} s (first: episode {self.episode} frame {self.frame})"
        )

    def message(self) -> str:
        """One line naming the episode and frame, and the fix."""
        return (
            f"{self.root}: episode {self.episode} frame {self.frame} has timestamp {self.timestamp:.4f} s, "
            f"not frame_index / fps = {self.expected:.4f} s (tolerance {self.tolerance_s:g} s; "
            f"{self.rows} rows in {self.episodes} episodes differ, by up to {self.max_error:.4g} s), "
            "so video frames cannot be matched "
            f"— if each video holds one frame per row, fix it with: "
            f"{convert_command(self.root, retime=True)}"
        )


def check_timestamps(
    root: str | Path, fps: float | None = None, tolerance_s: float = TOLERANCE_S
) -> TimestampMismatch | None:
    """First (episode, frame) whose parquet timestamp differs from frame_index / fps by more than `tolerance_s`.

    Reads only episode_index, frame_index and timestamp of the data files; `fps` defaults to info.json's.
    """
    import polars as pl

    root = Path(root)
    if fps is None:
        fps = float(read_info(root)["fps"])
    files = sorted(root.glob("data/*/*.parquet"))
    if not files:
        return None
    error = (pl.col("timestamp").cast(pl.Float64) - pl.col("frame_index") / fps).abs()
    bad = (
        # glob=False: a folder name holding '[' or '*' is a path, not a pattern.
        pl.scan_parquet(files, glob=False)
        .select("episode_index", "frame_index", "timestamp")
        .filter(error > tolerance_s)
    )
    first, counts = pl.collect_all(
        [
            bad.sort("episode_index", "frame_index").head(1),
            bad.select(
                pl.len().alias("rows"),
                pl.col("episode_index").n_unique().alias("episodes"),
                error.max().alias("max_error"),
            ),
        ]
    )
    if first.height == 0:
        return None
    e, f, ts = first.row(0)
    return TimestampMismatch(
        root=str(root),
        episode=int(e),
        frame=int(f),
        timestamp=float(ts),
        expected=f / fps,
        tolerance_s=tolerance_s,
        rows=int(counts["rows"][0]),
        episodes=int(counts["episodes"][0]),
        max_error=float(counts["max_error"][0]),
    )


def require_consistent_timestamps(
    root: str | Path, fps: float | None = None, tolerance_s: float = TOLERANCE_S
) -> None:
    """Raise PiperctlError (one line: episode, frame, the --retime command) if check_timestamps finds a row."""
    found = check_timestamps(root, fps, tolerance_s)
    if found is not None:
        raise PiperctlError(found.message())


# ---------------------------------------------------------------------------------------------
# Videos: one frame per row


@dataclass(frozen=True)
class VideoMismatch:
    """An episode whose video does not hold exactly one frame per data row at frame_index / fps."""

    episode: int
    key: str
    path: str
    detail: str

    def message(self) -> str:
        """One line naming the episode, camera and what is wrong."""
        return f"episode {self.episode}, camera {camera_name(self.key)} ({self.path}): {self.detail}"


def video_frame_times(path: Path) -> list[float]:
    """Presentation times (s) of the frames of a video's first stream, from packets only (no decoding)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [float(p.pts * p.time_base) for p in container.demux(stream) if p.pts is not None]
    return sorted(times)


def _frames_match(times: list[float], start: float, rows: int, fps: float, tolerance_s: float) -> str | None:
    if len(times) != rows:
        return f"{len(times)} video frames for {rows} data rows"
    for k, t in enumerate(times):
        if abs(t - start - k / fps) > tolerance_s:
            return f"frame {k} is at {t - start:.4f} s, not {k / fps:.4f} s (frame_index / fps)"
    return None


def check_video_frames(
    root: str | Path,
    fps: float | None = None,
    tolerance_s: float = TOLERANCE_S,
    cameras: Sequence[str] | None = None,
    on_file: Callable[[], None] | None = None,
) -> VideoMismatch | None:
    """First episode whose video (v2.1 or v3.0 layout) does not hold one frame per row at frame_index / fps.

    Reads packet timestamps only (container metadata, no decoding). `on_file` is called per video file read.
    """
    root = Path(root)
    info = read_info(root)
    fps = float(fps or info["fps"])
    keys = [k for k, ft in info["features"].items() if ft.get("dtype") == "video"]
    keys = [k for k in keys if cameras is None or k in cameras]
    if not keys:
        return None
    if info.get("codebase_version") == CONVERTIBLE:
        return _check_v21_videos(root, info, keys, fps, tolerance_s, on_file)
    return _check_v30_videos(root, info, keys, fps, tolerance_s, on_file)


def _check_v21_videos(root, info, keys, fps, tolerance_s, on_file) -> VideoMismatch | None:
    import pyarrow.parquet as pq

    from piperctl.datasets.legacy import legacy_episodes

    chunks = int(info.get("chunks_size") or 1000)
    for ep in legacy_episodes(root):
        e = int(ep["episode_index"])
        data = root / info["data_path"].format(episode_chunk=e // chunks, episode_index=e)
        rows = pq.ParquetFile(data).metadata.num_rows
        for key in keys:
            rel = info["video_path"].format(episode_chunk=e // chunks, video_key=key, episode_index=e)
            detail = _frames_match(video_frame_times(root / rel), 0.0, rows, fps, tolerance_s)
            if on_file is not None:
                on_file()
            if detail:
                return VideoMismatch(episode=e, key=key, path=rel, detail=detail)
    return None


def _check_v30_videos(root, info, keys, fps, tolerance_s, on_file) -> VideoMismatch | None:
    import polars as pl

    cols = ["episode_index", "dataset_from_index", "dataset_to_index"]
    for key in keys:
        cols += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    eps = pl.scan_parquet(sorted(root.glob("meta/episodes/*/*.parquet")), glob=False).select(cols).collect()
    half = 0.5 / fps
    for key in keys:
        by_file = eps.partition_by([f"videos/{key}/chunk_index", f"videos/{key}/file_index"], as_dict=True)
        for (chunk, file), group in sorted(by_file.items()):
            rel = info["video_path"].format(video_key=key, chunk_index=chunk, file_index=file)
            times = video_frame_times(root / rel)
            if on_file is not None:
                on_file()
            for row in group.sort("episode_index").iter_rows(named=True):
                start, end = row[f"videos/{key}/from_timestamp"], row[f"videos/{key}/to_timestamp"]
                seg = [t for t in times if start - half <= t < end - half]
                rows = int(row["dataset_to_index"] - row["dataset_from_index"])
                detail = _frames_match(seg, start, rows, fps, tolerance_s)
                if detail:
                    return VideoMismatch(episode=int(row["episode_index"]), key=key, path=rel, detail=detail)
    return None
