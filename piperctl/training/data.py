"""Training data: open a LeRobot dataset, fingerprint it, split episodes, and feed batches in a resumable order."""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from piperctl.defaults import TOLERANCE_S
from piperctl.errors import PiperctlError, from_os_error
from piperctl.fs import first_line


def open_metadata(dataset_id: str, root: str | Path | None, revision: str | None = None):
    """lerobot metadata of a local dataset folder or a Hub dataset (at `revision`), with one-line errors."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from piperctl.quiet import quiet_third_party

    quiet_third_party()
    if root is not None:
        root = Path(root)
        if not (root / "meta" / "info.json").is_file():
            raise PiperctlError(
                f"{root} is not a LeRobot dataset (no meta/info.json)",
                hint="pass the dataset's root folder, or make one with 'piperctl dataset synth'",
            )
    try:
        local = lerobot_root(root) if root is not None else None
        return LeRobotDatasetMetadata(dataset_id, root=local, revision=revision)
    except Exception as e:  # noqa: BLE001 - hub/offline/format errors come in many types
        where = root if root is not None else f"Hub dataset {dataset_id}"
        hint = "check the id and your network" if root is None else "check that it is a LeRobot v3.0 dataset"
        if "Offline" in type(e).__name__ or "offline" in str(e).lower():
            hint = "HF_HUB_OFFLINE is set: download it first or pass --dataset-root"
        raise PiperctlError(f"cannot open {where}: {first_line(e)}", hint=hint) from e


def require_dataset_folder(root: Path) -> None:
    """Refuse a --dataset-root that is missing or is not a dataset's root folder."""
    if not root.exists():
        raise PiperctlError(
            f"{root} is not a LeRobot dataset (the folder does not exist)",
            hint="pass the dataset's root folder",
        )
    if not (root / "meta" / "info.json").is_file():
        raise PiperctlError(
            f"{root} is not a LeRobot dataset (no meta/info.json)",
            hint="pass the dataset's root folder, or make one with 'piperctl dataset synth'",
        )


def drop_cameras(meta: Any, keep: list[str]) -> list[str]:
    """Remove the camera features not in `keep` from `meta`, so the policy never sees them; the removed keys."""
    dropped = [k for k in meta.camera_keys if k not in keep]
    for key in dropped:
        meta.info.features.pop(key)
    return dropped


def require_inputs(meta: Any, policy: str, cameras: str | None) -> None:
    """Refuse, before building it, a vision policy for a dataset left without any camera."""
    if (
        policy in ("act", "diffusion")
        and not meta.camera_keys
        and "observation.environment_state" not in meta.features
    ):
        why = f"--cameras {cameras} leaves none" if cameras else "the dataset has none"
        raise PiperctlError(
            f"a {policy} policy needs at least one camera image (or observation.environment_state) and {why}",
            hint="train on a dataset with a camera, or keep one with --cameras",
        )


# `datasets` (through fsspec) reads lerobot's data file paths as glob patterns: these characters in
# a folder name make a valid dataset look empty.
_GLOB_CHARS = frozenset("[]*?{}")


def lerobot_root(root: Path) -> Path:
    """The folder to hand lerobot for local dataset `root`: itself, or a link to it at a path free of glob characters."""
    root = Path(root)
    if not _GLOB_CHARS & set(str(root.absolute())):
        return root
    return _glob_free_link(root.resolve())


@functools.cache
def _glob_free_link(target: Path) -> Path:
    """One link per dataset and process (metadata and dataset are opened separately), removed at exit."""
    view = Path(tempfile.mkdtemp(prefix="piperctl-dataset-view-"))
    atexit.register(shutil.rmtree, view, True)
    link = view / "dataset"
    link.symlink_to(target, target_is_directory=True)
    return link


def _view_without(root: Path, keys: list[str]) -> Path:
    """A folder that reads as the dataset at `root` without the video features `keys` (links, not copies).

    lerobot checks every declared video file before reading a local dataset (and downloads from the
    Hub when one is missing), so a camera left out must be left out of info.json itself.
    """
    view = Path(tempfile.mkdtemp(prefix="piperctl-dataset-view-"))
    atexit.register(shutil.rmtree, view, True)
    for entry in root.iterdir():
        if entry.name != "meta":
            (view / entry.name).symlink_to(entry.resolve())
    (view / "meta").mkdir()
    for entry in (root / "meta").iterdir():
        if entry.name != "info.json":
            (view / "meta" / entry.name).symlink_to(entry.resolve())
    info = json.loads((root / "meta" / "info.json").read_text(encoding="utf-8"))
    for key in keys:
        info["features"].pop(key, None)
    (view / "meta" / "info.json").write_text(json.dumps(info, indent=4), encoding="utf-8")
    return view


def _hub_without(dataset_id: str, revision: str | None, drop: list[str]) -> Path | None:
    """A Hub dataset downloaded without the cameras in `drop`, as a folder that leaves them out.

    lerobot downloads every camera's videos; a camera left out with --cameras is never fetched.
    None when nothing dropped is a video (lerobot then downloads and reads the dataset itself).
    """
    from huggingface_hub import snapshot_download
    from lerobot.utils.constants import HF_LEROBOT_HUB_CACHE

    meta = open_metadata(dataset_id, None, revision)  # meta/ only
    videos = [k for k in drop if meta.features.get(k, {}).get("dtype") == "video"]
    if not videos:
        return None
    keep = [f"videos/{k}/**" for k in meta.video_keys if k not in videos]
    try:
        # lerobot's own revision-safe snapshot cache, with only the files this run reads.
        snapshot = snapshot_download(
            dataset_id,
            repo_type="dataset",
            revision=meta.revision,
            cache_dir=HF_LEROBOT_HUB_CACHE,
            allow_patterns=["meta/**", "data/**", *keep],
        )
    except Exception as e:  # noqa: BLE001 - hub/offline/network errors come in many types
        raise PiperctlError(f"cannot download Hub dataset {dataset_id}: {first_line(e)}") from e
    return _view_without(Path(snapshot), videos)


def check_data_files(root: Path) -> None:
    """Refuse, naming the file, a data parquet file that is truncated, unreadable or holds no rows.

    Reads only each file's footer. Without this, lerobot's loader fails with "An error occurred
    while generating the dataset" and names no file.
    """
    for path in sorted((root / "data").rglob("*.parquet")):
        try:
            rows = pq.read_metadata(path).num_rows
        except OSError as e:
            raise from_os_error(e) from e
        except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid and friends for a damaged file
            raise PiperctlError(
                f"{path} is not a readable parquet file ({first_line(e)})",
                hint="the dataset is damaged (an interrupted copy or download?): copy or download it again",
            ) from e
        if rows == 0:
            raise PiperctlError(
                f"{path} holds no rows",
                hint="the dataset is damaged: copy or download it again, or re-record it",
            )
    # The column check the leakage scan runs (footers only): a column of the wrong type, e.g. action
    # or timestamp stored as strings, is one line naming file and column, not a failure mid-load.
    from piperctl.leakage.layout import STRUCT_COLUMNS, load_layout, validate_columns

    try:
        layout = load_layout(root)
        validate_columns(layout, [*STRUCT_COLUMNS, *layout.content_features])
    except PiperctlError as e:
        raise PiperctlError(f"{root}: {e.message}", hint=e.hint) from e


def open_dataset(
    dataset_id: str,
    root: str | Path | None,
    delta_timestamps: dict | None,
    tolerance_s: float = TOLERANCE_S,
    drop: list[str] | None = None,
    revision: str | None = None,
):
    """A LeRobotDataset over all episodes (training and validation are chosen by samplers).

    `drop`: camera features left out (see `drop_cameras`); their video files are never opened.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from piperctl.quiet import video_backend

    read_from = root
    if root is not None:
        info = json.loads((Path(root) / "meta" / "info.json").read_text(encoding="utf-8"))
        videos = [k for k in drop or [] if info["features"].get(k, {}).get("dtype") == "video"]
        read_from = _view_without(Path(root), videos) if videos else lerobot_root(Path(root))
    elif drop:
        read_from = _hub_without(dataset_id, revision, drop)
    try:
        return LeRobotDataset(
            dataset_id,
            root=read_from,
            delta_timestamps=delta_timestamps,
            tolerance_s=tolerance_s,
            revision=revision,
            video_backend=video_backend(),
        )
    except Exception as e:  # noqa: BLE001
        raise PiperctlError(f"cannot load dataset {root or dataset_id}: {first_line(e)}") from e


def hub_commit(meta) -> str | None:
    """The Hub commit a dataset's metadata was read at (lerobot's snapshot cache names the folder so), else None."""
    root = Path(meta.root)  # <cache>/datasets--OWNER--NAME/snapshots/<commit>
    is_snapshot = root.parent.name == "snapshots" and root.parent.parent.name.startswith("datasets--")
    return root.name if is_snapshot and re.fullmatch(r"[0-9a-f]{40}", root.name) else None


def fingerprint(meta) -> str:
    """A content fingerprint of a dataset: metadata bytes plus the size of every data and video file.

    Per-episode stats live in meta/episodes, so any change to frame values changes the fingerprint
    without reading the (possibly huge) data files. Of a Hub snapshot (one commit) only the metadata
    counts: which of its data and video files are downloaded yet varies from run to run.
    """
    root = Path(meta.root)
    h = hashlib.sha256()
    for rel in ("meta/info.json", "meta/tasks.parquet"):
        p = root / rel
        if p.is_file():
            h.update(rel.encode() + b"\0" + p.read_bytes())
    for sub in ("meta/episodes",) if hub_commit(meta) else ("meta/episodes", "data", "videos"):
        for p in sorted((root / sub).rglob("*")):
            if p.is_file():
                rel = p.relative_to(root).as_posix()
                h.update(rel.encode() + b"\0" + str(p.stat().st_size).encode())
                if sub == "meta/episodes":
                    h.update(p.read_bytes())
    return h.hexdigest()


def parse_episode_ids(text: str, total: int, option: str, hint: str) -> set[int]:
    """Episode ids written as ranges `A:B` (B exclusive; either end may be left out) and/or ids `i,j`."""
    ids: set[int] = set()
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if ":" in part:
                a, b = part.split(":")
                ids.update(range(int(a) if a else 0, int(b) if b else total))
            else:
                ids.add(int(part))
    except ValueError as e:
        raise PiperctlError(f"{option} {text!r} is not valid", hint=hint) from e
    bad = sorted(i for i in ids if not 0 <= i < total)
    if bad:
        raise PiperctlError(f"{option} names episodes {bad} that the dataset (0..{total - 1}) does not have")
    return ids


def parse_val_episodes(spec: str | int | None, total: int) -> list[int]:
    """Validation episodes: a count N (the last N episodes), or ids as `A:B` (B exclusive) and/or `i,j,k`."""
    if spec in (None, "", 0, "0"):
        return []
    text = str(spec).strip()
    if ":" not in text and "," not in text:
        try:
            n = int(text)
        except ValueError as e:
            raise PiperctlError(
                f"--val-episodes {text!r} is not valid", hint="give a count (2), a range (8:10) or ids (3,7)"
            ) from e
        if not 0 < n < total:
            raise PiperctlError(
                f"--val-episodes {n} must be between 1 and {total - 1} (the dataset has {total} episodes)"
            )
        return list(range(total - n, total))
    ids = parse_episode_ids(text, total, "--val-episodes", "give a count (2), a range (8:10) or ids (3,7)")
    if len(ids) >= total:
        raise PiperctlError("--val-episodes leaves no episode for training")
    return sorted(ids)


def with_imagenet_stats(stats: dict, meta: Any) -> dict:
    """`stats` with every RGB camera's mean/std replaced by ImageNet's, as lerobot-train does (`use_imagenet_stats`).

    The default ACT and diffusion backbones were pretrained on ImageNet-normalized images; a camera
    normalized with its own statistics shows them inputs they never saw.
    """
    from lerobot.utils.constants import IMAGENET_STATS

    depth = set(getattr(meta, "depth_keys", []) or [])
    out = {key: dict(value) for key, value in stats.items()}
    for key in meta.camera_keys:
        if key in depth:
            continue
        out.setdefault(key, {})
        for stat, value in IMAGENET_STATS.items():
            out[key][stat] = torch.tensor(value, dtype=torch.float32)
    return out


def train_stats(meta, episodes: list[int]) -> dict:
    """Normalization stats aggregated over `episodes` only (so held-out episodes cannot leak into them)."""
    from lerobot.datasets.compute_stats import aggregate_stats
    from lerobot.utils.utils import unflatten_dict

    if len(episodes) == meta.total_episodes:
        return meta.stats
    wanted = set(episodes)
    per_episode: list[dict] = []
    for f in sorted((Path(meta.root) / "meta" / "episodes").rglob("*.parquet")):
        table = pq.read_table(f)
        stat_cols = [c for c in table.column_names if c.startswith("stats/")]
        if not stat_cols:
            raise PiperctlError(
                f"{f} has no per-episode stats",
                hint="cannot hold episodes out of the normalization stats; drop --val-episodes",
            )
        cols = table.select(["episode_index", *stat_cols]).to_pydict()
        for row, ep in enumerate(cols["episode_index"]):
            if ep not in wanted:
                continue
            flat = {c[len("stats/") :]: np.asarray(cols[c][row]) for c in stat_cols}
            per_episode.append(unflatten_dict(flat))  # "feature/stat" -> {feature: {stat: ...}}
    return aggregate_stats(per_episode)
