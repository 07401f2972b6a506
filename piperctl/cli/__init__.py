"""The `piperctl` command line: a thin Typer layer over the piperctl core modules.

One module per command family (dataset, train/resume, checkpoints, export/eval, leakage); this one
assembles them into `app` and runs it under piperctl's one error convention (`main`): an expected
failure prints `error: <what> — <what to do>` on stderr and exits 2, without a traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

try:  # typer >= 0.20 vendors its own copy of click; its exception classes are the ones raised
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer uses the click package
    from click import exceptions as click_exc

from piperctl import __version__
from piperctl.cli import evaluate, train
from piperctl.cli.checkpoints import checkpoints_app
from piperctl.cli.common import COMMAND, MAIN_KEY, debug_enabled, set_debug, sub_app
from piperctl.cli.dataset import dataset_app
from piperctl.cli.help import MAX_WIDTH
from piperctl.cli.leakage import leakage_app
from piperctl.console import fail_line, interrupted_message
from piperctl.errors import PiperctlError, from_os_error

app = sub_app(
    name="piperctl",
    help="Train LeRobot policies on PiPER arm datasets, with checkpoints you can trust.",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": MAX_WIDTH},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"piperctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """Train LeRobot policies on PiPER arm datasets, with checkpoints you can trust."""
    set_debug(debug_enabled() or debug)
    ctx.meta[MAIN_KEY] = main


app.command("train", **COMMAND)(train.train_cmd)
app.command("resume", **COMMAND)(train.resume_cmd)
app.command("export", **COMMAND)(evaluate.export_cmd)
app.command("eval", **COMMAND)(evaluate.eval_cmd)
app.add_typer(dataset_app, name="dataset")
app.add_typer(checkpoints_app, name="checkpoints")
app.add_typer(leakage_app, name="leakage")


class _Interrupted(BaseException):
    """Ctrl-C in a command. Not a KeyboardInterrupt, which typer turns into a silent exit 130; not an
    Exception, which a broad `except Exception` on the way up could swallow."""


def _interrupt_once(signum: int, frame: object) -> None:
    """Ctrl-C: stop the command once, then ignore SIGINT so that the interrupt line gets printed.

    polars takes a SIGINT, raises it as an exception and delivers the signal again: with Python's
    own handler that second one could strike while the line was being printed.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # What is kept is decided now: the code on the way up may leave the places that said so.
    raise _Interrupted(interrupted_message())


@contextmanager
def _interrupts_reported() -> Iterator[None]:
    """Route SIGINT through `_interrupt_once` while a command runs (where Python's default handler is in place)."""
    previous = signal.getsignal(signal.SIGINT)
    # A parent that ignores SIGINT (a background job) keeps it ignored; a thread cannot set handlers.
    mine = previous is signal.default_int_handler and threading.current_thread() is threading.main_thread()
    if mine:
        signal.signal(signal.SIGINT, _interrupt_once)
    try:
        yield
    finally:
        if mine:
            signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app with piperctl's one error convention."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Also before the root callback has run (a usage error), or when --debug follows a sub-command.
    set_debug("--debug" in args)
    with _interrupts_reported():
        _run(args)


def _run(args: list[str]) -> None:
    """Run the app on `args` and exit with piperctl's codes: 0, 1 (a check failed), 2 (user error), 130."""
    try:
        rv = app(args=args, prog_name="piperctl", standalone_mode=False)
    except PiperctlError as e:
        if debug_enabled():
            traceback.print_exc()
        if not e.silent:  # another rank of a multi-process run reports the same error
            fail_line(str(e))
        sys.exit(e.exit_code)
    except click_exc.UsageError as e:
        if isinstance(e, click_exc.NoArgsIsHelpError):
            typer.echo(e.format_message())  # the help page; like click, a bare group call is a usage error
            sys.exit(2)
        if not e.format_message().strip():
            sys.exit(2)
        if debug_enabled():
            traceback.print_exc()
        where = f"'{e.ctx.command_path} --help'" if e.ctx is not None else "'piperctl --help'"
        fail_line(f"{e.format_message()} (see {where})")
        sys.exit(2)
    except click_exc.ClickException as e:
        fail_line(e.format_message())
        sys.exit(e.exit_code)
    except OSError as e:
        # No permission, disk full, a read-only folder, a symlink loop: the user's to fix, not a bug.
        if debug_enabled():
            traceback.print_exc()
        fail_line(str(from_os_error(e)))
        sys.exit(2)
    except _Interrupted as e:
        fail_line(str(e))
        sys.exit(130)
    except (typer.Abort, KeyboardInterrupt):  # typer >= 0.20 has no click_exc.Abort
        fail_line(interrupted_message())
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence against tracebacks for users
        if debug_enabled():
            traceback.print_exc()
            sys.exit(1)
        fail_line(f"unexpected {type(e).__name__}: {e} (run with --debug for the traceback)")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
