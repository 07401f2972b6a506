"""Shared fixtures: offline Hugging Face settings and small synthesized PiPER datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Never reach the network, and keep lerobot's Arrow cache out of the user's home.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PIPERCTL_TEST", "1")
# One OpenMP thread per process (inherited by the `piperctl` subprocesses): the tests' models are tiny,
# and on a busy 2-core machine torch's threads spin-wait against each other (an 8-step tiny run took
# 12.6 s with 2 threads, 3.0 s with 1). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# An ACT small enough to train a step in well under a second on CPU; on `tiny_ds` (no camera) it has no
# vision backbone at all, on a camera dataset its ResNet-18 starts from scratch (offline).
TINY_ACT = {
    "pretrained_backbone_weights": None,
    "dim_model": 32,
    "n_heads": 2,
    "dim_feedforward": 64,
    "n_encoder_layers": 1,
    "n_decoder_layers": 1,
    "chunk_size": 5,
    "n_action_steps": 5,
    "latent_dim": 8,
}


@pytest.fixture(scope="session", autouse=True)
def _hf_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.mktemp("hf_cache")
    os.environ["HF_DATASETS_CACHE"] = str(cache / "datasets")
    os.environ["HF_LEROBOT_HOME"] = str(cache / "lerobot")


# Session and module fixtures that train a model: a test using one trains (or waits for the training).
TRAINED_RUN_FIXTURES = {"reference_run", "cam_run", "good_run", "eval_run", "ref2"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a trained-run fixture `train`, so `make test-fast` leaves it out."""
    for item in items:
        if TRAINED_RUN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.train)


@pytest.fixture(autouse=True)
def _unmarked_tests_train_nothing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked `train` that takes a training step in-process fails: the markers cannot go stale."""
    if request.node.get_closest_marker("train") is not None:
        return

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("this test trains a model: mark it @pytest.mark.train")

    monkeypatch.setattr("piperctl.training.trainer.Trainer.train_step", refuse)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `piperctl ARGS` in-process; returns (exit code, stdout, stderr)."""
    from piperctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else 0
    return code, captured.out, captured.err


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small camera dataset (video) shared by read-only tests."""
    from piperctl.datasets.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("ds") / "piper_video"
    cfg = SynthConfig(episodes=4, frames=(30, 40), seed=7, image_size=(48, 64))
    return synthesize(out, cfg)


@pytest.fixture(scope="session")
def state_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small state-only dataset shared by read-only tests."""
    from piperctl.datasets.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("ds") / "piper_state"
    cfg = SynthConfig(episodes=6, frames=(40, 60), seed=3, cameras=[])
    return synthesize(out, cfg)


@pytest.fixture(scope="session")
def tiny_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small camera-less dataset with the scene's pose as observation.environment_state.

    ACT and diffusion then need no vision backbone: a tiny ACT has ~60k parameters and ~1 MB
    checkpoints (ResNet-18 alone is 11M parameters, ~130 MB a checkpoint). Tests where cameras are
    the point use `tiny_cam_ds`.
    """
    from piperctl.datasets.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("train_ds") / "tiny"
    return synthesize(out, SynthConfig(episodes=5, frames=(20, 26), cameras=[], env_state=True, seed=2))


@pytest.fixture(scope="session")
def tiny_cam_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small one-camera PNG dataset (fast to decode) for the tests where camera frames are the point."""
    from piperctl.datasets.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("train_ds") / "tiny_cam"
    return synthesize(
        out,
        SynthConfig(episodes=5, frames=(20, 26), cameras=["front"], image_size=(32, 40), video=False, seed=2),
    )


def python_exe() -> str:
    """The interpreter running the tests (the project's venv)."""
    return sys.executable


def one_error_line(err: str, *, after_logs: bool = False, ignore: tuple[str, ...] = ()) -> str:
    """The CLI's single `error:` line on stderr (no traceback); `after_logs` allows log lines before it."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(ignore)]
    assert lines and "Traceback" not in err, err
    if not after_logs:
        assert len(lines) == 1, err
    assert lines[-1].startswith("error:") and sum(ln.startswith("error:") for ln in lines) == 1, err
    return lines[-1]


def metric_rows(run: Path) -> list[dict]:
    """The per-step training records of a run's metrics.jsonl (not its checkpoint timing lines)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "checkpoint" not in r]


def losses(run: Path) -> list[float]:
    """The per-step training losses a run logged in metrics.jsonl."""
    return [r["loss"] for r in metric_rows(run)]


def assert_same_optimizer_state(a: Path, b: Path) -> None:
    """Two checkpoints hold bit-identical optimizer state (every tensor of every parameter's state)."""
    import torch

    from piperctl.checkpoints.format import OPTIMIZER_STATE

    sa = torch.load(a / OPTIMIZER_STATE, weights_only=True)
    sb = torch.load(b / OPTIMIZER_STATE, weights_only=True)
    for k, v in sa["state"].items():
        for name, t in v.items():
            assert torch.equal(t, sb["state"][k][name]), (k, name)


def assert_same_weights(a: Path, b: Path) -> None:
    """Two folders (checkpoints, or runs: their final models) hold bit-identical policy weights."""
    import torch
    from safetensors.torch import load_file

    from piperctl.checkpoints.format import PRETRAINED_DIR, model_layout

    def weights(folder: Path) -> Path:
        if (folder / PRETRAINED_DIR).is_dir():
            folder = folder / PRETRAINED_DIR
        return folder / model_layout(folder).weights

    wa, wb = load_file(str(weights(a))), load_file(str(weights(b)))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# The options of the tiny runs the training tests compare (8 steps of batch 4, one held-out episode).
TRAIN_BASE = {"steps": 8, "batch_size": 4, "save_every": 4, "num_workers": 0, "val_episodes": "1", "seed": 5}


def policy_opt_args(options: dict) -> list[str]:
    """`--policy-opt KEY=JSON` arguments for a dict of policy options."""
    out: list[str] = []
    for k, v in options.items():
        out += ["--policy-opt", f"{k}={json.dumps(v)}"]
    return out


def train_tiny(run_dir: Path, ds: Path, **overrides: Any) -> Any:
    """Train a tiny ACT on `ds` through the Python API (TRAIN_BASE options unless overridden)."""
    from piperctl import train

    opts = {**TRAIN_BASE, "policy_options": dict(TINY_ACT), **overrides}
    return train(run_dir, dataset_id="local/tiny", dataset_root=str(ds), **opts)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory, tiny_ds: Path) -> Path:
    """An uninterrupted 8-step ACT run (checkpoints every 2 steps, keep-last 2)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    train_tiny(run, tiny_ds, save_every=2, keep_last=2)
    return run


@pytest.fixture(scope="session")
def cam_run(tmp_path_factory: pytest.TempPathFactory, tiny_cam_ds: Path) -> Path:
    """The one ACT run with a camera (ResNet-18): 4 steps, checkpoints at 2 and 4, none rotated away."""
    run = tmp_path_factory.mktemp("cam") / "act"
    train_tiny(run, tiny_cam_ds, steps=4, save_every=2, keep_last=0)
    return run


def piperctl_cli(
    args: list, env: dict | None = None, timeout: int = 300, *, fresh: bool = False
) -> subprocess.CompletedProcess:
    """Run `piperctl ARGS` in a new process: forked from a preloaded server (tests/forked_cli.py), or with
    `fresh` (or PIPERCTL_TEST_FRESH=1) the installed console script in a new interpreter."""
    if fresh or os.environ.get("PIPERCTL_TEST_FRESH") == "1":
        exe = Path(python_exe()).with_name("piperctl")
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [exe, *map(str, args)], capture_output=True, text=True, env=full_env, timeout=timeout
        )
    return piperctl_start(args, env).wait(timeout)


def piperctl_start(
    args: list,
    env: dict | None = None,
    *,
    without_dac: bool = False,
    new_process_group: bool = False,
    setup: tuple | None = None,
):
    """Start `piperctl ARGS` in a process forked from the preloaded server; `.wait(timeout)` ends it.

    `without_dac`: as root, but without the capabilities that let root ignore file permissions.
    `new_process_group`: in a process group of its own (its pid), as a shell starts a job.
    `setup`: (function, args) called in the new process first (a module-level function)."""
    from tests import forked_cli

    env_ = {k: str(v) for k, v in (env or {}).items()}
    return forked_cli.ForkedRun(
        [str(a) for a in args],
        env_,
        without_dac=without_dac,
        new_process_group=new_process_group,
        setup=setup,
    )


def hide_package(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make `name` look uninstalled to importlib.util.find_spec (how piperctl checks optional extras)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))


def resume_matches(run: Path, reference: Path, capsys: pytest.CaptureFixture[str], *checkpoints: str) -> str:
    """`piperctl resume RUN` in this process ends as the uninterrupted `reference` did; returns its stderr.

    Same losses at every step, same final weights, and the same weights in each named checkpoint."""
    code, _, err = run_cli(["resume", run], capsys)
    assert code == 0, err
    assert losses(run) == losses(reference)
    assert_same_weights(run, reference)
    for name in checkpoints:
        assert_same_weights(run / name, reference / name)
    return err


def train_command(run: Path, ds: Path, policy: str, options: dict, policy_options: dict) -> list[str]:
    """`piperctl train` of `policy` on the local dataset `ds`: OPTIONS as flags (None left out)."""
    args: list = ["train", "--output-dir", run, "--dataset-root", ds, "--dataset-id", "local/tiny"]
    args += ["--policy", policy]
    for k, v in options.items():
        if v is not None:
            args += [f"--{k.replace('_', '-')}", v]
    return [*map(str, args), *policy_opt_args(policy_options)]


def train_args(run: Path, ds: Path, **overrides: Any) -> list[str]:
    """The `piperctl train` command line of a tiny ACT run (TRAIN_BASE options unless overridden)."""
    return train_command(run, ds, "act", {**TRAIN_BASE, **overrides}, TINY_ACT)


def act_with_export(export: Path, ds_root: Path) -> Any:
    """lerobot loads `export` (as lerobot-rollout --policy.path= does) and acts on a recorded frame."""
    import torch
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    cfg = PreTrainedConfig.from_pretrained(export)
    cfg.pretrained_path = export
    ds = LeRobotDataset("local/tiny", root=ds_root)
    policy = make_policy(cfg, ds_meta=ds.meta)
    pre, post = make_pre_post_processors(cfg, pretrained_path=str(export))
    frame = ds[0]
    batch = {k: v for k, v in frame.items() if k.startswith("observation.")} | {"task": frame["task"]}
    with torch.no_grad():
        action = post(policy.select_action(pre(batch)))
    assert tuple(action.shape) == (1, ds.meta.features["action"]["shape"][0]) and action.isfinite().all()
    return action
