"""The filesystem floor: one atomic write, output folders, and the first line of a foreign message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from piperctl.errors import PiperctlError
from piperctl.fs import (
    TMP_PREFIX,
    atomic_replace,
    atomic_write,
    first_line,
    prepare_out_folder,
    publish_folder,
)


def test_atomic_write_text_and_bytes_leave_no_temp_file(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.txt", "héllo\n")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]


def test_atomic_replace_writes_a_new_inode(tmp_path: Path) -> None:
    # A hard link to the old file (a user's copy) keeps the old contents.
    target = tmp_path / "data.parquet"
    target.write_text("old")
    os.link(target, tmp_path / "users_copy")
    atomic_replace(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and (tmp_path / "users_copy").read_text() == "old"


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "[odd] name ü.json"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_replace(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_first_line() -> None:
    assert first_line(ValueError("\n  first  \nsecond")) == "first"
    assert first_line(KeyError()) == "KeyError"
    assert first_line("") == ""
    assert first_line(RuntimeError("x" * 300), limit=240) == "x" * 237 + "..."


def test_prepare_out_folder(tmp_path: Path) -> None:
    prepare_out_folder(tmp_path / "new", force=False)  # a new folder is fine
    (tmp_path / "empty").mkdir()
    prepare_out_folder(tmp_path / "empty", force=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PiperctlError, match="is a file"):
        prepare_out_folder(tmp_path / "file", force=True)
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    with pytest.raises(PiperctlError, match="--force"):
        prepare_out_folder(full, force=False)
    prepare_out_folder(full, force=True)
    with pytest.raises(PiperctlError, match="overlaps"):
        prepare_out_folder(full / "sub", force=False, inside=full)
    assert (full / "mine.txt").read_text() == "keep"  # checks never delete anything


def test_publish_folder_replaces_out_and_keeps_the_old_one_aside(tmp_path: Path) -> None:
    staging = tmp_path / f"{TMP_PREFIX}x"
    staging.mkdir()
    new = staging / "dataset"
    new.mkdir()
    (new / "info.json").write_text("new")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    publish_folder(new, out, staging)
    assert [p.name for p in out.iterdir()] == ["info.json"]
    assert (staging / "replaced" / "old.txt").read_text() == "old"
