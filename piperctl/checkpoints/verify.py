"""`piperctl checkpoints verify`: prove checkpoints intact and loadable, reporting every problem found."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from piperctl.checkpoints import format as fmt
from piperctl.checkpoints.deep_checks import DEEP_CHECKS, MODEL
from piperctl.checkpoints.integrity import QuickCheck, hash_pending, scan_checkpoint
from piperctl.console import safe
from piperctl.errors import PiperctlError

# The checks of a report, in the order they run; names and values are part of the --json contract.
CHECKS = ("layout", "manifest", "sha256", *(c.name for c in DEEP_CHECKS))
_QUICK = {"layout", "manifest"}
_CHECKPOINT_ONLY = {c.name for c in DEEP_CHECKS if MODEL not in c.kinds}
JSON_FORMAT = "piperctl-verify"
JSON_VERSION = 1


@dataclass(frozen=True)
class Target:
    """A folder to verify: a resumable `checkpoint` or the final `model` files of a run."""

    path: Path | str  # a local folder, or the URL of a mirrored one (piperctl.checkpoints.remote_inspect)
    kind: str


@dataclass
class Report:
    """The verdict on one checkpoint, with every problem found."""

    target: Target
    mode: str  # "full" | "quick"
    result: QuickCheck
    ran: set[str] = field(default_factory=set)

    @property
    def passed(self) -> bool:
        """True when nothing is wrong with the checkpoint (as far as `mode` looked)."""
        return self.result.ok

    @property
    def step(self) -> int | None:
        """The folder's step; for final model files, the step their manifest records."""
        if self.target.kind == "model" and self.result.manifest is not None:
            step = self.result.manifest.get("step")
            return step if isinstance(step, int) else None
        return self.result.step

    def check_status(self, name: str) -> str:
        """pass | fail | skipped (not run in this mode, or blocked by an earlier problem) | n/a."""
        if any(i.check == name for i in self.result.issues):
            return "fail"
        if self.target.kind == "model" and name in _CHECKPOINT_ONLY:
            return "n/a"
        return "pass" if name in self.ran else "skipped"

    def to_json(self) -> dict:
        """The stable JSON form documented in docs/checkpoint-format.md."""
        return {
            "path": str(self.target.path),
            "kind": self.target.kind,
            "step": self.step,
            "verdict": "pass" if self.passed else "fail",
            "state": self.result.state,
            "checks": {name: self.check_status(name) for name in CHECKS},
            "problems": [
                {"check": i.check, "code": i.code, "file": i.file, "message": i.message}
                for i in self.result.issues
            ],
        }


def find_targets(paths: Sequence[Path]) -> list[Target]:
    """Checkpoint folders named directly, and every checkpoint (plus final model files) of run folders."""
    targets: list[Target] = []
    for path in paths:
        if not path.exists():
            raise PiperctlError(f"{path} does not exist", hint="pass checkpoint-N folders or run folders")
        if not path.is_dir():
            raise PiperctlError(f"{path} is not a folder", hint="pass checkpoint-N folders or run folders")
        if fmt.step_of(path) is not None or (path / fmt.TRAINING_STATE).exists():
            targets.append(Target(path, "checkpoint"))
            continue
        checkpoints = fmt.list_checkpoints(path)
        found = [Target(p, "checkpoint") for p in checkpoints]
        if (path / fmt.MANIFEST).is_file():  # an export, or the final model of a run written before 0.2
            found.append(Target(path, "model"))
        final = path / fmt.PRETRAINED_DIR
        finished = bool(checkpoints) and _finished(checkpoints[-1]) and not (path / fmt.MANIFEST).is_file()
        if final.exists() or finished:
            # A finished run must hold its final model: a missing one is a failure, not a skip.
            found.append(Target(final, "model"))
        if not found:
            raise PiperctlError(
                f"{path} holds no checkpoint-N folders and no model files",
                hint="pass a run folder written by 'piperctl train' or one of its checkpoint-N folders",
            )
        targets += found
    unique: dict[Path, Target] = {}
    for t in targets:
        unique.setdefault(t.path.resolve(), t)
    return list(unique.values())


def _finished(checkpoint: Path) -> bool:
    """True when a checkpoint's training state says it is the run's last step (read without trusting it)."""
    state = fmt.TrainingState.read(checkpoint)
    steps = state.config.get("steps") if state is not None else None
    return state is not None and isinstance(steps, int) and state.step >= steps


def _scan(target: Target) -> QuickCheck:
    if target.kind != "model":
        return scan_checkpoint(target.path)
    layout = fmt.model_layout(target.path, _listed(target.path))
    # Files beside a run's old-style final model (checkpoints, metrics) are the run's, not the model's.
    beside_run = layout is fmt.CHECKPOINT_LAYOUT or (target.path / fmt.RUN_FILE).exists()
    result = scan_checkpoint(target.path, required=layout.files, strict_contents=not beside_run)
    if result.state == "incomplete" and target.path.name == fmt.PRETRAINED_DIR:
        result.add(
            "layout",
            "final-model-missing",
            "the run reached its last step but its final model is missing or incomplete "
            f"(interrupted while saving it): 'piperctl resume {target.path.parent}' writes it",
        )
    return result


def _listed(folder: Path) -> object:
    """The file names a folder's manifest lists (None when it cannot be read: the scan reports why)."""
    try:
        return json.loads((folder / fmt.MANIFEST).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return None


def verify_paths(paths: Sequence[Path], *, quick: bool = False, progress: bool = False) -> list[Report]:
    """Verify every checkpoint under `paths`: layout and sizes; unless `quick`, sha256 and deep loads too."""
    targets = find_targets(paths)
    reports = [Report(t, "quick" if quick else "full", _scan(t)) for t in targets]
    for r in reports:
        r.ran |= _QUICK
    if quick:
        from piperctl.checkpoints.deep_checks import check_base_sizes

        for r in reports:  # a fine-tuning checkpoint's base: there, with its files' sizes
            r.ran |= check_base_sizes(r.result)
        return reports
    from concurrent.futures import ThreadPoolExecutor

    from piperctl.checkpoints.deep_checks import PolicyCache, preload, run_deep_checks
    from piperctl.console import is_interactive, progress_bar

    # Hashing runs in threads without the GIL while this thread imports torch and lerobot (seconds).
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashing = pool.submit(_hash_all, reports, progress)
        preload()
        hashing.result()
    cache = PolicyCache()
    show = progress and is_interactive() and len(reports) > 1
    with progress_bar("loading", len(reports)) if show else nullcontext() as bar:
        for r in reports:
            r.ran |= run_deep_checks(r.result, r.target.kind, cache)
            if bar is not None:
                bar.update(1, last=r.target.path.name)
    return reports


def _hash_all(reports: list[Report], progress: bool) -> None:
    """Hash the files of all checkpoints in one thread pool, so many checkpoints keep every core busy."""
    from piperctl.console import is_interactive, progress_bar

    checks = [r.result for r in reports]
    sizes = {p: _size(p) for c in checks for p in c.pending}
    total_mib = sum(sizes.values()) // (1 << 20)
    for r in reports:
        if r.result.manifest is not None:
            r.ran.add("sha256")
    if not progress or total_mib < 1 or not (is_interactive() or total_mib >= 1024):
        hash_pending(checks)
        return
    with progress_bar("hashing (MiB)", total_mib) as bar:
        done = {"bytes": 0, "mib": 0}

        def on_done(path: Path) -> None:
            done["bytes"] += sizes.get(path, 0)
            mib = done["bytes"] // (1 << 20)
            bar.update(mib - done["mib"])
            done["mib"] = mib

        hash_pending(checks, on_done=on_done)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # vanished since the scan: hashing reports it as unreadable


def print_reports(reports: list[Report], quick: bool) -> None:
    """A Rich table on stdout: checkpoint, verdict, problems; then a one-line summary."""
    from rich.table import Table

    from piperctl.console import out

    table = Table(show_lines=True)
    table.add_column("checkpoint", overflow="fold")
    table.add_column("step", justify="right")
    table.add_column("verdict")
    table.add_column("problems", overflow="fold")
    for r in reports:
        path = r.target.path
        final = str(path).rstrip("/").endswith(fmt.PRETRAINED_DIR) or (
            isinstance(path, Path) and (path / fmt.RUN_FILE).exists()
        )
        label = (" (final model)" if final else " (model)") if r.target.kind == "model" else ""
        name = str(r.target.path) + label
        verdict = "[green]pass[/]" if r.passed else f"[bold red]fail[/] ({r.result.state})"
        problems = "\n".join(f"[{i.code}] {i.message}" for i in r.result.issues) or "-"
        table.add_row(safe(name), "" if r.step is None else str(r.step), verdict, safe(problems))
    out.print(table)
    failed = sum(not r.passed for r in reports)
    what = (
        "manifest and sizes only (--quick: contents not hashed or loaded)"
        if quick
        else "sha256 and deep load"
    )
    if not quick and any(not isinstance(r.target.path, Path) for r in reports):
        what += " (remote checkpoints: sha256 of the streamed files; deep loads need a local copy)"
    status = (
        f"[bold red]{failed} of {len(reports)} failed[/]"
        if failed
        else f"[green]all {len(reports)} passed[/]"
    )
    out.print(f"{status}: {what}", highlight=False)


def reports_json(reports: list[Report], quick: bool) -> dict:
    """The whole `verify --json` document."""
    return {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "mode": "quick" if quick else "full",
        "ok": all(r.passed for r in reports),
        "checkpoints": [r.to_json() for r in reports],
    }
