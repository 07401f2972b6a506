"""Checkpoint files on the filesystem floor (`piperctl.fs`): JSON written atomically, our leftovers found and removed."""

from __future__ import annotations

import json
from pathlib import Path

from piperctl.errors import PiperctlError

# The checkpoint code's names for the filesystem floor's writes (one implementation, in piperctl.fs).
from piperctl.fs import TMP_PREFIX, fsync_dir, fsync_file, remove_tree, tmp_sibling
from piperctl.fs import atomic_write as atomic_write_text

__all__ = [
    "atomic_write_text",
    "fsync_dir",
    "fsync_file",
    "read_json",
    "remove_stale_tmp",
    "remove_tree",
    "stale_tmp",
    "tmp_sibling",
    "write_json",
]


def write_json(path: Path, data: object) -> None:
    """Atomically write pretty JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, what: str) -> dict:
    """Read a JSON object, turning a missing or garbled file into a one-line PiperctlError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise PiperctlError(f"{what} {path} is missing") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PiperctlError(f"{what} {path} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise PiperctlError(f"{what} {path} is not a JSON object")
    return data


def stale_tmp(folder: Path) -> list[Path]:
    """Temporary folders and files of ours in `folder` (left by interrupted saves)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX))


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Delete the temporary folders/files our interrupted saves left in `folder` (only ours)."""
    removed = stale_tmp(folder)
    for p in removed:
        remove_tree(p)
    return removed
