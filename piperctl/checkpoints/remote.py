"""A run folder on an object store or a mounted volume, reached through fsspec (s3://, gs://, az://, hf://, file://).

The remote layout is the local one (docs/cloud.md): RUN/run.json, RUN/metrics.jsonl,
RUN/checkpoint-N/, RUN/pretrained_model/, plus RUN/piperctl-owner.json (which run mirrors there).
A remote folder counts as complete only once its manifest.json is there: the mirror writes it last
(piperctl.checkpoints.mirror). Reading checks every file against that manifest, hashing the bytes as
they stream in, so nothing unverified is ever resumed from.

Credentials come from where each backend looks (AWS env/profile, gcloud, `hf auth login`, Azure
env); a URL may carry them too, so only `redact(url)` is ever printed or recorded.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from piperctl.checkpoints.atomic import atomic_write_text, fsync_dir, fsync_file, remove_tree, tmp_sibling
from piperctl.checkpoints.format import MANIFEST, REQUIRED_FILES, step_of
from piperctl.checkpoints.integrity import Found, QuickCheck, check_entries, parse_manifest
from piperctl.console import progress_bar
from piperctl.errors import PiperctlError
from piperctl.fs import first_line

OWNER_FILE = "piperctl-owner.json"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BLOCK = 1 << 20
# The pip extra that brings each protocol's fsspec backend.
_EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
}


def is_url(text: object) -> bool:
    """True for `scheme://...` (a remote run), False for a local path."""
    return isinstance(text, str) and bool(_URL.match(text))


def redact(url: str) -> str:
    """`url` without user, password, query or fragment: the form piperctl prints and records."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def split_checkpoint(url: str) -> tuple[str, str | None]:
    """(run URL, checkpoint-N name or None) of a URL that may end in a checkpoint folder."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    head, _, last = path.rpartition("/")
    if step_of(Path(last)) is not None:
        return urlunsplit((parts.scheme, parts.netloc, head, parts.query, parts.fragment)), last
    return url, None


def remote_error(e: BaseException, what: str, where: str) -> PiperctlError:
    """One line for a remote operation that failed (`what` on `where`, the redacted URL)."""
    if isinstance(e, PiperctlError):
        return e
    if isinstance(e, PermissionError):
        hint = "check the credentials for that store (see docs/cloud.md)"
    elif isinstance(e, FileNotFoundError):
        hint = "check the URL"
    else:
        hint = "check the URL, the network and the credentials (see docs/cloud.md)"
    return PiperctlError(f"cannot {what} {where}: {type(e).__name__}: {first_line(e, 200)}", hint=hint)


@dataclass
class Remote:
    """A run folder at a URL: its filesystem (fsspec) and root path there."""

    url: str  # as given: may hold credentials, never printed
    fs: Any
    root: str

    @property
    def shown(self) -> str:
        """The URL as printed and recorded (no credentials)."""
        return redact(self.url).rstrip("/")

    def path(self, *parts: str) -> str:
        """The backend path of `parts` under the run's root."""
        return "/".join([self.root.rstrip("/"), *parts])

    def display(self, *parts: str) -> str:
        """The printable URL of `parts` under the run's root."""
        return "/".join([self.shown, *parts])

    def list_checkpoints(self) -> list[str]:
        """Names of the checkpoint-N folders at the root, oldest (lowest step) first."""
        self.fs.invalidate_cache(self.root)
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        names = []
        for entry in entries:
            name = entry["name"].rstrip("/").rpartition("/")[2]
            if entry.get("type") == "directory" and step_of(Path(name)) is not None:
                names.append(name)
        return sorted(names, key=lambda n: step_of(Path(n)) or 0)

    def read_bytes(self, *parts: str) -> bytes | None:
        """The content of a (small) remote file, or None when it does not exist."""
        try:
            return self.fs.cat_file(self.path(*parts))
        except FileNotFoundError:
            return None

    def files(self, name: str) -> dict[str, Found]:
        """Every file under folder `name` (relative POSIX name -> size)."""
        prefix = self.path(name)
        self.fs.invalidate_cache(prefix)
        try:
            found = self.fs.find(prefix, detail=True)
        except FileNotFoundError:
            return {}
        root = self.fs._strip_protocol(prefix).rstrip("/") + "/"
        out = {}
        for key, info in found.items():
            key = self.fs._strip_protocol(key)
            if info.get("type") == "file" and key.startswith(root):
                out[key[len(root) :]] = Found(int(info.get("size") or 0), escapes=False)
        return out

    def scan(self, name: str, *, required: Iterable[str] = REQUIRED_FILES, strict: bool = True) -> QuickCheck:
        """The quick check of remote folder `name`: manifest there and parseable, files listed, sizes match."""
        result = QuickCheck(path=Path(name), step=step_of(Path(name)), state="complete")
        required = tuple(required)
        found = self.files(name)
        result.size_bytes = sum(f.size for f in found.values())
        raw = found.pop(MANIFEST, None) and self.read_bytes(name, MANIFEST)
        if not raw:
            result.state = "incomplete"
            result.add(
                "manifest", "manifest-missing", f"{MANIFEST} missing: the upload did not finish", MANIFEST
            )
            return result
        try:
            manifest = parse_manifest(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            result.add("manifest", "manifest-invalid", f"{MANIFEST} unreadable ({e})", MANIFEST)
            return result
        check_entries(result, manifest, found, required, strict)
        return result

    def stream(
        self, check: QuickCheck, into: Path | None = None, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """Hash every size-matched file of `check` as it streams in (and write it under `into`)."""
        name = check.path.as_posix()
        for rel, expected in sorted(check.pending.values()):
            h = hashlib.sha256()
            out = None
            if into is not None:
                (into / rel).parent.mkdir(parents=True, exist_ok=True)
                out = open(into / rel, "wb")  # noqa: SIM115 - closed below
            try:
                with self.fs.open(self.path(name, rel), "rb", block_size=_BLOCK) as f:
                    while block := f.read(_BLOCK):
                        h.update(block)
                        if out is not None:
                            out.write(block)
                        if on_bytes is not None:
                            on_bytes(len(block))
            finally:
                if out is not None:
                    out.close()
            if h.hexdigest() != expected:
                check.add(
                    "sha256", "sha256-mismatch", f"{rel} sha256 mismatch (content changed or damaged)", rel
                )
        check.pending.clear()
        check.hashed = True

    def download(
        self, check: QuickCheck, target: Path, on_bytes: Callable[[int], None] | None = None
    ) -> bool:
        """Download a quick-checked remote folder to `target`, verified as it arrives; False (nothing kept) on a mismatch.

        Written like a local save: a temporary sibling, files fsynced, the remote manifest last,
        renamed into place; a crash or a bad hash leaves no `target`.
        """
        manifest = self.read_bytes(check.path.as_posix(), MANIFEST)
        tmp = tmp_sibling(target)
        remove_tree(tmp)
        tmp.mkdir(parents=True)
        try:
            self.stream(check, into=tmp, on_bytes=on_bytes)
            if not check.ok or manifest is None:
                remove_tree(tmp)
                return False
            for p in tmp.rglob("*"):
                if p.is_file():
                    fsync_file(p)
            atomic_write_text(tmp / MANIFEST, manifest.decode("utf-8"))
            fsync_dir(tmp)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except BaseException:
            remove_tree(tmp)
            raise
        return True


@contextmanager
def byte_progress(description: str, total_bytes: int) -> Iterator[Callable[[int], None]]:
    """A progress bar in MiB for streamed bytes (Rich on a terminal, log lines otherwise); yields the `on_bytes` callback."""
    total = max(1, total_bytes >> 20)
    with progress_bar(f"{description} (MiB)", total) as bar:
        done = {"bytes": 0}

        def on_bytes(n: int) -> None:
            done["bytes"] += n
            mib = min(total, done["bytes"] >> 20)
            if mib > bar.completed:
                bar.update(mib - bar.completed)

        yield on_bytes


def open_remote(url: str) -> Remote:
    """The fsspec filesystem and root of `url`, with one-line errors for an unknown scheme or a missing backend."""
    import fsspec

    scheme = urlsplit(url).scheme
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except ImportError as e:
        extra = _EXTRAS.get(scheme)
        hint = f"pip install 'piperctl[{extra}]'" if extra else f"install the fsspec backend for {scheme}://"
        raise PiperctlError(
            f"{scheme}:// URLs need a package that is not installed ({first_line(e)})", hint=hint
        ) from e
    except ValueError as e:
        raise PiperctlError(
            f"cannot use {redact(url)}: {first_line(e)}",
            hint="use s3://, gs://, az://, hf:// or file:// URLs",
        ) from e
    return Remote(url=url, fs=fs, root=root.rstrip("/") or root)
