"""`checkpoints list URL` and `checkpoints verify URL`: a mirrored run, inspected where it lies.

`list` reads the manifests and file sizes (no content); `verify` streams every file and compares
its sha256 with the manifest (`--quick`: manifests and sizes only). The deep loads of a local
`verify` (safetensors headers, policy, optimizer, processors) need the files on disk: remotely they
are `skipped`; `piperctl resume URL` downloads with the same hash check.
"""

from __future__ import annotations

import json

from piperctl.checkpoints import format as fmt
from piperctl.checkpoints.integrity import QuickCheck
from piperctl.checkpoints.listing import Row, loss_series, row_for, timings
from piperctl.checkpoints.remote import Remote, byte_progress, open_remote, remote_error, split_checkpoint
from piperctl.checkpoints.verify import Report, Target
from piperctl.errors import PiperctlError


def list_remote(url: str) -> list[Row]:
    """Rows for every checkpoint-N folder at a mirror URL, oldest first; marks what `resume URL` would pick.

    A remote row is checked by manifest and sizes (`checked: "size"`); its pick is the newest complete one.
    """
    run_url, one = split_checkpoint(url)
    if one is not None:
        raise PiperctlError(
            f"{url} is a checkpoint, not a run", hint=f"list its run: 'piperctl checkpoints list {run_url}'"
        )
    remote = open_remote(run_url)
    try:
        return _rows(remote)
    except PiperctlError:
        raise
    except Exception as e:
        raise remote_error(e, "list", remote.shown) from e


def _rows(remote: Remote) -> list[Row]:
    names = remote.list_checkpoints()
    if not names and remote.read_bytes(fmt.RUN_FILE) is None:
        raise PiperctlError(
            f"{remote.shown} holds no checkpoint-N folders and is not a mirrored piperctl run",
            hint="pass the URL given to --mirror",
        )
    checks = [remote.scan(n) for n in names]
    picked = next((c for c in reversed(checks) if c.ok), None)
    metrics = fmt.parse_metrics((remote.read_bytes(fmt.METRICS_FILE) or b"").decode("utf-8", "replace"))
    train, val = loss_series(metrics)
    times = timings(metrics)
    best = _best_step(remote, picked)
    rows = []
    for check in checks:
        created = (check.manifest or {}).get("created")
        name = check.path.as_posix()
        rows.append(
            row_for(
                check,
                train,
                val,
                path=remote.display(name),
                written=created if isinstance(created, str) else None,
                checked="size",
                resume=check is picked,
                best=best == (check.step or 0),
                **times.get(name, {}),
            )
        )
    return rows


def _best_step(remote: Remote, newest: QuickCheck | None) -> int | None:
    """The best step the newest complete checkpoint's training state records (read, not trusted)."""
    if newest is None:
        return None
    raw = remote.read_bytes(newest.path.as_posix(), fmt.TRAINING_STATE)
    try:
        best = fmt.BestCheckpoint.from_json(json.loads(raw).get("best")) if raw else None
    except (ValueError, AttributeError):
        return None
    return best.step if best is not None else None


def verify_remote(url: str, *, quick: bool = False, progress: bool = False) -> list[Report]:
    """Verify a mirrored run (or one of its checkpoints): manifests and sizes; unless `quick`, sha256 of every file streamed."""
    run_url, one = split_checkpoint(url)
    remote = open_remote(run_url)
    try:
        names = [one] if one is not None else remote.list_checkpoints()
        targets = [(n, "checkpoint") for n in names]
        final = remote.files(fmt.PRETRAINED_DIR)
        if one is None and (
            final or remote.read_bytes(fmt.RUN_FILE) is not None and _finished(remote, names)
        ):
            targets.append((fmt.PRETRAINED_DIR, "model"))
        if not targets:
            raise PiperctlError(
                f"{remote.shown} holds no checkpoint-N folders and no final model",
                hint="pass the URL given to --mirror",
            )
        reports = []
        for name, kind in targets:
            required = fmt.LEROBOT_LAYOUT.files if kind == "model" else fmt.REQUIRED_FILES
            check = remote.scan(name, required=required)
            if kind == "model" and check.state == "incomplete":
                check.add(
                    "layout", "final-model-missing", "the run's final model is not (completely) on the remote"
                )
            report = Report(Target(remote.display(name), kind), "quick" if quick else "full", check)
            report.ran |= {"layout", "manifest"}
            if not quick and check.manifest is not None:
                if progress:
                    with byte_progress(f"hashing {name}", check.size_bytes) as on_bytes:
                        remote.stream(check, on_bytes=on_bytes)
                else:
                    remote.stream(check)
                report.ran.add("sha256")
            reports.append(report)
        return reports
    except PiperctlError:
        raise
    except Exception as e:
        raise remote_error(e, "verify", remote.shown) from e


def _finished(remote: Remote, names: list[str]) -> bool:
    """True when the newest remote checkpoint's training state says it is the run's last step."""
    if not names:
        return False
    raw = remote.read_bytes(names[-1], fmt.TRAINING_STATE)
    try:
        data = json.loads(raw) if raw else {}
        steps = data.get("config", {}).get("steps")
        return isinstance(steps, int) and data.get("step", -1) >= steps
    except (ValueError, AttributeError):
        return False
