"""Writes that survive a crash at any instant: temp file or folder, fsync, rename, fsync the parent."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from piperctl.checkpoints.format import TMP_PREFIX
from piperctl.errors import PiperctlError


def tmp_sibling(target: Path, tag: str = "") -> Path:
    """A temporary name beside `target` that marks it as ours (removed by `remove_stale_tmp`)."""
    return target.with_name(f"{TMP_PREFIX}{target.name}{tag}.{os.getpid()}")


def fsync_file(path: Path) -> None:
    """fsync one file's contents."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and new entries inside it survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically: temp file in the same folder, fsync, rename, fsync folder."""
    tmp = tmp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


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


def remove_tree(path: Path) -> None:
    """Delete a folder (or file) of ours, whatever is left of it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
