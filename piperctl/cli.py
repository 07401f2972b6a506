"""The `piperctl` command line: a thin Typer layer over the piperctl core modules."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

try:  # typer >= 0.20 vendors its own copy of click; its exception classes are the ones raised
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer uses the click package
    from click import exceptions as click_exc

from piperctl import __version__
from piperctl.console import fail_line
from piperctl.errors import PiperctlError

app = typer.Typer(
    name="piperctl",
    help="Train LeRobot policies on PiPER arm datasets, with checkpoints you can trust.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
dataset_app = typer.Typer(help="Make and inspect LeRobot datasets.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")


def _debug_enabled() -> bool:
    return "--debug" in sys.argv[1:] or os.environ.get("PIPERCTL_DEBUG", "") not in ("", "0")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"piperctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """Train LeRobot policies on PiPER arm datasets, with checkpoints you can trust."""


# ---------------------------------------------------------------------------------------------
# piperctl dataset ...


@dataset_app.command("synth")
def dataset_synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into (must be new or empty).")],
    episodes: Annotated[int, typer.Option(help="Number of episodes.", min=1)] = 10,
    frames: Annotated[str, typer.Option(help="Frames per episode: N, or a MIN:MAX range.")] = "60:90",
    fps: Annotated[int, typer.Option(help="Frames per second.", min=1)] = 30,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same data.")] = 0,
    cameras: Annotated[
        str, typer.Option(help="Comma-separated camera names, or 'none' for state-only data.")
    ] = "front,wrist",
    image_size: Annotated[str, typer.Option(help="Camera image size as HxW.")] = "96x128",
    video: Annotated[
        bool, typer.Option("--video/--no-video", help="Store cameras as MP4 (lerobot's default) or PNG.")
    ] = True,
    repo_id: Annotated[str, typer.Option(help="repo_id recorded in the dataset.")] = "piperctl/piper_synth",
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it is not empty.")] = False,
) -> None:
    """Write a synthetic PiPER pick-and-place dataset in LeRobot v3.0 format."""
    from piperctl.synth import SynthConfig, parse_cameras, parse_frames, parse_image_size, synthesize

    cfg = SynthConfig(
        episodes=episodes,
        frames=parse_frames(frames),
        fps=fps,
        seed=seed,
        cameras=parse_cameras(cameras),
        image_size=parse_image_size(image_size),
        video=video,
        repo_id=repo_id,
    )
    path = synthesize(out, cfg, force=force)
    typer.echo(f"wrote {cfg.episodes} episodes to {path}")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app with piperctl's one error convention."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_enabled() or "--debug" in args
    try:
        rv = app(args=args, prog_name="piperctl", standalone_mode=False)
    except PiperctlError as e:
        if debug:
            traceback.print_exc()
        fail_line(str(e))
        sys.exit(e.exit_code)
    except click_exc.UsageError as e:
        if debug:
            traceback.print_exc()
        where = f"'{e.ctx.command_path} --help'" if e.ctx is not None else "'piperctl --help'"
        fail_line(f"{e.format_message()} (see {where})")
        sys.exit(2)
    except click_exc.ClickException as e:
        fail_line(e.format_message())
        sys.exit(e.exit_code)
    except (click_exc.Abort, KeyboardInterrupt):
        fail_line("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence against tracebacks for users
        if debug:
            traceback.print_exc()
            sys.exit(1)
        fail_line(f"unexpected {type(e).__name__}: {e} (run with --debug for the traceback)")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
