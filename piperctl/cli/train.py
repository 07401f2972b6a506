"""`piperctl train` and `piperctl resume`: options, defaults and help all come from TrainConfig.

TrainConfig (piperctl.training.config) is the one declaration of each training option; the
signatures below name them for Typer, and tests/test_cli_help.py proves that every name, default
and help text here is TrainConfig's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from piperctl.cli.common import MAIN_KEY, debug_enabled
from piperctl.training.config import TrainConfig

_RESUME_HELP = "Options that may change on resume"
_NUM_PROCESSES_HELP = (
    "Train with N processes on this machine (data-parallel: one per GPU, or CPU processes with gloo). "
    "Under torchrun/accelerate launch leave it at 1. See docs/distributed.md."
)


def _opt(name: str, *decls: str, **kwargs: Any) -> Any:
    """A `train` option whose help text is TrainConfig's for `name`."""
    return typer.Option(*decls, help=TrainConfig.help(name), **kwargs)


def _resume_opt(name: str, *decls: str, **kwargs: Any) -> Any:
    """A `resume` option: TrainConfig's help for `name` on resume, among the options that may change."""
    return typer.Option(
        *decls, help=TrainConfig.help(name, on_resume=True), rich_help_panel=_RESUME_HELP, **kwargs
    )


def _default(name: str) -> Any:
    return TrainConfig.default(name)


def _launch_workers(ctx: typer.Context, num_processes: int, run_hint: Path) -> None:
    """Start `num_processes` copies of this command as the ranks of one run, and exit with their code."""
    from piperctl.training.launcher import launch_local

    if debug_enabled():
        os.environ["PIPERCTL_DEBUG"] = "1"
    raise typer.Exit(
        launch_local(num_processes, relaunch_args(ctx), ctx.meta[MAIN_KEY], resume_hint=str(run_hint))
    )


def _resume_changes(local: dict[str, Any]) -> dict[str, Any]:
    """The options of a resume command line that TrainConfig lets change on resume."""
    return {name: local[name] for name in TrainConfig.resumable() if name in local}


def train_cmd(
    ctx: typer.Context,
    output_dir: Annotated[Path, _opt("output_dir", "--output-dir", "-o")],
    dataset_id: Annotated[str | None, _opt("dataset_id")] = _default("dataset_id"),
    dataset_root: Annotated[Path | None, _opt("dataset_root")] = _default("dataset_root"),
    dataset: Annotated[list[str], _opt("dataset", metavar="SPEC")] = _default("dataset"),
    dataset_weights: Annotated[str | None, _opt("dataset_weights")] = _default("dataset_weights"),
    rename_map: Annotated[str | None, _opt("rename_map", metavar="JSON")] = _default("rename_map"),
    convert_units: Annotated[bool, _opt("convert_units")] = _default("convert_units"),
    mixed_fps: Annotated[str, _opt("mixed_fps", metavar="HOW")] = _default("mixed_fps"),
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
    imagenet_stats: Annotated[
        bool, _opt("imagenet_stats", "--imagenet-stats/--no-imagenet-stats")
    ] = _default("imagenet_stats"),
    val_episodes: Annotated[str | None, _opt("val_episodes")] = _default("val_episodes"),
    eval_every: Annotated[int, _opt("eval_every")] = _default("eval_every"),
    best_metric: Annotated[str, _opt("best_metric")] = _default("best_metric"),
    log_every: Annotated[int, _opt("log_every")] = _default("log_every"),
    resume_from_checkpoint: Annotated[
        Path | None, typer.Option(help="Continue from this checkpoint instead (same as 'piperctl resume').")
    ] = None,
    init_from: Annotated[str | None, _opt("init_from")] = _default("init_from"),
    peft: Annotated[str | None, _opt("peft")] = _default("peft"),
    peft_opt: Annotated[
        list[str] | None,
        typer.Option(
            "--peft-opt",
            help="Set a PEFT option, KEY=VALUE (r, lora_alpha, target_modules, full_training_modules, "
            "init_type, method_type; JSON values); repeatable.",
        ),
    ] = None,
    freeze: Annotated[list[str] | None, _opt("freeze")] = _default("freeze"),
    gradient_checkpointing: Annotated[bool, _opt("gradient_checkpointing")] = _default(
        "gradient_checkpointing"
    ),
    allow_dataset_change: Annotated[bool, _opt("allow_dataset_change")] = _default("allow_dataset_change"),
    precision: Annotated[str | None, _opt("precision")] = _default("precision"),
    grad_accum: Annotated[int, _opt("grad_accum")] = _default("grad_accum"),
    augment: Annotated[bool, _opt("augment")] = _default("augment"),
    augment_config: Annotated[Path | None, _opt("augment_config")] = _default("augment_config"),
    tracker: Annotated[str | None, _opt("tracker")] = _default("tracker"),
    async_save: Annotated[bool, _opt("async_save", "--async-save/--sync-save")] = _default("async_save"),
    frame_cache: Annotated[bool, _opt("frame_cache", "--frame-cache/--no-frame-cache")] = _default(
        "frame_cache"
    ),
    cache_dir: Annotated[Path | None, _opt("cache_dir")] = _default("cache_dir"),
    deterministic: Annotated[bool, _opt("deterministic")] = _default("deterministic"),
    mirror: Annotated[str | None, _opt("mirror", metavar="URL")] = _default("mirror"),
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
    from piperctl import train
    from piperctl.training.finetune import parse_peft_options
    from piperctl.training.policy import parse_policy_options

    options = {name: local[name] for name in TrainConfig.names() if name in local}
    options.pop("output_dir")
    options["policy_options"] = parse_policy_options(policy_opt, policy_config)
    options["peft_options"] = parse_peft_options(peft_opt)
    train(output_dir, **options)


def _resume(path: Path, **changes: Any) -> None:
    from piperctl import resume

    resume(path, **changes)


def resume_cmd(
    ctx: typer.Context,
    path: Annotated[
        str,
        typer.Argument(
            help="A checkpoint-N folder, a run folder (newest intact checkpoint), or a --mirror URL "
            "(newest verified remote checkpoint; URL/checkpoint-N picks one).",
            metavar="PATH",
        ),
    ],
    steps: Annotated[int | None, _resume_opt("steps")] = None,
    save_every: Annotated[int | None, _resume_opt("save_every")] = None,
    keep_last: Annotated[int | None, _resume_opt("keep_last")] = None,
    num_workers: Annotated[int | None, _resume_opt("num_workers")] = None,
    device: Annotated[str | None, _resume_opt("device")] = None,
    eval_every: Annotated[int | None, _resume_opt("eval_every")] = None,
    log_every: Annotated[int | None, _resume_opt("log_every")] = None,
    tolerance_s: Annotated[float | None, _resume_opt("tolerance_s", min=0.0)] = None,
    tracker: Annotated[str | None, _resume_opt("tracker")] = None,
    async_save: Annotated[bool | None, _resume_opt("async_save", "--async-save/--sync-save")] = None,
    deterministic: Annotated[
        bool | None, _resume_opt("deterministic", "--deterministic/--no-deterministic")
    ] = None,
    frame_cache: Annotated[bool | None, _resume_opt("frame_cache", "--frame-cache/--no-frame-cache")] = None,
    cache_dir: Annotated[Path | None, _resume_opt("cache_dir")] = None,
    mirror: Annotated[str | None, _resume_opt("mirror", metavar="URL")] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            "-o",
            help="With a URL: the local run folder to download into and continue in (default: a folder "
            "named after the remote run).",
        ),
    ] = None,
    allow_dataset_change: Annotated[bool, _opt("allow_dataset_change")] = _default("allow_dataset_change"),
    num_processes: Annotated[
        int,
        typer.Option(
            help=_NUM_PROCESSES_HELP + " May differ from the checkpoint's.",
            min=1,
            rich_help_panel=_RESUME_HELP,
        ),
    ] = 1,
) -> None:
    """Continue a run exactly where a checkpoint left it (also on a fresh machine, from a --mirror URL)."""
    from piperctl.checkpoints.remote import is_url

    if num_processes > 1:
        from piperctl.checkpoints.format import step_of

        if is_url(path):
            # Download once here; every rank then resumes from the local copy and keeps mirroring.
            from piperctl.training.api import pull_remote

            local, url = pull_remote(path, output_dir)
            ctx.params.update(path=str(local), mirror=mirror or url, output_dir=None)
            path = str(local)
        local_path = Path(path)
        # After a crash the run's newest intact checkpoint is the one to go on from, not PATH's.
        _launch_workers(ctx, num_processes, local_path if step_of(local_path) is None else local_path.parent)
    changes = _resume_changes(dict(locals()))
    _resume(
        path if is_url(path) else Path(path),
        output_dir=output_dir,
        allow_dataset_change=allow_dataset_change,
        **changes,
    )


def relaunch_args(ctx: Any, drop: tuple[str, ...] = ("num_processes",)) -> list[str]:
    """The command line of a click/Typer command invocation, rebuilt from its parsed parameters."""
    options: list[str] = []
    arguments: list[str] = []
    for param in ctx.command.params:
        if param.name in drop or param.name not in ctx.params:
            continue
        value = ctx.params[param.name]
        if param.param_type_name == "argument":
            values = value if isinstance(value, list | tuple) else [value]
            arguments += [str(v) for v in values if v is not None]
        elif value is None:
            continue  # not given (a resume option left at the checkpoint's value): not --no-X either
        elif getattr(param, "is_flag", False):
            if value:
                options.append(param.opts[0])
            elif param.secondary_opts:
                options.append(param.secondary_opts[0])
        elif getattr(param, "multiple", False):
            for v in value:
                options += [param.opts[0], str(v)]
        else:
            options += [param.opts[0], str(value)]
    return [ctx.info_name, *options, "--", *arguments]
