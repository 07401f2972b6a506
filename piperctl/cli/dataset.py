"""`piperctl dataset synth|convert`: make LeRobot datasets (the work is in piperctl.datasets)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from piperctl.cli.common import COMMAND, Force, sub_app
from piperctl.defaults import TOLERANCE_S

dataset_app = sub_app(help="Make and inspect LeRobot datasets.")


@dataset_app.command("synth", **COMMAND)
def dataset_synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into (must be new or empty).")],
    episodes: Annotated[int, typer.Option(help="Number of episodes.", min=1)] = 10,
    frames: Annotated[str, typer.Option(help="Frames per episode: N, or a MIN:MAX range.")] = "60:90",
    fps: Annotated[int, typer.Option(help="Frames per second.", min=1)] = 30,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same data.")] = 0,
    cameras: Annotated[
        str, typer.Option(help="Comma-separated camera names, or 'none' for state-only data.")
    ] = "front,wrist",
    image_size: Annotated[str, typer.Option(help="Camera image size as HxW (e.g. 480x640).")] = "96x128",
    video: Annotated[
        bool, typer.Option("--video/--no-video", help="Store cameras as MP4 (lerobot's default) or PNG.")
    ] = True,
    repo_id: Annotated[str, typer.Option(help="repo_id recorded in the dataset.")] = "piperctl/piper_synth",
    rest_frames: Annotated[
        int,
        typer.Option(
            help="Frames every episode holds one shared home pose before and after the motion (added to --frames).",
            min=0,
        ),
    ] = 0,
    units: Annotated[
        str,
        typer.Option(
            help="Joint units of state and action: radians (gripper in m), degrees (gripper in mm), "
            "percent (joints -100..100 over their range, gripper 0..100)."
        ),
    ] = "radians",
    names: Annotated[
        str,
        typer.Option(
            help="Feature names: 'joint' (joint_1 ... gripper) or 'pos' (joint_1.pos ... gripper.pos)."
        ),
    ] = "joint",
    action_names: Annotated[
        str,
        typer.Option(
            help="Action: 'joints' (7-dim, like the state) or 'so101' (6-dim, SO-101 leader names shoulder_pan ... gripper)."
        ),
    ] = "joints",
    timestamp_jitter: Annotated[
        float,
        typer.Option(
            help="Store timestamps as frame_index/fps + U(0, S) seconds, like wall-clock recorders (videos unchanged).",
            min=0.0,
        ),
    ] = 0.0,
    version: Annotated[
        str, typer.Option(help="LeRobot format: v3.0, or v2.1 (one parquet and MP4 per episode).")
    ] = "v3.0",
    env_state: Annotated[
        bool,
        typer.Option(
            "--env-state",
            help="Also record observation.environment_state (the cube's xyz): ACT and diffusion then train without cameras.",
        ),
    ] = False,
    force: Force = False,
) -> None:
    """Write a synthetic PiPER pick-and-place dataset (LeRobot v3.0, or v2.1 with --version)."""
    from piperctl.datasets.synth import SynthConfig, parse_cameras, parse_frames, parse_image_size, synthesize

    cfg = SynthConfig(
        episodes=episodes,
        frames=parse_frames(frames),
        fps=fps,
        seed=seed,
        cameras=parse_cameras(cameras),
        image_size=parse_image_size(image_size),
        video=video,
        repo_id=repo_id,
        rest_frames=rest_frames,
        units=units,
        names=names,
        action=action_names,
        timestamp_jitter_s=timestamp_jitter,
        version=version,
        env_state=env_state,
    )
    path = synthesize(out, cfg, force=force)
    typer.echo(
        f"wrote {cfg.episodes} episodes to {path}" + (" (LeRobot v2.1)" if cfg.version == "v2.1" else "")
    )


@dataset_app.command("convert", **COMMAND)
def dataset_convert(
    src: Annotated[
        str, typer.Argument(help="LeRobot v2.1 dataset folder or Hub id (owner/name); only read.")
    ],
    out: Annotated[Path, typer.Argument(help="Folder for the v3.0 dataset (must be new or empty).")],
    retime: Annotated[
        bool,
        typer.Option(
            "--retime",
            help="Rewrite timestamps as frame_index / fps after checking every video holds one frame per row "
            "(also for a v3.0 SRC).",
        ),
    ] = False,
    tolerance_s: Annotated[
        float, typer.Option("--tolerance-s", help="Allowed video frame time error for --retime (s).", min=0.0)
    ] = TOLERANCE_S,
    force: Force = False,
) -> None:
    """Convert a LeRobot v2.1 dataset to v3.0 (offline, on lerobot's own converter; SRC is never changed)."""
    from piperctl.datasets.convert import convert

    result = convert(src, out, retime=retime, tolerance_s=tolerance_s, force=force)
    cams = ", ".join(result.cameras) or "none"
    typer.echo(
        f"wrote {result.out}: LeRobot v3.0 from {result.source_version}, {result.episodes} episodes, "
        f"{result.frames} frames, cameras: {cams}"
        + (", timestamps = frame_index / fps" if result.retimed else "")
    )
