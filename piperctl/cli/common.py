"""What every piperctl command shares: its Typer classes, the --debug state, and options several commands take."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from piperctl.cli.help import HelpCommand, HelpGroup

# Every command and group writes its --help through piperctl.cli.help.
COMMAND: dict[str, Any] = {"cls": HelpCommand}


# Where the root callback leaves piperctl's entry point for commands that run it again (forked ranks).
MAIN_KEY = "piperctl.main"


def sub_app(**kwargs: Any) -> typer.Typer:
    """A Typer group of piperctl sub-commands (help on bare call, piperctl's --help layout)."""
    kwargs.setdefault("cls", HelpGroup)
    return typer.Typer(no_args_is_help=True, rich_markup_mode=None, **kwargs)


class _Debug:
    on = False


def set_debug(on: bool) -> None:
    """Remember --debug (from the command line or the root option)."""
    _Debug.on = on


def debug_enabled() -> bool:
    """True with --debug or PIPERCTL_DEBUG=1: errors show their traceback."""
    return _Debug.on or os.environ.get("PIPERCTL_DEBUG", "") not in ("", "0")


Force = Annotated[bool, typer.Option("--force", help="Replace OUT if it is not empty.")]
ModelArg = Annotated[
    Path,
    typer.Argument(
        help="A run folder (its best checkpoint, else its final model), a checkpoint-N folder, or an exported model.",
        metavar="CHECKPOINT_OR_RUN",
    ),
]
Final = Annotated[bool, typer.Option("--final", help="For a run: its final model, not its best checkpoint.")]
