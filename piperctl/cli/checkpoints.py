"""`piperctl checkpoints list|verify`: see a run's checkpoints and prove them intact (piperctl.checkpoints does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from piperctl.cli.common import COMMAND, sub_app

checkpoints_app = sub_app(help="See a run's checkpoints and prove them intact and loadable.")


@checkpoints_app.command("list", **COMMAND)
def checkpoints_list(
    run_dir: Annotated[
        str,
        typer.Argument(
            help="Run folder (default: the current folder), or a --mirror URL.",
            metavar="RUN_DIR",
            show_default=False,
        ),
    ] = ".",
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON list (see docs/checkpoint-format.md).")
    ] = False,
) -> None:
    """Checkpoints of a run, newest last: losses, size, state, and which one 'resume' would pick."""
    import json

    from piperctl.checkpoints.listing import list_run, print_rows
    from piperctl.checkpoints.remote import is_url, redact

    if is_url(run_dir):
        from piperctl.checkpoints.remote_inspect import list_remote

        rows, shown = list_remote(run_dir), redact(run_dir)
    else:
        rows, shown = list_run(Path(run_dir)), Path(run_dir)
    if json_out:
        typer.echo(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        print_rows(shown, rows)


@checkpoints_app.command("verify", **COMMAND)
def checkpoints_verify(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="checkpoint-N folders or run folders (default: the current folder), or --mirror URLs.",
            show_default=False,
            metavar="PATH",
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Manifest and sizes only: no hashing, no loading (for huge runs).")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (see docs/checkpoint-format.md).")
    ] = False,
) -> None:
    """Check every file against the manifest (sha256) and load every part; exit 1 if any checkpoint fails."""
    import json

    from piperctl.checkpoints.remote import is_url
    from piperctl.checkpoints.verify import print_reports, reports_json, verify_paths

    reports = []
    local: list[Path] = []
    for path in paths or ["."]:
        if not is_url(path):
            local.append(Path(path))
            continue
        from piperctl.checkpoints.remote_inspect import verify_remote

        if local:  # keep the order given; local folders are hashed together
            reports += verify_paths(local, quick=quick, progress=not json_out)
            local = []
        reports += verify_remote(path, quick=quick, progress=not json_out)
    if local:
        reports += verify_paths(local, quick=quick, progress=not json_out)
    if json_out:
        typer.echo(json.dumps(reports_json(reports, quick), indent=2))
    else:
        print_reports(reports, quick)
    raise typer.Exit(0 if all(r.passed for r in reports) else 1)
