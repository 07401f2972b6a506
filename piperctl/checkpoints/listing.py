"""`piperctl checkpoints list`: the checkpoints of a run with their losses, state and resume pick."""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.filesize import decimal

from piperctl.checkpoints import format as fmt
from piperctl.checkpoints.integrity import QuickCheck, scan_checkpoint
from piperctl.checkpoints.manager import pick_resumable
from piperctl.console import safe
from piperctl.errors import PiperctlError


@dataclass
class Row:
    """One checkpoint of a run as `list` shows it."""

    step: int
    path: Path | str  # a local folder, or the URL of a mirrored one
    written: str | None
    size_bytes: int
    train_loss: float | None
    train_loss_step: int | None
    val_loss: float | None
    val_loss_step: int | None
    state: str
    checked: str  # "sha256" when the contents were hashed, "size" when only the quick check ran
    resume: bool
    problems: list[str] = field(default_factory=list)
    best: bool = False  # the run's best checkpoint (lowest validation metric); `export RUN` exports it
    # Seconds from metrics.jsonl: writing the checkpoint, the training loop's wait for it, its upload.
    save_s: float | None = None
    stall_s: float | None = None
    upload_s: float | None = None

    def to_json(self) -> dict:
        """The stable JSON form documented in docs/checkpoint-format.md."""
        return {
            "step": self.step,
            "path": str(self.path),
            "written": self.written,
            "size_bytes": self.size_bytes,
            "train_loss": self.train_loss,
            "train_loss_step": self.train_loss_step,
            "val_loss": self.val_loss,
            "val_loss_step": self.val_loss_step,
            "state": self.state,
            "checked": self.checked,
            "resume": self.resume,
            "best": self.best,
            "problems": self.problems,
            "save_s": self.save_s,
            "stall_s": self.stall_s,
            "upload_s": self.upload_s,
        }


def timings(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Checkpoint name -> its save_s, stall_s and upload_s (the last recorded of each) from metrics.jsonl rows."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        name = r.get("checkpoint")
        if isinstance(name, str):
            for key in ("save_s", "stall_s", "upload_s"):
                if isinstance(r.get(key), int | float):
                    out.setdefault(name, {})[key] = float(r[key])
    return out


class Series:
    """Values of one metric by step, for 'the latest value at or before step N' look-ups."""

    def __init__(self, points: list[tuple[int, float]]) -> None:
        points.sort()
        self.steps = [s for s, _ in points]
        self.values = [v for _, v in points]

    def at_or_before(self, step: int) -> tuple[float | None, int | None]:
        i = bisect.bisect_right(self.steps, step)
        return (self.values[i - 1], self.steps[i - 1]) if i else (None, None)


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _written(check: QuickCheck) -> str | None:
    created = (check.manifest or {}).get("created")
    if isinstance(created, str):
        return created
    try:
        return _utc(check.path.stat().st_mtime)
    except OSError:
        return None


def list_run(run_dir: Path) -> list[Row]:
    """Rows for every checkpoint-N folder of `run_dir`, oldest first; marks the one `resume` would pick."""
    if not run_dir.exists():
        raise PiperctlError(f"{run_dir} does not exist", hint="pass a run folder written by 'piperctl train'")
    if not run_dir.is_dir():
        raise PiperctlError(
            f"{run_dir} is not a folder", hint="pass a run folder written by 'piperctl train'"
        )
    if fmt.step_of(run_dir) is not None or (run_dir / fmt.TRAINING_STATE).exists():
        raise PiperctlError(
            f"{run_dir} is a checkpoint, not a run folder",
            hint=f"list its run with 'piperctl checkpoints list {run_dir.parent}'",
        )
    folders = fmt.list_checkpoints(run_dir)
    if not folders and not (run_dir / fmt.RUN_FILE).is_file():
        raise PiperctlError(
            f"{run_dir} holds no checkpoint-N folders and is not a piperctl run folder",
            hint="pass a run folder written by 'piperctl train'",
        )
    checks = [scan_checkpoint(p) for p in folders]
    # Same rule as `piperctl resume RUN_DIR`, hashing only the candidates it would have to hash.
    picked, _ = pick_resumable(checks)
    rows = fmt.read_metrics(run_dir / fmt.METRICS_FILE)
    train, val = loss_series(rows)
    from piperctl.checkpoints.sources import find_best

    best = find_best(run_dir)
    best_path = best[1].resolve() if best is not None else None
    times = timings(rows)
    return [
        row_for(
            check,
            train,
            val,
            path=check.path,
            written=_written(check),
            checked="sha256" if check.hashed else "size",
            resume=check is picked,
            best=best_path is not None and check.path.resolve() == best_path,
            **times.get(check.path.name, {}),
        )
        for check in checks
    ]


def loss_series(rows: list[dict]) -> tuple[Series, Series]:
    """The training and validation losses recorded in metrics.jsonl rows, by step."""
    train = Series([(r["step"], float(r["loss"])) for r in rows if isinstance(r.get("loss"), int | float)])
    val = Series(
        [(r["step"], float(r["val_loss"])) for r in rows if isinstance(r.get("val_loss"), int | float)]
    )
    return train, val


def row_for(check: QuickCheck, train: Series, val: Series, **fields: Any) -> Row:
    """The row of one checkpoint: its step, size, state, problems and the losses at or before its step, plus `fields`."""
    step = check.step if check.step is not None else 0
    loss, loss_step = train.at_or_before(step)
    vloss, vloss_step = val.at_or_before(step)
    return Row(
        step=step,
        size_bytes=check.size_bytes,
        train_loss=loss,
        train_loss_step=loss_step,
        val_loss=vloss,
        val_loss_step=vloss_step,
        state=check.state,
        problems=list(check.problems),
        **fields,
    )


def _loss(value: float | None, at: int | None, step: int) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if at == step else f"{value:.4g} @{at}"


def _name(path: Path | str) -> str:
    return str(path).rstrip("/").rpartition("/")[2]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def dataset_lines(rows: list[Row]) -> list[str]:
    """What the run trains on, as its newest readable training state records it: one line per dataset."""
    state = next((s for r in reversed(rows) if (s := fmt.TrainingState.read(r.path)) is not None), None)
    if state is None:
        return []
    lines = []
    for d in state.all_datasets:
        where = d.root or (f"{d.id}@{d.revision}" if d.revision else d.id)
        extra = "".join(f", {k} -> {v}" for k, v in d.rename_map.items())
        extra += "".join(f", {g} {d.units.get(g, '?')} -> {u}" for g, u in d.converted_to.items())
        extra += f", weight {d.weight:g}" if d.weight is not None else ""
        ident = f"Hub commit {d.commit[:12]}" if d.commit else f"fingerprint {d.fingerprint[:12]}"
        lines.append(
            f"dataset {where}: {len(d.train_episodes)} train / {len(d.val_episodes)} val episodes, "
            f"{d.total_frames} frames, {ident}{extra}"
        )
    return lines


def print_rows(run_dir: Path | str, rows: list[Row]) -> None:
    """A Rich table of the rows on stdout, newest last, with the resume pick marked, then any problems."""
    from rich import box
    from rich.table import Table

    from piperctl.console import err, out

    if not rows:
        err.print(f"no checkpoints yet in {safe(str(run_dir))}", highlight=False)
        return
    table = Table(
        title=f"checkpoints of {safe(str(run_dir))}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        show_edge=False,
    )
    for name, justify in (
        ("step", "right"),
        ("written (UTC)", "left"),
        ("size", "right"),
        ("train loss", "right"),
        ("val loss", "right"),
        ("state", "left"),
        ("pick", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)
    timed = [k for k in ("save_s", "stall_s", "upload_s") if any(getattr(r, k) is not None for r in rows)]
    timing_head = "/".join(k[:-2] for k in timed) + " s"
    # The seconds get a column where the terminal is wide enough; otherwise a line under the table.
    wide = bool(timed) and out.width >= 100
    if wide:
        table.add_column(timing_head, justify="right", no_wrap=True)
    colour = {"complete": "green", "incomplete": "yellow", "corrupt": "bold red"}
    for r in rows:
        table.add_row(
            str(r.step),
            (r.written or "-").replace("T", " ")[:16],
            decimal(r.size_bytes),
            _loss(r.train_loss, r.train_loss_step, r.step),
            _loss(r.val_loss, r.val_loss_step, r.step),
            f"[{colour.get(r.state, 'red')}]{r.state}[/]",
            " ".join(
                m
                for m in ("[bold]<- resume[/]" if r.resume else "", "[bold green]best[/]" if r.best else "")
                if m
            ),
            *(["/".join(_seconds(getattr(r, k)) for k in timed)] if wide else []),
        )
    out.print(table)
    if timed and not wide:
        times = ", ".join(f"{r.step}: " + "/".join(_seconds(getattr(r, k)) for k in timed) for r in rows)
        out.print(f"{timing_head} by step: {times}", highlight=False, soft_wrap=True)
    for line in dataset_lines(rows):
        out.print(safe(line), highlight=False, soft_wrap=True)
    for r in rows:
        if r.problems:
            more = f" (+{len(r.problems) - 1} more)" if len(r.problems) > 1 else ""
            out.print(f"{safe(_name(r.path))} ({r.state}): {safe(r.problems[0])}{more}", highlight=False)
    if not any(r.resume for r in rows):
        out.print(
            "[bold red]no intact checkpoint: 'piperctl resume' would refuse this run[/]", highlight=False
        )
    out.print(
        "state: manifest and sizes (the resume pick is also hashed); "
        "'piperctl checkpoints verify' checks everything",
        style="dim",
        highlight=False,
    )
    if not isinstance(run_dir, Path):
        return
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(fmt.TMP_PREFIX)]
    if leftovers:
        out.print(
            f"{len(leftovers)} unfinished save(s) ({safe(', '.join(sorted(leftovers)))}) "
            "will be removed when the run is resumed",
            highlight=False,
        )
