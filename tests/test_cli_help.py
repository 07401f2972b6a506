"""--help fits an 80-column terminal or a pipe with every option name whole; train/resume options are TrainConfig's."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
from pathlib import Path

import pytest
import typer

from piperctl.cli import app
from piperctl.cli.train import relaunch_args
from piperctl.defaults import TOLERANCE_S
from piperctl.training.config import TrainConfig
from tests.conftest import python_exe, run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
ROOT = typer.main.get_command(app)


def _commands(cmd=ROOT, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    found = [(path, cmd)]
    for name, sub in getattr(cmd, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands()


def _check_help(out: str, cmd: object, width: int) -> None:
    assert out.startswith("Usage: piperctl")
    usage = out.split("\n\n", 1)[0]
    for param in cmd.params:
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            assert re.search(rf"(?<![\w-]){re.escape(param.metavar or param.name.upper())}(?![\w-])", usage)
            continue
        for name in [*param.opts, *param.secondary_opts]:
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", out), f"{name} cut or missing"
    assert "…" not in out and "<bool>" not in out and "{" not in usage
    assert not re.search(r"<(str|int|float|path|bool|list)", out), "typer type placeholder"
    assert max(len(line) for line in out.splitlines()) <= width


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) or "piperctl" for p, _ in COMMANDS])
def test_every_help_fits_80_columns_with_whole_option_names(
    path: tuple[str, ...], cmd: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli([*path, "--help"], capsys)
    assert code == 0
    _check_help(out, cmd, 80)


def test_columns_is_honoured(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    train = ROOT.commands["train"]
    monkeypatch.setenv("COLUMNS", "60")
    _, narrow, _ = run_cli(["train", "--help"], capsys)
    _check_help(narrow, train, 60)
    monkeypatch.setenv("COLUMNS", "100")
    _, wide, _ = run_cli(["train", "--help"], capsys)
    _check_help(wide, train, 100)
    assert max(map(len, wide.splitlines())) > 80 and len(wide.splitlines()) < len(narrow.splitlines())


def test_help_into_a_pipe(tmp_path: Path) -> None:
    """Not a terminal and no COLUMNS: 80 columns, names whole (the console script, in a fresh process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    for path in [(), ("train",), ("leakage", "full")]:
        res = subprocess.run(
            [python_exe(), "-m", "piperctl", *path, "--help"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        cmd = ROOT
        for name in path:
            cmd = cmd.commands[name]
        _check_help(res.stdout, cmd, 80)


def _params(command: str) -> dict[str, object]:
    return {p.name: p for p in ROOT.commands[command].params}


def test_train_options_are_trainconfigs() -> None:
    params = _params("train")
    cli_only = {"policy_opt", "policy_config", "peft_opt", "resume_from_checkpoint", "num_processes"}
    from_cli_only = {"policy_options", "peft_options"}  # built from --policy-opt/--policy-config, --peft-opt
    assert set(params) - cli_only == set(TrainConfig.names()) - from_cli_only
    for name in set(TrainConfig.names()) - from_cli_only:
        p = params[name]
        assert p.opts[0] == f"--{name.replace('_', '-')}"
        assert p.help == TrainConfig.help(name), name
        if name != "output_dir":  # required
            assert p.default == TrainConfig.default(name), name


def test_resume_options_are_trainconfigs_resumable_ones() -> None:
    params = _params("resume")
    cli_only = {"path", "num_processes", "allow_dataset_change", "output_dir"}  # --output-dir: resume URL
    assert set(params) - cli_only == set(TrainConfig.resumable())
    for name in TrainConfig.resumable():
        p = params[name]
        assert p.opts[0] == f"--{name.replace('_', '-')}"
        assert p.help == TrainConfig.help(name, on_resume=True), name
        assert p.default is None  # keep the checkpoint's value
    train = _params("train")
    for name in ("allow_dataset_change",):
        assert params[name].help == train[name].help == TrainConfig.help(name)
        assert params[name].default == train[name].default == TrainConfig.default(name)
    for name in TrainConfig.resumable():  # a flag pair is spelled the same in both commands
        assert params[name].secondary_opts == train[name].secondary_opts, name


def test_every_tolerance_default_is_lerobots() -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from piperctl.datasets import convert
    from piperctl.datasets import inspect as dsi
    from piperctl.leakage.thresholds import Thresholds
    from piperctl.training import data

    assert inspect.signature(LeRobotDataset.__init__).parameters["tolerance_s"].default == TOLERANCE_S
    functions = [
        convert.convert,
        dsi.check_timestamps,
        dsi.require_consistent_timestamps,
        dsi.check_video_frames,
        *[
            f
            for f in vars(data).values()
            if inspect.isfunction(f) and "tolerance_s" in inspect.signature(f).parameters
        ],
    ]
    for f in functions:
        assert inspect.signature(f).parameters["tolerance_s"].default == TOLERANCE_S, f.__qualname__
    assert Thresholds().tolerance_s == TrainConfig.default("tolerance_s") == TOLERANCE_S
    for path in [("dataset", "convert"), ("leakage", "full"), ("leakage", "minimal"), ("train",)]:
        cmd = ROOT
        for name in path:
            cmd = cmd.commands[name]
        assert next(p for p in cmd.params if p.name == "tolerance_s").default == TOLERANCE_S, path


def test_relaunch_args_rebuild_the_same_command_line() -> None:
    """--num-processes N starts N copies of the command from its parsed options (minus --num-processes)."""
    train = ROOT.commands["train"]
    args = ["-o", "/tmp/x [y]", "--steps", "5", "--sync-save", "--policy-opt", "a=1", "--policy-opt", "b=2"]
    ctx = train.make_context("train", [*args, "--num-processes", "2"])
    rebuilt = relaunch_args(ctx)
    assert rebuilt[0] == "train" and "--num-processes" not in rebuilt
    again = train.make_context("train", rebuilt[1:])
    assert again.params == {**ctx.params, "num_processes": 1}
    resume = ROOT.commands["resume"]
    ctx = resume.make_context("resume", ["--steps", "9", "--no-frame-cache", "--", "-odd [path]"])
    rebuilt = relaunch_args(ctx)
    assert resume.make_context("resume", rebuilt[1:]).params == ctx.params


GROUPS = [(p, c) for p, c in COMMANDS if hasattr(c, "commands")]


@pytest.mark.parametrize("path,group", GROUPS, ids=[" ".join(p) or "piperctl" for p, _ in GROUPS])
def test_a_bare_group_prints_its_help_and_exits_2(
    path: tuple[str, ...], group: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(list(path), capsys)
    assert code == 2
    _check_help(out, group, 80)
    assert all(name in out for name in group.commands)
