"""Integrity of checkpoint folders: sha256 manifests, the one publish protocol, and quick integrity scans.

Every folder piperctl publishes (a checkpoint, a run's final model, an export) is written through
`publish`: filled in a temporary folder, each file fsynced, sealed with a manifest of sizes and
sha256 digests written last, then renamed (or moved) into place. A folder without a manifest is
incomplete; a file that disagrees with it is corrupt.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from piperctl.checkpoints.atomic import fsync_dir, fsync_file, remove_tree, tmp_sibling, write_json
from piperctl.checkpoints.format import (
    MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    OPTIMIZER_STATE,
    REQUIRED_FILES,
    is_safe_relpath,
    step_of,
    utc_now,
)
from piperctl.checkpoints.untrusted import UntrustedFileError, check_torch_pickle

_HASH_BLOCK = 1 << 20  # fits in L2 cache: hashing reads the block right after the copy


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed in blocks (hashlib releases the GIL, so threads scale)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        if hasattr(os, "posix_fadvise"):
            # Tell the kernel we read front to back once: deeper read-ahead on a cold cache.
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        buf = bytearray(_HASH_BLOCK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _hash_many(
    paths: Iterable[Path], workers: int | None = None, on_done: Callable[[Path], None] | None = None
) -> dict[Path, str | OSError]:
    """sha256 of many files in parallel threads; a file that cannot be read maps to its OSError."""
    paths = list(paths)

    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:
            return 0

    # Largest first: one big optimizer file started last would otherwise finish alone on one core.
    order = sorted(paths, key=size, reverse=True)
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    results: dict[Path, str | OSError] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(order) or 1))) as pool:
        futures = {pool.submit(sha256_file, p): p for p in order}
        for fut in as_completed(futures):
            p = futures[fut]
            try:
                results[p] = fut.result()
            except OSError as e:
                results[p] = e
            if on_done is not None:
                on_done(p)
    return {p: results[p] for p in paths}


def hash_files(
    paths: Iterable[Path], workers: int | None = None, on_done: Callable[[Path], None] | None = None
) -> dict[Path, str]:
    """sha256 of many files in parallel threads (raises the first read error)."""
    results = _hash_many(paths, workers, on_done)
    for value in results.values():
        if isinstance(value, OSError):
            raise value
    return results  # type: ignore[return-value]


def build_manifest(folder: Path, step: int | None) -> dict:
    """Size and sha256 of every file under `folder` (except the manifest itself)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    digests = hash_files(files)
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "step": step,
        "created": utc_now(),
        "files": {
            p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": digests[p]} for p in files
        },
    }


def seal(folder: Path, step: int | None) -> dict:
    """Fsync every file, then write the manifest last (its presence marks the folder complete)."""
    for p in folder.rglob("*"):
        if p.is_file():
            fsync_file(p)
    manifest = build_manifest(folder, step)
    write_json(folder / MANIFEST, manifest)
    return manifest


def disk_full(folder: Path) -> bool:
    """True when the filesystem of `folder` has (almost) no space left."""
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return False
    return usage.free < max(4 << 20, usage.total // 1000)


def publish(target: Path, write_files: Callable[[Path], None], step: int | None) -> Path:
    """Create folder `target` so that a crash at any instant leaves either all of it or none of it.

    `write_files(tmp)` fills a temporary sibling folder; it is sealed with a manifest and renamed
    into place (an existing `target` is replaced only once the new one is complete). A failure
    removes the temporary folder at once.
    """
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(target)
    remove_tree(tmp)
    tmp.mkdir()
    try:
        write_files(tmp)
        seal(tmp, step)
        fsync_dir(tmp)
    except BaseException as e:
        full = not isinstance(e, OSError) and disk_full(parent)
        remove_tree(tmp)
        if full:
            # torch's zip writer reports a full disk as a RuntimeError ("unexpected pos ...").
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp)) from e
        raise
    if target.exists():
        # Swap the old folder aside first: os.replace cannot replace a non-empty directory.
        old = tmp_sibling(target, ".old")
        os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    fsync_dir(parent)
    return target


@dataclass(frozen=True)
class Issue:
    """One problem in a checkpoint: the check that found it, a stable code, the file concerned, a sentence."""

    check: str
    code: str
    message: str
    file: str | None = None


@dataclass
class QuickCheck:
    """Result of a manifest/size check of one checkpoint folder."""

    path: Path
    step: int | None
    state: str  # "complete" | "incomplete" | "corrupt"
    manifest: dict | None = None
    issues: list[Issue] = field(default_factory=list)
    hashed: bool = False
    size_bytes: int = 0
    # Files whose size matched, waiting for their sha256 to be compared: path -> (name, expected digest).
    pending: dict[Path, tuple[str, str]] = field(default_factory=dict, repr=False)

    @property
    def problems(self) -> list[str]:
        """The sentences of every problem found, in the order found."""
        return [i.message for i in self.issues]

    @property
    def ok(self) -> bool:
        """True when the checkpoint is complete and passed every check that was run."""
        return self.state == "complete" and not self.issues

    def add(self, check: str, code: str, message: str, file: str | None = None) -> None:
        """Record a problem; any problem makes a complete checkpoint corrupt."""
        self.issues.append(Issue(check, code, message, file))
        if self.state == "complete":
            self.state = "corrupt"


@dataclass
class Found:
    """A file found in a checkpoint folder: its size and whether it is a link out of the folder."""

    size: int  # -1: not a regular file (a link to a folder or to nothing)
    escapes: bool  # a symbolic link whose target lies outside the checkpoint folder


def _walk(folder: Path, recursive: bool) -> dict[str, Found]:
    """Regular files under `folder` (relative POSIX name -> size) from one scandir per folder."""
    root = folder.resolve()
    found: dict[str, Found] = {}
    stack = [(folder, "")]
    while stack:
        current, prefix = stack.pop()
        with os.scandir(current) as it:
            for entry in it:
                rel = prefix + entry.name
                if entry.is_symlink():
                    try:
                        target = Path(entry.path).resolve()
                    except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13)
                        found[rel] = Found(-1, escapes=False)
                        continue
                    inside = target == root or root in target.parents
                    # A dangling link or a linked folder is no file (size -1): missing if listed, else unexpected.
                    size = target.stat().st_size if target.is_file() else -1
                    found[rel] = Found(size, escapes=not inside)
                elif entry.is_file():
                    found[rel] = Found(entry.stat().st_size, escapes=False)
                elif entry.is_dir():
                    if recursive:
                        stack.append((Path(entry.path), rel + "/"))
                elif recursive:
                    # A FIFO, socket or device: never opened (a FIFO would block a reader forever).
                    found[rel] = Found(-1, escapes=False)
    return found


def _read_manifest(path: Path) -> dict:
    return parse_manifest(path.read_text(encoding="utf-8"))


def parse_manifest(text: str) -> dict:
    """A manifest's JSON text as a dict, or ValueError when it is not a piperctl manifest."""
    manifest = json.loads(text)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError("not a piperctl manifest")
    entries = manifest.get("files")
    if not isinstance(entries, dict):
        raise ValueError("its 'files' is not an object")
    return manifest


def scan_checkpoint(
    path: Path, *, required: Iterable[str] = REQUIRED_FILES, strict_contents: bool = True
) -> QuickCheck:
    """The cheap part of the check: manifest present and parseable, required files there, sizes match.

    No file content is read besides the manifest; matching files wait in `pending` for `hash_pending`.
    `strict_contents=False` (the final model files in a run folder) ignores files the manifest does
    not list and does not descend into sub-folders.
    """
    required = tuple(required)
    step = step_of(path)
    result = QuickCheck(path=path, step=step, state="complete")
    if not path.is_dir():
        result.state = "incomplete"
        result.add("layout", "not-a-folder", f"{path} is not a folder")
        return result
    try:
        found = _walk(path, recursive=strict_contents)
    except OSError as e:
        result.add("layout", "unreadable", f"cannot list {path} ({e.strerror or e})")
        return result
    result.size_bytes = sum(f.size for f in found.values() if f.size > 0)
    found.pop(MANIFEST, None)
    if not (path / MANIFEST).is_file():
        result.state = "incomplete"
        result.add("manifest", "manifest-missing", f"{MANIFEST} missing: the save did not finish", MANIFEST)
        for name in required:
            if name not in found:
                result.add("layout", "missing-file", f"required file {name} is missing", name)
        return result
    try:
        manifest = _read_manifest(path / MANIFEST)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        result.add("manifest", "manifest-invalid", f"{MANIFEST} unreadable ({e})", MANIFEST)
        return result
    check_entries(result, manifest, found, required, strict_contents)
    return result


def check_entries(
    result: QuickCheck, manifest: dict, found: dict[str, Found], required: tuple[str, ...], strict: bool
) -> None:
    """Compare a parsed manifest with the files found (name -> size): layout, sizes, step; fills `pending`.

    Shared by local folders and remote checkpoints (piperctl.checkpoints.remote), so both report the
    same codes.
    """
    path, step = result.path, result.step
    result.manifest = manifest
    entries: dict = manifest["files"]
    for name in required:
        if name not in entries:
            if name in found:
                result.add("layout", "not-in-manifest", f"required file {name} is not in the manifest", name)
            else:
                result.add("layout", "missing-file", f"required file {name} is missing", name)
    for rel, info in sorted(entries.items()):
        if not is_safe_relpath(rel):
            result.add(
                "manifest", "path-escape", f"manifest entry {rel!r} points outside the checkpoint", str(rel)
            )
            continue
        if not isinstance(info, dict) or not isinstance(info.get("size"), int):
            result.add("manifest", "manifest-invalid", f"manifest entry {rel} has no valid size", rel)
            continue
        f = found.get(rel)
        if f is None or (f.size < 0 and not f.escapes):
            if rel in required:
                result.add("layout", "missing-file", f"required file {rel} is missing", rel)
            else:
                result.add("layout", "missing-file", f"{rel} is missing", rel)
            continue
        if f.escapes:
            result.add("layout", "path-escape", f"{rel} is a symbolic link to outside the checkpoint", rel)
            continue
        if f.size != info["size"]:
            result.add(
                "manifest",
                "size-mismatch",
                f"{rel} has {f.size} bytes, manifest says {info['size']} (truncated or changed)",
                rel,
            )
        else:
            result.pending[path / rel] = (rel, str(info.get("sha256")))
    if strict:
        for rel in sorted(found):
            if rel not in entries:
                result.add("layout", "unexpected-file", f"unexpected file {rel} (not in the manifest)", rel)
    if step is not None and manifest.get("step") not in (None, step):
        result.add(
            "manifest",
            "step-mismatch",
            f"folder name says step {step} but the manifest says step {manifest.get('step')}",
            MANIFEST,
        )


def hash_pending(
    checks: Iterable[QuickCheck], workers: int | None = None, on_done: Callable[[Path], None] | None = None
) -> None:
    """Compare the sha256 of every size-matched file of `checks` (one thread pool for all of them).

    Also refuses an optimizer state whose pickle would import anything a plain state dict never
    needs: resume and verify rely on this full check before anything is unpickled.
    """
    checks = list(checks)
    jobs: dict[Path, tuple[QuickCheck, str, str]] = {}
    for check in checks:
        for p, (rel, expected) in check.pending.items():
            jobs[p] = (check, rel, expected)
    for p, digest in _hash_many(jobs, workers, on_done).items():
        check, rel, expected = jobs[p]
        if isinstance(digest, OSError):
            check.add("sha256", "unreadable", f"{rel} cannot be read ({digest.strerror or digest})", rel)
        elif digest != expected:
            check.add("sha256", "sha256-mismatch", f"{rel} sha256 mismatch (content changed or damaged)", rel)
    for check in checks:
        # Only a file that passed the layout and size checks is opened (never a link out of the folder).
        opt = check.path / OPTIMIZER_STATE
        scan = opt in check.pending
        check.pending.clear()
        check.hashed = True
        if scan:
            try:
                check_torch_pickle(opt)
            except UntrustedFileError as e:
                check.add("optimizer", e.code, e.message, OPTIMIZER_STATE)


def check_checkpoint(
    path: Path,
    *,
    hash_contents: bool = True,
    required: Iterable[str] = REQUIRED_FILES,
    strict_contents: bool = True,
) -> QuickCheck:
    """Check a checkpoint against its manifest: presence, sizes and (optionally) sha256 of every file.

    Reports every problem found, not only the first.
    """
    result = scan_checkpoint(path, required=required, strict_contents=strict_contents)
    if hash_contents:
        hash_pending([result])
    return result
