"""The filesystem floor: crash-safe writes, output folders, and the first line of a foreign message.

Every write that matters goes through `atomic_replace` (temp sibling, write, fsync the file, rename,
fsync the folder), so a crash at any instant leaves the old file or the new one, never half of one.
This module imports nothing of piperctl but `errors`, so every layer may use it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from piperctl.errors import PiperctlError

# Marks our temporary files and folders, so that only ours are ever cleaned up.
TMP_PREFIX = ".piperctl-tmp-"


def first_line(what: BaseException | str, limit: int | None = None) -> str:
    """The first non-blank line of a message or exception, stripped (an exception's type name if it has none)."""
    text = next((ln.strip() for ln in str(what).splitlines() if ln.strip()), "")
    if not text and isinstance(what, BaseException):
        text = type(what).__name__
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def tmp_sibling(target: Path, tag: str = "") -> Path:
    """A temporary name beside `target` that marks it as ours (see `TMP_PREFIX`)."""
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


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (before it is renamed into place)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_file(Path(dirpath, name))
        fsync_dir(Path(dirpath))


def atomic_replace(path: Path, write: Callable[[Path], None], *, tmp: Path | None = None) -> None:
    """Replace `path` by what `write(tmp)` writes to a temporary sibling: fsync, rename, fsync the folder.

    The file is always a new inode: a hard link to the old one (a user's copy) keeps the old contents.
    """
    path = Path(path)
    tmp = tmp_sibling(path) if tmp is None else tmp
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to `path` atomically (see `atomic_replace`)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    atomic_replace(Path(path), lambda tmp: tmp.write_bytes(data))


def remove_tree(path: Path) -> None:
    """Delete a folder (or file) of ours, whatever is left of it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def prepare_out_folder(out: Path, force: bool, *, what: str = "dataset", inside: Path | None = None) -> None:
    """Refuse an output folder that is a file, or not empty without `force` (and never replace /, ~ or .).

    `inside` is a folder OUT must not overlap (the source of a conversion).
    """
    o = out.resolve()
    if inside is not None:
        s = inside.resolve()
        if o == s or s in o.parents or o in s.parents:
            raise PiperctlError(f"OUT {out} overlaps SRC {inside}", hint="choose an OUT folder outside SRC")
    if out.exists() and not out.is_dir():
        raise PiperctlError(f"{out} is a file, not a folder", hint=f"choose a new folder for the {what}")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise PiperctlError(
                f"{out} is not empty", hint="choose a new folder, or pass --force to replace it"
            )
        if o in (Path("/"), Path.home().resolve(), Path.cwd().resolve()):
            raise PiperctlError(f"refusing to replace {out}", hint=f"choose a dedicated {what} folder")


def publish_folder(new: Path, out: Path, staging: Path) -> None:
    """Rename the finished folder `new` to `out` (fsynced first), replacing an existing `out`.

    An existing non-empty `out` (--force) is first moved aside into `staging` (on the same
    filesystem; the caller removes it), so a crash never loses both the old and the new folder.
    """
    fsync_tree(new)
    if out.exists():
        if any(out.iterdir()):
            os.replace(out, staging / "replaced")
        else:
            out.rmdir()
    os.replace(new, out)
    fsync_dir(out.parent)
