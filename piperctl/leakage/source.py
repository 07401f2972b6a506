"""Turn the DATASET a user typed into a local folder: a path as is, a Hub repo id via the HF cache."""

from __future__ import annotations

import os
from pathlib import Path

from piperctl import hub
from piperctl.errors import PiperctlError
from piperctl.fs import first_line


def resolve_dataset(dataset: str | os.PathLike[str]) -> Path:
    """A local dataset folder for `dataset`: an existing path, lerobot's local copy, or a Hub download."""
    source = hub.local_or_repo_id(dataset)
    if isinstance(source, str):
        local = hub.lerobot_home() / source
        return local if (local / "meta" / "info.json").is_file() else _download(source)
    path = Path(source)
    if not path.exists():
        raise PiperctlError(
            f"dataset folder {path} does not exist", hint="give a LeRobot dataset folder or a Hub repo id"
        )
    if not path.is_dir():
        raise PiperctlError(f"{path} is a file, not a dataset folder", hint="give the dataset's root folder")
    return path


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency of piperctl
        raise PiperctlError(f"cannot fetch {repo_id}: huggingface_hub is not installed") from e
    try:
        # Only tables and metadata: videos are never read by the leakage checks.
        local = snapshot_download(repo_id, repo_type="dataset", allow_patterns=["meta/**", "data/**"])
    except Exception as e:  # noqa: BLE001 - every Hub failure (offline, 404, auth) becomes one line
        if hub.offline():
            raise PiperctlError(
                f"Hub dataset {repo_id} is not in the local cache and HF_HUB_OFFLINE is set",
                hint="unset HF_HUB_OFFLINE to download it, or pass a local dataset folder",
            ) from e
        raise PiperctlError(
            f"cannot fetch Hub dataset {repo_id}: {first_line(e)}",
            hint="check the repo id, your network and `hf auth login`, or pass a local folder",
        ) from e
    return Path(local)
