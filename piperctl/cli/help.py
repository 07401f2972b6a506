"""`--help` as plain text that fits the terminal: option names always whole, COLUMNS honoured.

Typer's Rich help squeezes six table columns into the width and cuts what does not fit
(`--resume-from-…`), and Typer's own plain help writes `{src}` and `<bool>` placeholders. These
command classes write click's classic layout instead: `--name METAVAR` on the left (a long one on a
line of its own), the help wrapped beside it, one section per help panel. Words are never broken at
hyphens, so an option named in a help text stays whole too.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

if TYPE_CHECKING:
    from click import Command, HelpFormatter, Parameter

# Readable lines on a wide terminal; the terminal's own width (COLUMNS first) when narrower.
MAX_WIDTH = 100
_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN"}


def help_width() -> int:
    """The width of --help: COLUMNS, else the terminal's, else 80 (a pipe); at most MAX_WIDTH."""
    return max(40, min(shutil.get_terminal_size().columns, MAX_WIDTH) - 1)


def metavar(param: Parameter, ctx: typer.Context) -> str:
    """The placeholder of an argument or a valued option: its declared metavar, else click's name of its type."""
    if param.metavar:
        return param.metavar
    if isinstance(param, TyperArgument):
        return (param.name or "").upper()
    label = param.display_type(ctx).strip("<>")
    if "|" in label:  # a choice
        return f"[{label}]"
    label = label.removeprefix("list[").removesuffix("]")  # a repeatable option takes one value each time
    base, _, rest = label.partition(" ")  # "int range"
    return " ".join([_TYPE_NAMES.get(base, base.upper()), *([rest.upper()] if rest else [])])


def _usage_piece(arg: TyperArgument, ctx: typer.Context) -> str:
    name = metavar(arg, ctx)
    if arg.nargs != 1:
        name += "..."
    return name if arg.required else f"[{name}]"


def _option_names(param: Parameter, ctx: typer.Context) -> str:
    def names(opts: Iterable[str]) -> str:
        return ", ".join(sorted(opts, key=lambda o: len(o) - len(o.lstrip("-"))))

    text = names(param.opts)
    if param.secondary_opts:
        text += " / " + names(param.secondary_opts)
    if not (getattr(param, "is_flag", False) or getattr(param, "count", False)):
        text += " " + metavar(param, ctx)
    return text


def _wrap(text: str, width: int, indent: str = "", first: str | None = None) -> list[str]:
    wrapper = textwrap.TextWrapper(
        width=width,
        initial_indent=indent if first is None else first,
        subsequent_indent=indent,
        break_on_hyphens=False,  # `--save-every` stays one word
    )
    return wrapper.wrap(" ".join(text.split())) or [(indent if first is None else first).rstrip()]


def _rows(rows: list[tuple[str, str]], width: int) -> list[str]:
    """Two columns: the names whole, the help wrapped beside them (or below a long name)."""
    # As click: names up to 30 wide (a third of a narrow page) share their line with the help.
    left = min(max((len(n) for n, _ in rows), default=0), 30, width // 3) + 2
    lines: list[str] = []
    for name, text in rows:
        pad = " " * (2 + left)
        if len(name) > left - 2:
            lines.append(f"  {name}")
            lines += _wrap(text, width, pad) if text else []
        else:
            lines += _wrap(text, width, pad, first=f"  {name}".ljust(2 + left))
    return lines


def _help_text(command: Command, width: int) -> list[str]:
    paragraphs = [p for p in (command.help or "").split("\n\n") if p.strip()]
    lines: list[str] = []
    for p in paragraphs:
        lines += ["", *_wrap(p, width, "  ")]
    return lines


def render_help(command: Command, ctx: typer.Context) -> str:
    """The whole --help page of `command`."""
    width = help_width()
    params = command.get_params(ctx)
    pieces = ["[OPTIONS]"]
    if isinstance(command, TyperGroup):
        pieces.append("COMMAND [ARGS]...")
    pieces += [_usage_piece(p, ctx) for p in params if isinstance(p, TyperArgument)]
    lines = _wrap(
        " ".join(pieces), width, " " * (len(f"Usage: {ctx.command_path} ")), f"Usage: {ctx.command_path} "
    )
    lines += _help_text(command, width)
    sections: dict[str, list[tuple[str, str]]] = {}
    for param in params:
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if isinstance(param, TyperArgument):
            sections.setdefault("Arguments", []).append((metavar(param, ctx), record[1]))
        else:
            panel = getattr(param, "rich_help_panel", None) or "Options"
            sections.setdefault(panel, []).append((_option_names(param, ctx), record[1]))
    if isinstance(command, TyperGroup):
        names = command.list_commands(ctx)
        limit = width - 6 - max((len(n) for n in names), default=0)
        commands = [
            (n, command.commands[n].get_short_help_str(limit))
            for n in names
            if not command.commands[n].hidden
        ]
        if commands:
            sections["Commands"] = commands
    order = [
        "Arguments",
        "Options",
        *[s for s in sections if s not in ("Arguments", "Options", "Commands")],
        "Commands",
    ]
    for title in order:
        if title in sections:
            lines += ["", f"{title}:", *_rows(sections[title], width)]
    return "\n".join(lines) + "\n"


class HelpCommand(TyperCommand):
    """A Typer command whose --help is `render_help`'s."""

    def format_help(self, ctx: typer.Context, formatter: HelpFormatter) -> None:
        """Write the help page."""
        formatter.write(render_help(self, ctx))


class HelpGroup(TyperGroup):
    """A Typer group whose --help is `render_help`'s."""

    def format_help(self, ctx: typer.Context, formatter: HelpFormatter) -> None:
        """Write the help page."""
        formatter.write(render_help(self, ctx))
