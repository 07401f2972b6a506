"""`piperctl resume URL`: pick the checkpoint to continue from (remote or local, the newer intact one) and download it.

A remote checkpoint counts only once its manifest is there (the mirror's commit marker) and every
file's sha256, computed while it downloads, matches it; the download is published into the local
run folder like a local save (temporary folder, manifest last, rename), so the normal `resume` then
checks and continues from it.
"""

from __future__ import annotations

import json
from pathlib import Path

from piperctl.checkpoints.atomic import atomic_write_text
from piperctl.checkpoints.format import METRICS_FILE, RUN_FILE, list_checkpoints, step_of
from piperctl.checkpoints.lock import RunLock
from piperctl.checkpoints.manager import find_resumable, read_run_file
from piperctl.checkpoints.remote import Remote, byte_progress, open_remote, remote_error, split_checkpoint
from piperctl.console import log
from piperctl.errors import PiperctlError


def pull(url: str, output_dir: Path | None, lock: RunLock) -> tuple[Path, str]:
    """The local checkpoint folder to resume from (downloaded when the remote one is newer) and the run's URL.

    Takes the local run folder's lock (kept by `lock`) before touching it.
    """
    run_url, wanted = split_checkpoint(url)
    remote = open_remote(run_url)
    try:
        return _pull(remote, run_url, wanted, output_dir, lock)
    except (PiperctlError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise remote_error(e, "resume from", remote.shown) from e


def _pull(
    remote: Remote, run_url: str, wanted: str | None, output_dir: Path | None, lock: RunLock
) -> tuple[Path, str]:
    raw_run = remote.read_bytes(RUN_FILE)
    remote_run = _json(raw_run)
    names = remote.list_checkpoints()
    if raw_run is None and not names:
        raise PiperctlError(
            f"{remote.shown} holds no piperctl run (no run.json, no checkpoint-N)",
            hint="pass the URL given to --mirror",
        )
    run_dir = output_dir if output_dir is not None else Path(_run_name(remote, remote_run))
    lock.acquire(run_dir)
    local_run = read_run_file(run_dir)
    remote_id = remote_run.get("run_id") if remote_run else None
    if local_run is not None and remote_id is not None and local_run.run_id != remote_id:
        raise PiperctlError(
            f"{run_dir} holds another run ({local_run.run_id}) than {remote.shown} ({remote_id})",
            hint="pass --output-dir with a new folder",
        )
    local = _local_pick(run_dir, wanted)
    local_step = step_of(local) if local is not None else None
    candidates = [wanted] if wanted is not None else names[::-1]
    if wanted is not None and wanted not in names:
        raise PiperctlError(
            f"{remote.display(wanted)} does not exist", hint=f"see 'piperctl checkpoints list {remote.shown}'"
        )
    for name in candidates:
        step = step_of(Path(name)) or 0
        if local is not None and local_step is not None and local_step >= step:
            break
        check = remote.scan(name)
        if not check.ok:
            log(f"skipping {remote.display(name)}: {check.state}: {'; '.join(check.problems)}")
            continue
        target = run_dir / name
        if target.exists():
            raise PiperctlError(
                f"{target} exists but is not intact, and {remote.display(name)} is",
                hint="move the local folder away, then run the command again",
            )
        log(
            f"downloading {remote.display(name)} (checked against its manifest while it downloads) into {run_dir}"
        )
        with byte_progress(f"downloading {name}", check.size_bytes) as on_bytes:
            intact = remote.download(check, target, on_bytes)
        if not intact:
            log(f"skipping {remote.display(name)}: corrupt: {'; '.join(check.problems)}")
            continue
        _fetch_run_files(remote, run_dir, step, raw_run, local_run is None)
        where = f"newer than the local {local.name}" if local is not None else f"nothing local in {run_dir}"
        log(f"resuming from {remote.display(name)} (step {step}; {where})")
        return target, run_url
    if local is not None:
        log(
            f"resuming from the local {local} (step {local_step}): as new as the newest intact checkpoint on {remote.shown}"
        )
        return local, run_url
    raise PiperctlError(
        f"no intact checkpoint on {remote.shown}",
        hint=f"'piperctl checkpoints verify {remote.shown}' shows what is wrong",
    )


def _local_pick(run_dir: Path, wanted: str | None) -> Path | None:
    """The local checkpoint that competes with the remote: `wanted` if intact locally, else the newest intact one."""
    if not list_checkpoints(run_dir):
        return None
    try:
        folder, skipped = find_resumable(run_dir)
    except PiperctlError:
        return None
    for p, why in skipped:
        log(f"local {p.name} skipped: {why}")
    if wanted is not None:
        return folder if folder.name == wanted else None
    return folder


def _fetch_run_files(
    remote: Remote, run_dir: Path, step: int, raw_run: bytes | None, no_local_run: bool
) -> None:
    """run.json when the local folder has none; metrics.jsonl when the remote one reaches further (atomic writes)."""
    if no_local_run and raw_run is not None:
        atomic_write_text(run_dir / RUN_FILE, raw_run.decode("utf-8"))
    raw = remote.read_bytes(METRICS_FILE)
    if raw is None:
        return
    local = run_dir / METRICS_FILE
    if _last_step(raw.decode("utf-8", "replace")) >= max(
        step, _last_step(local.read_text("utf-8", "replace")) if local.is_file() else -1
    ):
        atomic_write_text(local, raw.decode("utf-8", "replace"))


def _last_step(text: str) -> int:
    steps = [r.get("step") for r in map(_json_line, text.splitlines()) if isinstance(r, dict)]
    return max((s for s in steps if isinstance(s, int)), default=-1)


def _json_line(line: str) -> object:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _json(raw: bytes | None) -> dict | None:
    data = _json_line(raw.decode("utf-8", "replace")) if raw is not None else None
    return data if isinstance(data, dict) else None


def _run_name(remote: Remote, run: dict | None) -> str:
    """The default local folder: the remote folder's name (else the run id)."""
    name = remote.root.rstrip("/").rpartition("/")[2]
    if not name or name in (".", ".."):
        name = str((run or {}).get("run_id") or "run")
    return name
