"""`piperctl export` and `piperctl eval`: a model in lerobot's layout, and its open-loop error on recorded episodes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from piperctl.cli.common import Final, Force, ModelArg
from piperctl.errors import PiperctlError

# ---------------------------------------------------------------------------------------------
# piperctl export


def export_cmd(
    model: ModelArg,
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
    final: Final = False,
    eval_report: Annotated[
        Path | None,
        typer.Option(
            "--eval-report", help="A 'piperctl eval --json' report of this model for the model card."
        ),
    ] = None,
    merge: Annotated[
        bool,
        typer.Option(
            "--merge", help="Of a PEFT model: write a plain model with the adapter merged into its base."
        ),
    ] = False,
    force: Force = False,
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
        merge=merge,
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


def eval_cmd(
    model: ModelArg,
    dataset_root: Annotated[
        Path | None,
        typer.Option(
            "--dataset-root",
            help="Local LeRobot dataset folder to evaluate on (default, without --dataset: the datasets "
            "the model records it trained on, a Hub one at the commit it trained on).",
            show_default=False,
        ),
    ] = None,
    dataset: Annotated[
        list[Path] | None,
        typer.Option(
            "--dataset",
            help="A local dataset folder; repeat it to evaluate on several as train --dataset mixes them "
            "(per dataset and overall, frame-weighted).",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
    rename_map: Annotated[
        str | None,
        typer.Option(help="With --dataset: JSON object, dataset feature name -> the name the policy sees."),
    ] = None,
    convert_units: Annotated[
        bool, typer.Option(help="With --dataset: convert datasets in other joint units to the first's.")
    ] = False,
    dataset_id: Annotated[
        str | None, typer.Option(help="repo_id of the dataset (default: the one it records).")
    ] = None,
    episodes: Annotated[
        str | None,
        typer.Option(
            help="val (the run's held-out episodes; the default when it has some), all, A:B or i,j; "
            "with several --dataset, NAME:SPEC;NAME:SPEC per dataset (NAME: the folder name).",
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
    final: Final = False,
) -> None:
    """Open-loop evaluation on recorded episodes: per-joint action error beside 'hold' and 'repeat' baselines."""
    import json

    from piperctl.console import keeps_on_interrupt, log
    from piperctl.evaluation.openloop import evaluate
    from piperctl.evaluation.report import print_report

    if dataset_root is not None and dataset:
        raise PiperctlError(
            "name the data with --dataset-root DIR (one dataset) or --dataset DIR (repeatable), not both",
            hint="e.g. piperctl eval RUN --dataset data/day1 --dataset data/day2",
        )
    for folder, flag in [(dataset_root, "--dataset-root"), *((d, "--dataset") for d in dataset or [])]:
        if folder is not None and not folder.is_dir():
            raise PiperctlError(f"{flag} {folder} is not a folder", hint="pass a LeRobot dataset folder")
    if dataset_root is None:  # several datasets, or none named: those the model was trained on
        from piperctl.evaluation.per_dataset import evaluate_datasets

        evaluation = evaluate_datasets(
            model, [str(d) for d in dataset] if dataset else None, rename_map=rename_map,
            convert_units=convert_units, episodes=episodes, device=device, seed=seed, final=final,
        )  # fmt: skip
    else:
        evaluation = evaluate(
            model,
            dataset_root,
            dataset_id=dataset_id,
            episodes=episodes,
            device=device,
            seed=seed,
            final=final,
        )
    if plots is not None:
        from piperctl.evaluation.plots import plot_episodes

        with keeps_on_interrupt(f"the plots written so far are in {plots}; no report was written"):
            written = plot_episodes(evaluation, plots)
        evaluation.report["plots"] = [str(p) for p in written]
        log(f"plots: {len(written)} PNG(s) in {plots}")
    if report is not None:
        from piperctl.fs import atomic_write

        try:
            atomic_write(report, json.dumps(evaluation.report, indent=2) + "\n")
        except OSError as e:
            raise PiperctlError(f"cannot write --report {report} ({e.strerror or e})") from e
        log(f"report: {report}")
    if json_out:
        typer.echo(json.dumps(evaluation.report, indent=2))
    else:
        print_report(evaluation.report)
