"""Turn the DATASET a user typed into a local folder: a path as is, a Hub repo id via the HF cache."""

from __future__ import annotations

import os
import re
from pathlib import Path

from piperctl.errors import PiperctlError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_repo_id(text: str) -> bool:
    """True for `owner/name`, the only form of a Hub dataset id."""
    return bool(_REPO_ID.match(text)) and not text.startswith((".", "/"))


def _lerobot_home() -> Path:
    # Same rule as lerobot's HF_LEROBOT_HOME, without importing lerobot (slow, pulls in torch).
    env = os.environ.get("HF_LEROBOT_HOME")
    if env:
        return Path(env).expanduser()
    hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    return Path(hf_home).expanduser() / "lerobot"


def resolve_dataset(dataset: str | os.PathLike[str]) -> Path:
    """A local dataset folder for `dataset`: an existing path, lerobot's local copy, or a Hub download."""
    path = Path(dataset).expanduser()
    if path.exists():
        if not path.is_dir():
            raise PiperctlError(
                f"{path} is a file, not a dataset folder", hint="give the dataset's root folder"
            )
        return path
    text = str(dataset)
    # "data/piperr" with an existing "data/" folder is a mistyped path, not a Hub id.
    if not looks_like_repo_id(text) or path.parent.is_dir() and str(path.parent) not in ("", "."):
        raise PiperctlError(
            f"dataset folder {path} does not exist", hint="give a LeRobot dataset folder or a Hub repo id"
        )
    local = _lerobot_home() / text
    if (local / "meta" / "info.json").is_file():
        return local
    return _download(text)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency of piperctl
        raise PiperctlError(f"cannot fetch {repo_id}: huggingface_hub is not installed") from e
    try:
        # Only tables and metadata: videos are never read by the leakage checks.
        local = snapshot_download(repo_id, repo_type="dataset", allow_patterns=["meta/**", "data/**"])
    except Exception as e:  # noqa: BLE001 - every Hub failure (offline, 404, auth) becomes one line
        if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
            raise PiperctlError(
                f"Hub dataset {repo_id} is not in the local cache and HF_HUB_OFFLINE is set",
                hint="unset HF_HUB_OFFLINE to download it, or pass a local dataset folder",
            ) from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PiperctlError(
            f"cannot fetch Hub dataset {repo_id}: {first}",
            hint="check the repo id, your network and `hf auth login`, or pass a local folder",
        ) from e
    return Path(local)
