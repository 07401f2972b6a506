"""Terminal output: Rich progress bars on a terminal, plain log lines everywhere else.

The one place piperctl prints to the terminal. Only our own markup is ever interpreted: every
message, path, exception text or other library's output passed to `log`, `fail_line` or `safe` is
escaped, so a `[/x]` in a path is printed as it is instead of breaking the output.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Results (tables, JSON) go to stdout; progress, logs and errors go to stderr so that
# `piperctl ... --json > out.json` stays machine-readable.
out = Console()
err = Console(stderr=True)
# The rank of this process in a multi-process run: only rank 0 logs and draws progress, so N processes
# read like one; the others still print their own errors, marked with their rank.
_rank = 0


# What the user keeps if Ctrl-C stops the command now (innermost last); nothing by default, since
# every folder piperctl writes is staged and renamed into place.
_kept_on_interrupt: list[str] = []


@contextmanager
def keeps_on_interrupt(what: str) -> Iterator[None]:
    """While inside, an interrupt reports `what` as kept instead of 'nothing was written'."""
    _kept_on_interrupt.append(what)
    try:
        yield
    finally:
        _kept_on_interrupt.pop()  # strictly nested: the innermost is last


def interrupted_message() -> str:
    """The one line Ctrl-C prints: what was kept, or that nothing was written."""
    return "interrupted: " + (_kept_on_interrupt[-1] if _kept_on_interrupt else "nothing was written")


def set_rank(rank: int) -> None:
    """Tell the console which rank of a multi-process run this process is (0 when alone)."""
    global _rank
    _rank = rank


def is_interactive() -> bool:
    """True when stderr is a terminal, so live progress bars make sense."""
    return _rank == 0 and err.is_terminal and not err.is_dumb_terminal


def safe(text: object) -> str:
    """`text` as Rich shows it literally: markup escaped, control characters replaced by '?'."""
    return escape("".join(ch if ch.isprintable() or ch in "\n\t" else "?" for ch in str(text)))


def log(message: str) -> None:
    """Print one plain progress/log line on stderr (rank 0 only); the text is never read as markup."""
    if _rank == 0:
        err.print(safe(message), highlight=False, soft_wrap=True)


@dataclass
class Bar:
    """A progress handle: Rich bar on a terminal, throttled log lines otherwise."""

    description: str
    total: int
    progress: Progress | None = None
    task_id: int | None = None
    completed: int = 0
    fields: dict[str, str] = field(default_factory=dict)
    _last_log: float = 0.0
    log_every_s: float = 10.0

    def update(self, advance: int = 1, **fields: object) -> None:
        """Advance the bar and set the extra fields shown beside it."""
        self.completed += advance
        self.fields.update({k: str(v) for k, v in fields.items()})
        if self.progress is not None and self.task_id is not None:
            self.progress.update(self.task_id, advance=advance, info=self._info())
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s or self.completed >= self.total:
            self._last_log = now
            log(f"{self.description}: {self.completed}/{self.total} {self._info()}".rstrip())

    def _info(self) -> str:
        return "  ".join(f"{k} {v}" for k, v in self.fields.items())


@contextmanager
def progress_bar(description: str, total: int, log_every_s: float = 10.0, start: int = 0) -> Iterator[Bar]:
    """Yield a `Bar` for `total` units of work, `start` of them already done (a resumed run), live on a terminal and logged otherwise."""
    bar = Bar(description=description, total=total, completed=start, log_every_s=log_every_s)
    if not is_interactive():
        bar._last_log = time.monotonic()
        log(f"{description}: {start}/{total}")
        yield bar
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        console=err,
        transient=False,
    )
    with progress:
        bar.progress = progress
        bar.task_id = progress.add_task(description, total=total, completed=start, info="")
        yield bar


def fail_line(message: str) -> None:
    """Print the single red error line of the CLI convention (`message` is shown literally)."""
    where = f"\\[rank {_rank}] " if _rank else ""
    err.print(f"{where}[bold red]error:[/] {safe(message)}", highlight=False, soft_wrap=True)
