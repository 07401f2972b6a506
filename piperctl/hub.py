"""The Hugging Face Hub, decided once: is a name a local path or a Hub id, where lerobot keeps its data, offline mode.

Built on huggingface_hub (its `validate_repo_id` and `constants`); imports neither torch nor
lerobot, so the leakage scanner may use it. huggingface_hub's validators pull in its HTTP stack, so
they are imported only when a name is not an existing path.
"""

from __future__ import annotations

import os
from pathlib import Path


def is_repo_id(text: str) -> bool:
    """True for `owner/name` as the Hub accepts it (huggingface_hub's `validate_repo_id`, owner required)."""
    # One slash and ASCII only: `\\w` in the Hub's pattern would also take non-ASCII letters.
    if text.count("/") != 1 or not text.isascii() or text.startswith((".", "/", "~")):
        return False
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def local_or_repo_id(name: str | os.PathLike[str]) -> Path | str:
    """What a user's DATASET/MODEL argument names: an existing path (a Path), else a Hub id (a str), else the missing path."""
    path = Path(name).expanduser()
    if path.exists():
        return path  # `./owner/name` or `owner/name` that exists here is always the local folder
    text = os.fspath(name)
    # "data/piperr" beside an existing "data/" folder is a mistyped path, not a Hub id.
    return text if is_repo_id(text) and not path.parent.is_dir() else path


def lerobot_home() -> Path:
    """lerobot's HF_LEROBOT_HOME, by lerobot's own rule: $HF_LEROBOT_HOME, else huggingface_hub's HF_HOME/lerobot.

    huggingface_hub's HF_HOME honours $HF_HOME, then $XDG_CACHE_HOME/huggingface, then ~/.cache/huggingface.
    """
    from huggingface_hub import constants

    return Path(os.getenv("HF_LEROBOT_HOME", Path(constants.HF_HOME) / "lerobot")).expanduser()


def offline() -> bool:
    """True when the Hub must not be contacted (HF_HUB_OFFLINE, as huggingface_hub reads it, or set since)."""
    from huggingface_hub import constants

    # huggingface_hub reads the variable once, at import; a later change (a test, a caller) counts too.
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in (
        "1",
        "ON",
        "YES",
        "TRUE",
    )


def dataset_source(text: str) -> tuple[str, Path | None, str | None]:
    """A DATASET argument that may end in `@revision`: (dataset id, local folder or None, Hub revision or None).

    A folder's id is `local/<its name>` (never looked up on the Hub); `owner/name@rev` is a Hub id at a revision.
    """
    found = local_or_repo_id(text)
    if isinstance(found, str):
        return found, None, None
    repo, sep, revision = text.rpartition("@")
    if sep and revision and not found.exists() and is_repo_id(repo):
        return repo, None, revision
    return f"local/{found.resolve().name}", found, None
