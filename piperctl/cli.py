"""The `piperctl` command line: a thin Typer layer over the piperctl core modules."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer

try:  # typer >= 0.20 vendors its own copy of click; its exception classes are the ones raised
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer uses the click package
    from click import exceptions as click_exc

from piperctl import __version__
from piperctl.console import fail_line
from piperctl.errors import PiperctlError, from_os_error
from piperctl.training.config import TrainConfig

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


_debug_flag = False


def _debug_enabled() -> bool:
    return _debug_flag or os.environ.get("PIPERCTL_DEBUG", "") not in ("", "0")


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
    global _debug_flag
    _debug_flag = _debug_flag or debug


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
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it is not empty.")] = False,
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


@dataset_app.command("convert")
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
    ] = 1e-4,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it is not empty.")] = False,
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


# ---------------------------------------------------------------------------------------------
# piperctl checkpoints list|verify

checkpoints_app = typer.Typer(
    help="See a run's checkpoints and prove them intact and loadable.", no_args_is_help=True
)
app.add_typer(checkpoints_app, name="checkpoints")


@checkpoints_app.command("list")
def checkpoints_list(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="Run folder (default: the current folder).", metavar="RUN_DIR", show_default=False
        ),
    ] = Path("."),
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON list (see docs/checkpoint-format.md).")
    ] = False,
) -> None:
    """Checkpoints of a run, newest last: losses, size, state, and which one 'resume' would pick."""
    import json

    from piperctl.checkpoints.listing import list_run, print_rows

    rows = list_run(run_dir)
    if json_out:
        typer.echo(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        print_rows(run_dir, rows)


@checkpoints_app.command("verify")
def checkpoints_verify(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="checkpoint-N folders or run folders (default: the current folder).",
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

    from piperctl.checkpoints.verify import print_reports, reports_json, verify_paths

    reports = verify_paths(paths or [Path(".")], quick=quick, progress=not json_out)
    if json_out:
        typer.echo(json.dumps(reports_json(reports, quick), indent=2))
    else:
        print_reports(reports, quick)
    raise typer.Exit(0 if all(r.passed for r in reports) else 1)


# ---------------------------------------------------------------------------------------------
# piperctl train / resume  (defaults and help come from TrainConfig, the one declaration of each option)

_RESUME_HELP = "Options that may change on resume"
_NUM_PROCESSES_HELP = (
    "Train with N processes on this machine (data-parallel: one per GPU, or CPU processes with gloo). "
    "Under torchrun/accelerate launch leave it at 1. See docs/distributed.md."
)


def _opt(name: str, **kwargs: object) -> typer.models.OptionInfo:
    """A Typer option whose help text is TrainConfig's for `name`."""
    return typer.Option(help=TrainConfig.help(name), **kwargs)


def _default(name: str) -> Any:
    return TrainConfig.default(name)


def _launch_workers(ctx: typer.Context, num_processes: int, run_hint: Path) -> None:
    """Start `num_processes` copies of this command as the ranks of one run, and exit with their code."""
    from piperctl.training.distributed import launch_local, relaunch_args

    if _debug_enabled():
        os.environ["PIPERCTL_DEBUG"] = "1"
    raise typer.Exit(launch_local(num_processes, relaunch_args(ctx), resume_hint=str(run_hint)))


def _resume_changes(local: dict[str, Any]) -> dict[str, Any]:
    """The options of a resume command line that TrainConfig lets change on resume."""
    return {name: local[name] for name in TrainConfig.resumable() if name in local}


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help=TrainConfig.help("output_dir"))],
    dataset_id: Annotated[str | None, _opt("dataset_id")] = _default("dataset_id"),
    dataset_root: Annotated[Path | None, _opt("dataset_root")] = _default("dataset_root"),
    cameras: Annotated[str | None, _opt("cameras")] = _default("cameras"),
    tolerance_s: Annotated[float, _opt("tolerance_s", min=0.0)] = _default("tolerance_s"),
    policy: Annotated[str, _opt("policy")] = _default("policy"),
    policy_opt: Annotated[
        list[str] | None,
        typer.Option("--policy-opt", help="Set a policy config field, KEY=VALUE (JSON values); repeatable."),
    ] = None,
    policy_config: Annotated[
        Path | None, typer.Option(help="TOML or JSON file of policy config fields.")
    ] = None,
    steps: Annotated[int, _opt("steps")] = _default("steps"),
    batch_size: Annotated[int, _opt("batch_size")] = _default("batch_size"),
    save_every: Annotated[int, _opt("save_every")] = _default("save_every"),
    keep_last: Annotated[int, _opt("keep_last")] = _default("keep_last"),
    seed: Annotated[int, _opt("seed")] = _default("seed"),
    device: Annotated[str, _opt("device")] = _default("device"),
    num_workers: Annotated[int, _opt("num_workers")] = _default("num_workers"),
    lr: Annotated[float | None, _opt("lr")] = _default("lr"),
    val_episodes: Annotated[str | None, _opt("val_episodes")] = _default("val_episodes"),
    eval_every: Annotated[int, _opt("eval_every")] = _default("eval_every"),
    best_metric: Annotated[str, _opt("best_metric")] = _default("best_metric"),
    log_every: Annotated[int, _opt("log_every")] = _default("log_every"),
    resume_from_checkpoint: Annotated[
        Path | None, typer.Option(help="Continue from this checkpoint instead (same as 'piperctl resume').")
    ] = None,
    init_from: Annotated[str | None, _opt("init_from")] = _default("init_from"),
    allow_dataset_change: Annotated[
        bool, typer.Option(help="With --resume-from-checkpoint: accept a changed dataset.")
    ] = _default("allow_dataset_change"),
    precision: Annotated[str | None, _opt("precision")] = _default("precision"),
    grad_accum: Annotated[int, _opt("grad_accum")] = _default("grad_accum"),
    augment: Annotated[bool, _opt("augment")] = _default("augment"),
    augment_config: Annotated[Path | None, _opt("augment_config")] = _default("augment_config"),
    tracker: Annotated[str | None, _opt("tracker")] = _default("tracker"),
    async_save: Annotated[
        bool, typer.Option("--async-save/--sync-save", help=TrainConfig.help("async_save"))
    ] = (_default("async_save")),
    frame_cache: Annotated[
        bool, typer.Option("--frame-cache/--no-frame-cache", help=TrainConfig.help("frame_cache"))
    ] = _default("frame_cache"),
    cache_dir: Annotated[Path | None, _opt("cache_dir")] = _default("cache_dir"),
    deterministic: Annotated[bool, _opt("deterministic")] = _default("deterministic"),
    num_processes: Annotated[int, typer.Option(help=_NUM_PROCESSES_HELP, min=1)] = 1,
) -> None:
    """Train a LeRobot policy, saving verified checkpoint-N folders as it goes."""
    if num_processes > 1:
        _launch_workers(ctx, num_processes, output_dir)
    local = dict(locals())
    if resume_from_checkpoint is not None:
        _resume(
            resume_from_checkpoint,
            output_dir=output_dir,
            allow_dataset_change=allow_dataset_change,
            **_resume_changes(local),
        )
        return
    from piperctl.training.api import train
    from piperctl.training.policy import parse_policy_options

    options = {name: local[name] for name in TrainConfig.names() if name in local}
    options.pop("output_dir")
    options["policy_options"] = parse_policy_options(policy_opt, policy_config)
    train(output_dir, **options)


def _resume(path: Path, **changes: Any) -> None:
    from piperctl.training.api import resume

    resume(path, **changes)


@app.command("resume")
def resume_cmd(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(help="A checkpoint-N folder, or a run folder (newest intact checkpoint).")
    ],
    steps: Annotated[
        int | None, typer.Option(help="New total steps (to extend the run).", rich_help_panel=_RESUME_HELP)
    ] = None,
    save_every: Annotated[int | None, _opt("save_every", rich_help_panel=_RESUME_HELP)] = None,
    keep_last: Annotated[int | None, _opt("keep_last", rich_help_panel=_RESUME_HELP)] = None,
    num_workers: Annotated[int | None, _opt("num_workers", rich_help_panel=_RESUME_HELP)] = None,
    device: Annotated[str | None, _opt("device", rich_help_panel=_RESUME_HELP)] = None,
    eval_every: Annotated[int | None, _opt("eval_every", rich_help_panel=_RESUME_HELP)] = None,
    log_every: Annotated[int | None, _opt("log_every", rich_help_panel=_RESUME_HELP)] = None,
    tolerance_s: Annotated[float | None, _opt("tolerance_s", min=0.0, rich_help_panel=_RESUME_HELP)] = None,
    tracker: Annotated[str | None, _opt("tracker", rich_help_panel=_RESUME_HELP)] = None,
    async_save: Annotated[
        bool | None,
        typer.Option(
            "--async-save/--sync-save", help=TrainConfig.help("async_save"), rich_help_panel=_RESUME_HELP
        ),
    ] = None,
    deterministic: Annotated[
        bool | None,
        typer.Option(
            "--deterministic/--no-deterministic",
            help=TrainConfig.help("deterministic"),
            rich_help_panel=_RESUME_HELP,
        ),
    ] = None,
    frame_cache: Annotated[
        bool | None,
        typer.Option(
            "--frame-cache/--no-frame-cache",
            help=TrainConfig.help("frame_cache"),
            rich_help_panel=_RESUME_HELP,
        ),
    ] = None,
    cache_dir: Annotated[Path | None, _opt("cache_dir", rich_help_panel=_RESUME_HELP)] = None,
    allow_dataset_change: Annotated[
        bool, typer.Option(help="Resume even if the dataset's fingerprint changed.")
    ] = False,
    num_processes: Annotated[
        int,
        typer.Option(
            help=_NUM_PROCESSES_HELP + " May differ from the checkpoint's.",
            min=1,
            rich_help_panel=_RESUME_HELP,
        ),
    ] = 1,
) -> None:
    """Continue a run exactly where a checkpoint left it."""
    if num_processes > 1:
        from piperctl.checkpoints.format import step_of

        # After a crash the run's newest intact checkpoint is the one to go on from, not PATH's.
        _launch_workers(ctx, num_processes, path if step_of(path) is None else path.parent)
    _resume(path, allow_dataset_change=allow_dataset_change, **_resume_changes(dict(locals())))


# ---------------------------------------------------------------------------------------------
# piperctl export


@app.command("export")
def export_cmd(
    model: Annotated[
        Path,
        typer.Argument(
            help="A run folder (its best checkpoint, else its final model), a checkpoint-N folder, or an exported model.",
            metavar="CHECKPOINT_OR_RUN",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Argument(
            help="New folder for the lerobot pretrained_model layout (omit to push an export as is).",
            show_default=False,
        ),
    ] = None,
    push_to_hub: Annotated[
        str | None,
        typer.Option(
            "--push-to-hub", help="Also upload it to this Hub model repo (OWNER/NAME).", metavar="REPO_ID"
        ),
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the Hub repo private.")] = False,
    final: Annotated[
        bool, typer.Option("--final", help="For a run: its final model, not its best checkpoint.")
    ] = False,
    eval_report: Annotated[
        Path | None,
        typer.Option(
            "--eval-report", help="A 'piperctl eval --json' report of this model for the model card."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it is not empty.")] = False,
) -> None:
    """Write a model in lerobot's pretrained_model layout (with model card and manifest), and push it to the Hub."""
    from piperctl.checkpoints.export import export_model

    result = export_model(
        model,
        out,
        force=force,
        final=final,
        push_to_hub=push_to_hub,
        private=private,
        eval_report=eval_report,
    )
    if result.out is not None:
        typer.echo(
            f"exported {result.source.description} to {result.out} "
            f"(lerobot layout: PreTrainedPolicy.from_pretrained('{result.out}'))"
        )
    if result.repo_url is not None:
        typer.echo(f"pushed to {result.repo_url}")


# ---------------------------------------------------------------------------------------------
# piperctl eval


@app.command("eval")
def eval_cmd(
    model: Annotated[
        Path,
        typer.Argument(
            help="A run folder (its best checkpoint, else its final model), a checkpoint-N folder, or an exported model.",
            metavar="CHECKPOINT_OR_RUN",
        ),
    ],
    dataset_root: Annotated[
        Path, typer.Option("--dataset-root", help="Local LeRobot dataset folder to evaluate on.")
    ],
    dataset_id: Annotated[
        str | None, typer.Option(help="repo_id of the dataset (default: the one it records).")
    ] = None,
    episodes: Annotated[
        str | None,
        typer.Option(
            help="val (the run's held-out episodes; the default when it has some), all, A:B or i,j.",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (see docs/export-eval.md).")
    ] = False,
    plots: Annotated[
        Path | None,
        typer.Option(
            "--plots",
            help="Write PNGs of predicted vs recorded actions for a few episodes here.",
            metavar="DIR",
        ),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the JSON report to FILE.", metavar="FILE")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of each episode's sampling (diffusion).")] = 0,
    final: Annotated[
        bool, typer.Option("--final", help="For a run: its final model, not its best checkpoint.")
    ] = False,
) -> None:
    """Open-loop evaluation on recorded episodes: per-joint action error beside 'hold' and 'repeat' baselines."""
    import json

    from piperctl.console import log
    from piperctl.evaluation.openloop import evaluate
    from piperctl.evaluation.report import print_report

    if not dataset_root.is_dir():
        raise PiperctlError(
            f"--dataset-root {dataset_root} is not a folder", hint="pass a LeRobot dataset folder"
        )
    evaluation = evaluate(
        model, dataset_root, dataset_id=dataset_id, episodes=episodes, device=device, seed=seed, final=final
    )
    if plots is not None:
        from piperctl.evaluation.plots import plot_episodes

        written = plot_episodes(evaluation, plots)
        evaluation.report["plots"] = [str(p) for p in written]
        log(f"plots: {len(written)} PNG(s) in {plots}")
    if report is not None:
        from piperctl.checkpoints.atomic import atomic_write_text

        try:
            atomic_write_text(report, json.dumps(evaluation.report, indent=2) + "\n")
        except OSError as e:
            raise PiperctlError(f"cannot write --report {report} ({e.strerror or e})") from e
        log(f"report: {report}")
    if json_out:
        typer.echo(json.dumps(evaluation.report, indent=2))
    else:
        print_report(evaluation.report)


# ---------------------------------------------------------------------------------------------
# piperctl leakage full|minimal DATASET  (also: piperctl leakage DATASET [--minimal])

from dataclasses import dataclass, field, replace  # noqa: E402 - the leakage block stays one contiguous edit
from enum import StrEnum  # noqa: E402

from typer.core import TyperGroup  # noqa: E402

from piperctl.leakage.thresholds import Thresholds  # noqa: E402 - light: no polars until a scan runs


class _LeakageGroup(TyperGroup):
    """`leakage` sub-commands, where a first word that names no sub-command is the DATASET of `full`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["full", *args]
        return super().parse_args(ctx, args)


class _FailOn(StrEnum):
    warn = "warn"
    fail = "fail"


leakage_app = typer.Typer(
    cls=_LeakageGroup,
    no_args_is_help=True,
    help=(
        "Scan a LeRobot dataset for leakage and integrity faults. "
        "'piperctl leakage DATASET' runs 'full'; add --minimal for the quick index/timestamp checks."
    ),
)
app.add_typer(leakage_app, name="leakage")

_LkDataset = Annotated[
    str | None, typer.Argument(help="Dataset folder or Hub repo id (owner/name).", show_default=False)
]
_LkRoot = Annotated[Path | None, typer.Option("--dataset-root", help="Dataset folder (instead of DATASET).")]
_LkJson = Annotated[bool, typer.Option("--json", help="Print the report as JSON (see docs/leakage.md).")]
_LkMarkdown = Annotated[
    Path | None, typer.Option("--markdown", help="Also write the report as Markdown to FILE.")
]
_LkFailOn = Annotated[_FailOn, typer.Option("--fail-on", help="Exit 1 when a check reaches this status.")]
_LkSplit = Annotated[
    list[str] | None,
    typer.Option(
        "--split", help="NAME=RANGES, e.g. val=40:50 (repeatable; default: splits in meta/info.json)."
    ),
]
_LkTolerance = Annotated[
    float, typer.Option("--tolerance-s", help="Allowed timestamp step error (s).", min=0.0)
]
_LkFrozen = Annotated[
    float, typer.Option("--frozen-seconds", help="Report float vector streams frozen this long.", min=0.0)
]
_LkShared = Annotated[
    int,
    typer.Option("--min-shared-frames", help="Report episode pairs sharing at least N moving frames.", min=1),
]
_LkRest = Annotated[
    int,
    typer.Option(
        "--rest-frames", help="A pose held N identical frames in a row is a rest pose, never a copy.", min=1
    ),
]
_LkChunk = Annotated[
    int | None,
    typer.Option("--chunk-size", help="Report episodes shorter than the policy's action chunk.", min=1),
]
_LkRobot = Annotated[
    str | None,
    typer.Option(
        "--robot", help="Robot profile: piper, or none (default: from robot_type in meta/info.json)."
    ),
]
_LkProgress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show scan progress on stderr.")]


@dataclass
class _LeakageOptions:
    """What one `piperctl leakage` call asked for, besides the dataset."""

    minimal: bool = False
    json_out: bool = False
    markdown: Path | None = None
    fail_on: _FailOn = _FailOn.fail
    split: list[str] | None = None
    robot: str | None = None
    progress: bool = True
    thresholds: Thresholds = field(default_factory=Thresholds)


def _leakage_run(dataset: str | None, dataset_root: Path | None, opts: _LeakageOptions) -> None:
    from piperctl.leakage import DatasetLeakageTester
    from piperctl.leakage.report import print_report, to_json, to_markdown

    if dataset is not None and dataset_root is not None:
        raise PiperctlError("give DATASET or --dataset-root, not both")
    target = dataset if dataset is not None else dataset_root
    if target is None:
        raise PiperctlError(
            "no dataset given", hint="run 'piperctl leakage full DATASET' or pass --dataset-root"
        )
    tester = DatasetLeakageTester(
        target,
        splits=opts.split or None,
        thresholds=opts.thresholds,
        robot=opts.robot,
        progress=opts.progress,
    )
    report = tester.run_minimal_tests() if opts.minimal else tester.run_all_tests()
    if opts.markdown is not None:
        try:
            opts.markdown.write_text(to_markdown(report))
        except OSError as e:
            raise PiperctlError(f"cannot write {opts.markdown}: {e.strerror or e}") from e
    if opts.json_out:
        typer.echo(to_json(report))
    else:
        print_report(report)
    raise typer.Exit(1 if report.failed(opts.fail_on.value) else 0)


_TH = Thresholds()  # the one place the defaults come from


@leakage_app.command("full")
def leakage_full(
    dataset: _LkDataset = None,
    dataset_root: _LkRoot = None,
    minimal: Annotated[bool, typer.Option("--minimal", help="Run only the minimal checks.")] = False,
    json_out: _LkJson = False,
    markdown: _LkMarkdown = None,
    fail_on: _LkFailOn = _FailOn.fail,
    split: _LkSplit = None,
    tolerance_s: _LkTolerance = _TH.tolerance_s,
    frozen_seconds: _LkFrozen = _TH.frozen_seconds,
    min_shared_frames: _LkShared = _TH.min_shared_frames,
    rest_frames: _LkRest = _TH.rest_frames,
    chunk_size: _LkChunk = _TH.chunk_size,
    robot: _LkRobot = None,
    progress: _LkProgress = True,
) -> None:
    """Every check: indices, timestamps, metadata, content, leakage, kinematics, units, videos."""
    thresholds = replace(
        _TH,
        tolerance_s=tolerance_s,
        frozen_seconds=frozen_seconds,
        min_shared_frames=min_shared_frames,
        rest_frames=rest_frames,
        chunk_size=chunk_size,
    )
    _leakage_run(
        dataset,
        dataset_root,
        _LeakageOptions(minimal, json_out, markdown, fail_on, split, robot, progress, thresholds),
    )


@leakage_app.command("minimal")
def leakage_minimal(
    dataset: _LkDataset = None,
    dataset_root: _LkRoot = None,
    json_out: _LkJson = False,
    markdown: _LkMarkdown = None,
    fail_on: _LkFailOn = _FailOn.fail,
    tolerance_s: _LkTolerance = _TH.tolerance_s,
    progress: _LkProgress = True,
) -> None:
    """Quick checks reading only episode_index, frame_index, index, timestamp and the metadata."""
    opts = _LeakageOptions(
        minimal=True,
        json_out=json_out,
        markdown=markdown,
        fail_on=fail_on,
        progress=progress,
        thresholds=replace(_TH, tolerance_s=tolerance_s),
    )
    _leakage_run(dataset, dataset_root, opts)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app with piperctl's one error convention."""
    args = list(sys.argv[1:] if argv is None else argv)
    global _debug_flag
    # Also before the root callback has run (a usage error), or when --debug follows a sub-command.
    _debug_flag = "--debug" in args
    try:
        rv = app(args=args, prog_name="piperctl", standalone_mode=False)
    except PiperctlError as e:
        if _debug_enabled():
            traceback.print_exc()
        if not e.silent:  # another rank of a multi-process run reports the same error
            fail_line(str(e))
        sys.exit(e.exit_code)
    except click_exc.UsageError as e:
        if isinstance(e, click_exc.NoArgsIsHelpError) or not e.format_message().strip():
            sys.exit(2)  # the help was already shown; like click, a bare group call is a usage error
        if _debug_enabled():
            traceback.print_exc()
        where = f"'{e.ctx.command_path} --help'" if e.ctx is not None else "'piperctl --help'"
        fail_line(f"{e.format_message()} (see {where})")
        sys.exit(2)
    except click_exc.ClickException as e:
        fail_line(e.format_message())
        sys.exit(e.exit_code)
    except OSError as e:
        # No permission, disk full, a read-only folder, a symlink loop: the user's to fix, not a bug.
        if _debug_enabled():
            traceback.print_exc()
        fail_line(str(from_os_error(e)))
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):  # typer >= 0.20 has no click_exc.Abort
        fail_line("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence against tracebacks for users
        if _debug_enabled():
            traceback.print_exc()
            sys.exit(1)
        fail_line(f"unexpected {type(e).__name__}: {e} (run with --debug for the traceback)")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
