"""Checkpoint folders: atomic saves, sha256 manifests, discovery, rotation and quick integrity checks."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from piperctl.errors import PiperctlError

CHECKPOINT_PREFIX = "checkpoint-"
# Temporary folders start with this prefix so that a later start can tell ours from the user's files.
TMP_PREFIX = ".piperctl-tmp-"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "piperctl-checkpoint"
MANIFEST_VERSION = 1
RUN_FILE = "run.json"

POLICY_WEIGHTS = "policy.safetensors"
POLICY_CONFIG = "config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
POSTPROCESSOR_CONFIG = "postprocessor_config.json"
OPTIMIZER_STATE = "optimizer_state.pth"
TRAINING_STATE = "training_state.json"
RNG_STATE_TENSORS = "rng_state.safetensors"
RNG_STATE_JSON = "rng_state.json"

# The layout contract of a resumable checkpoint (docs/checkpoint-format.md). Processor state files
# (`*_processor.safetensors`) are named by lerobot and listed in the processor configs.
MODEL_FILES = (POLICY_WEIGHTS, POLICY_CONFIG, PREPROCESSOR_CONFIG, POSTPROCESSOR_CONFIG)
REQUIRED_FILES = (*MODEL_FILES, OPTIMIZER_STATE, TRAINING_STATE, RNG_STATE_TENSORS, RNG_STATE_JSON)

_STEP_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
_HASH_BLOCK = 4 << 20


def step_of(path: Path) -> int | None:
    """The step encoded in a `checkpoint-N` folder name, or None for other names."""
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else None


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """The folder of the checkpoint at `step` inside `run_dir`."""
    return run_dir / f"{CHECKPOINT_PREFIX}{step}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """`checkpoint-N` folders of a run, oldest (lowest step) first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: step_of(p) or 0)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed in blocks (hashlib releases the GIL, so threads scale)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_HASH_BLOCK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def hash_files(paths: Iterable[Path], workers: int | None = None) -> dict[Path, str]:
    """sha256 of many files in parallel threads."""
    paths = list(paths)
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(zip(paths, pool.map(sha256_file, paths), strict=True))


def _fsync_file(path: Path) -> None:
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
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
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


def build_manifest(folder: Path, step: int | None) -> dict:
    """Size and sha256 of every file under `folder` (except the manifest itself)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    digests = hash_files(files)
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "step": step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {
            p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": digests[p]} for p in files
        },
    }


def seal(folder: Path, step: int | None) -> dict:
    """Fsync every file, then write the manifest last (its presence marks the folder complete)."""
    for p in folder.rglob("*"):
        if p.is_file():
            _fsync_file(p)
    manifest = build_manifest(folder, step)
    write_json(folder / MANIFEST, manifest)
    return manifest


def save_atomically(target: Path, write_files: Callable[[Path], None], step: int | None) -> Path:
    """Create folder `target` so that a crash at any instant leaves either all of it or nothing.

    `write_files(tmp)` fills a temporary sibling folder; it is sealed with a manifest, fsynced and
    renamed into place. An existing `target` is replaced only after the new one is complete.
    """
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{TMP_PREFIX}{target.name}.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_files(tmp)
    seal(tmp, step)
    fsync_dir(tmp)
    if target.exists():
        # Swap the old folder aside first: os.replace cannot replace a non-empty directory.
        old = parent / f"{TMP_PREFIX}{target.name}.old.{os.getpid()}"
        os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    fsync_dir(parent)
    return target


def remove_stale_tmp(run_dir: Path) -> list[Path]:
    """Delete temporary folders/files our interrupted saves left in `run_dir` (only ours)."""
    removed = []
    if not run_dir.is_dir():
        return removed
    for p in run_dir.iterdir():
        if p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
    return removed


@dataclass
class QuickCheck:
    """Result of a manifest/size check of one checkpoint folder."""

    path: Path
    step: int | None
    state: str  # "complete" | "incomplete" | "corrupt"
    problems: list[str] = field(default_factory=list)
    manifest: dict | None = None

    @property
    def ok(self) -> bool:
        """True when the checkpoint is complete and passed every check that was run."""
        return self.state == "complete" and not self.problems


def _safe_relpath(folder: Path, rel: str) -> Path | None:
    """Resolve a manifest entry inside `folder`, or None when it would escape it."""
    if not rel or rel.startswith(("/", "\\")) or "\\" in rel:
        return None
    candidate = (folder / rel).resolve()
    try:
        candidate.relative_to(folder.resolve())
    except ValueError:
        return None
    return candidate


def check_checkpoint(
    path: Path, *, hash_contents: bool = True, required: Iterable[str] = REQUIRED_FILES
) -> QuickCheck:
    """Check a checkpoint against its manifest: presence, sizes and (optionally) sha256 of every file.

    Reports every problem found, not only the first.
    """
    step = step_of(path)
    result = QuickCheck(path=path, step=step, state="complete")
    if not path.is_dir():
        result.state = "incomplete"
        result.problems.append(f"{path} is not a folder")
        return result
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        result.state = "incomplete"
        result.problems.append(f"{MANIFEST} missing: the save did not finish")
        return result
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entries = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(entries, dict):
            raise ValueError("not a piperctl manifest")
    except (OSError, ValueError, KeyError, TypeError) as e:
        result.state = "corrupt"
        result.problems.append(f"{MANIFEST} unreadable ({e})")
        return result
    result.manifest = manifest
    for name in required:
        if name not in entries:
            result.problems.append(f"required file {name} is not in the manifest")
        elif not (path / name).is_file():
            result.problems.append(f"required file {name} is missing")
    to_hash: dict[Path, tuple[str, str]] = {}
    for rel, info in sorted(entries.items()):
        target = _safe_relpath(path, rel)
        if target is None:
            result.problems.append(f"manifest entry {rel!r} points outside the checkpoint")
            continue
        if not target.is_file():
            if rel not in required:
                result.problems.append(f"{rel} is missing")
            continue
        size = target.stat().st_size
        if size != info.get("size"):
            result.problems.append(
                f"{rel} has {size} bytes, manifest says {info.get('size')} (truncated or changed)"
            )
        elif hash_contents:
            to_hash[target] = (rel, str(info.get("sha256")))
    if hash_contents and to_hash:
        for target, digest in hash_files(to_hash).items():
            rel, expected = to_hash[target]
            if digest != expected:
                result.problems.append(f"{rel} sha256 mismatch (content changed or damaged)")
    listed = set(entries)
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(path).as_posix()
            if rel not in listed:
                result.problems.append(f"unexpected file {rel} (not in the manifest)")
    if step is not None and manifest.get("step") not in (None, step):
        result.problems.append(
            f"folder name says step {step} but the manifest says step {manifest.get('step')}"
        )
    if result.problems:
        result.state = "corrupt"
    return result


def find_resumable(run_dir: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """Newest checkpoint of `run_dir` that passes the full manifest check, plus why newer ones were skipped."""
    skipped: list[tuple[Path, str]] = []
    for ckpt in reversed(list_checkpoints(run_dir)):
        check = check_checkpoint(ckpt)
        if check.ok:
            return ckpt, skipped
        skipped.append((ckpt, f"{check.state}: {'; '.join(check.problems)}"))
    if skipped:
        reasons = "; ".join(f"{p.name} {why}" for p, why in skipped)
        raise PiperctlError(
            f"no intact checkpoint in {run_dir} ({reasons})",
            hint="run 'piperctl checkpoints verify' for details",
        )
    raise PiperctlError(
        f"no checkpoint-N folders in {run_dir}", hint="pass a run folder written by 'piperctl train'"
    )


def rotate(run_dir: Path, keep_last: int, protect: Path | None = None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `keep_last` (0 keeps all); never `protect`.

    Only checkpoints that passed the quick check count and get deleted: a damaged one is left for the
    user to inspect.
    """
    if keep_last <= 0:
        return []
    complete = [p for p in list_checkpoints(run_dir) if check_checkpoint(p, hash_contents=False).ok]
    doomed = complete[:-keep_last] if len(complete) > keep_last else []
    removed = []
    for p in doomed:
        if protect is not None and p.resolve() == protect.resolve():
            continue
        # Rename first so that a crash mid-delete cannot leave a half checkpoint under a valid name.
        trash = run_dir / f"{TMP_PREFIX}{p.name}.deleting"
        os.replace(p, trash)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(p)
    if removed:
        fsync_dir(run_dir)
    return removed
