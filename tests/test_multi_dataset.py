"""`piperctl train --dataset A --dataset B`: features mapped with --rename-map, units guarded or converted,
stats combined, per-dataset validation, every dataset recorded, and an exact resume over the mix."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from piperctl.checkpoints import format as ckpt
from tests.conftest import (
    TINY_ACT,
    assert_same_weights,
    losses,
    metric_rows,
    one_error_line,
    piperctl_cli,
    policy_opt_args,
    resume_matches,
    run_cli,
)

RENAME = '{"observation.images.top": "observation.images.front"}'


def synth(out: Path, *args: str) -> Path:
    """`piperctl dataset synth OUT ARGS` in this process."""
    from piperctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["dataset", "synth", str(out), *args])
    assert exc.value.code in (0, None)
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two camera-less recordings of the same arm: one in radians (gripper m), one in degrees (gripper mm)."""
    base = tmp_path_factory.mktemp("mix")
    common = ["--episodes", "3", "--frames", "20:26", "--cameras", "none", "--env-state"]
    rad = synth(base / "day1", *common, "--units", "radians", "--seed", "3")
    deg = synth(base / "day2", *common, "--units", "degrees", "--seed", "4")
    return rad, deg


# The mixed run the tests compare: weights 1,3, degrees converted to radians, one held-out episode each.
MIX = {"steps": 4, "batch_size": 4, "save_every": 2, "num_workers": 0, "val_episodes": "1", "seed": 5}


def mix_args(run: Path, pair: tuple[Path, Path], **overrides: object) -> list[str]:
    args: list = ["train", "--output-dir", run, "--dataset", pair[0], "--dataset", pair[1]]
    args += ["--convert-units", "--dataset-weights", "1,3"]
    for k, v in {**MIX, **overrides}.items():
        args += [f"--{k.replace('_', '-')}", v]
    return [*map(str, args), *policy_opt_args(TINY_ACT)]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory, pair: tuple[Path, Path]) -> Path:
    """An uninterrupted 4-step run over both datasets (checkpoints at 2 and 4)."""
    from piperctl import train

    run = tmp_path_factory.mktemp("mixed") / "run"
    train(
        run,
        dataset=[str(p) for p in pair],
        convert_units=True,
        dataset_weights="1,3",
        policy_options=dict(TINY_ACT),
        **MIX,
    )
    return run


def test_mixed_units_are_refused_in_one_line(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a for a in mix_args(tmp_path / "run", pair) if a != "--convert-units"]
    code, _, err = run_cli(args, capsys)
    line = one_error_line(err)
    assert code == 2 and "dataset day2" in line and "degrees" in line and "day1 in radians" in line, line
    assert "--convert-units" in line
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.train
def test_mixed_run_records_every_dataset_and_the_conversion(
    mixed_run: Path, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    state = json.loads((mixed_run / "checkpoint-4" / ckpt.TRAINING_STATE).read_text())
    day1, day2 = state["datasets"]
    assert state["dataset"] == day1 and [day1["name"], day2["name"]] == ["day1", "day2"]
    assert (day1["weight"], day2["weight"]) == (1.0, 3.0) and day1["root"] == str(pair[0])
    assert day1["units"] == {"joints": "radians", "gripper": "metres"} and day1["converted_to"] == {}
    assert day2["units"] == {"joints": "degrees", "gripper": "millimetres"}
    assert day2["converted_to"] == {"joints": "radians", "gripper": "metres"}
    assert day1["val_episodes"] == day2["val_episodes"] == [2] and day2["train_episodes"] == [0, 1]
    assert len({day1["fingerprint"], day2["fingerprint"]}) == 2
    run_json = json.loads((mixed_run / ckpt.RUN_FILE).read_text())
    assert run_json["config"]["dataset"] == [str(p) for p in pair] and run_json["config"]["convert_units"]
    # The state normalizer holds radians: no joint of the mix reaches degree-sized values.
    processor = next((mixed_run / ckpt.PRETRAINED_DIR).glob("policy_preprocessor*.safetensors"))
    stats = load_file(str(processor))
    assert float(stats["observation.state.max"][:6].abs().max()) < 3.5
    assert float(stats["observation.state.std"][:6].max()) > 0.01
    rows = metric_rows(mixed_run)
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [2, 4]
    for r in val:  # the overall loss is the frame-weighted mean of the per-dataset ones (equal frames here)
        assert (
            min(r["val_loss/day1"], r["val_loss/day2"])
            <= r["val_loss"]
            <= max(r["val_loss/day1"], r["val_loss/day2"])
        )
    code, out, err = run_cli(["checkpoints", "list", mixed_run], capsys)
    assert code == 0, err
    assert f"dataset {pair[0]}:" in out and "joints degrees -> radians" in out and "weight 3" in out


@pytest.mark.train
def test_sigkill_then_resume_over_two_datasets_is_bit_exact(
    tmp_path: Path, pair: tuple[Path, Path], mixed_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    res = piperctl_cli(mix_args(run, pair, num_workers=2), env={"PIPERCTL_FAULT": "after-save:2"})
    assert res.returncode == -signal.SIGKILL, res.stderr
    head = [ln for ln in res.stderr.splitlines() if ln.startswith("dataset ")]
    assert head[0].startswith("dataset 1/2 day1: 3 episodes (2 train / 1 val)") and "30 fps" in head[0]
    assert "joints in degrees" in head[1] and "converted: joints to radians" in head[1], head
    resume_matches(run, mixed_run, capsys, "checkpoint-4")
    code, _, err = run_cli(["checkpoints", "verify", run], capsys)
    assert code == 0, err


@pytest.mark.train
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_over_two_datasets_resume_bit_exact_after_sigkill(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    """The order over several datasets is part of the exact state with several processes too."""
    from piperctl.checkpoints import list_checkpoints

    env = {"OMP_NUM_THREADS": "1"}  # the same arithmetic in every run compared
    ref, run = tmp_path / "ref", tmp_path / "run"
    res = piperctl_cli([*mix_args(ref, pair), "--num-processes", "2"], env)
    assert res.returncode == 0, res.stderr[-3000:]
    res = piperctl_cli([*mix_args(run, pair), "--num-processes", "2"], {**env, "PIPERCTL_FAULT": "kill:3"})
    assert res.returncode == 128 + signal.SIGKILL, res.stderr[-3000:]
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"]
    res = piperctl_cli(["resume", run, "--num-processes", "2"], env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert losses(run) == losses(ref)
    assert_same_weights(run, ref)
    assert_same_weights(run / "checkpoint-4", ref / "checkpoint-4")
    state = json.loads((run / "checkpoint-4" / ckpt.TRAINING_STATE).read_text())
    assert state["world_size"] == 2 and [d["name"] for d in state["datasets"]] == ["day1", "day2"]
    assert state["samples_seen"] == 4 * 2 * MIX["batch_size"]


@pytest.mark.train
def test_resume_refuses_other_datasets(mixed_run: Path, pair: tuple[Path, Path]) -> None:
    from piperctl.errors import PiperctlError
    from piperctl.training.config import TrainConfig
    from piperctl.training.multi_dataset import open_sources, require_same_datasets

    state = ckpt.TrainingState.read(mixed_run / "checkpoint-4")
    assert state is not None
    folder = mixed_run / "checkpoint-4"
    options = {"convert_units": True, "val_episodes": "1"}
    same = open_sources(TrainConfig.from_options("x", None, {"dataset": [str(p) for p in pair], **options}))
    assert require_same_datasets(same, state, folder, allow=False)
    swapped = open_sources(
        TrainConfig.from_options("x", None, {"dataset": [str(p) for p in pair[::-1]], **options})
    )
    with pytest.raises(PiperctlError, match="dataset day2 differs from the one checkpoint checkpoint-4"):
        require_same_datasets(swapped, state, folder, allow=False)
    assert not require_same_datasets(swapped, state, folder, allow=True)
    one = open_sources(TrainConfig.from_options("x", None, {"dataset": [str(pair[0])]}))
    with pytest.raises(PiperctlError, match="1 dataset.*trained on 2"):
        require_same_datasets(one, state, folder, allow=False)


def test_a_checkpoint_from_before_many_datasets_still_reads_as_one(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """training_state.json as piperctl wrote it before `datasets` existed: one dataset, resumable on it."""
    from piperctl.training.config import TrainConfig
    from piperctl.training.multi_dataset import open_sources, require_same_datasets

    sources = open_sources(
        TrainConfig.from_options("x", None, {"dataset_root": str(pair[0]), "val_episodes": "1"})
    )
    old = {
        "format": ckpt.TrainingState.FORMAT, "version": 1, "step": 4, "samples_seen": 16, "seed": 5,
        "data": {"epoch": 0, "offset": 16, "epoch_length": 30}, "run_id": "r", "config": {},
        "dataset": {
            "id": "local/tiny", "root": str(pair[0]), "fingerprint": sources[0].fingerprint,
            "total_episodes": 3, "total_frames": 48, "train_episodes": [0, 1], "val_episodes": [2],
        },
    }  # fmt: skip
    state, problems = ckpt.TrainingState.parse(old, tmp_path / "checkpoint-4")
    assert state is not None and not problems
    assert state.datasets == [] and state.dataset is not None and state.dataset.rename_map == {}
    assert require_same_datasets(sources, state, tmp_path / "checkpoint-4", allow=False)


@pytest.fixture(scope="module")
def cam_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny PNG recordings whose one camera is called `front` in the first, `top` in the second."""
    base = tmp_path_factory.mktemp("cams")
    common = ["--episodes", "2", "--frames", "10:12", "--image-size", "24x32", "--no-video"]
    return (
        synth(base / "lab", *common, "--cameras", "front", "--seed", "1"),
        synth(base / "home", *common, "--cameras", "top", "--seed", "2"),
    )


def test_a_camera_named_otherwise_is_refused_with_the_rename_map_that_fixes_it(
    cam_pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "-o", tmp_path / "run", "--dataset", cam_pair[0], "--dataset", cam_pair[1]]
    code, _, err = run_cli(args, capsys)
    line = one_error_line(err)
    assert code == 2 and "dataset home has no observation.images.front, which dataset lab has" in line, line
    assert f"--rename-map '{RENAME}'" in line
    # A camera that only one dataset has is never filled in: leaving it out of the other is refused too.
    code, _, err = run_cli(
        [*args, "--rename-map", '{"observation.images.top": "observation.images.side"}'], capsys
    )
    assert code == 2 and "has no observation.images.front" in one_error_line(err)


# The renamed-camera run: `top` shown to the policy as `front`, kept by that name, augmented, logged.
CAM_RUN = {
    "rename_map": RENAME, "val_episodes": "home:1", "cameras": "front", "augment": True,
    "tracker": "tensorboard", "steps": 4, "batch_size": 4, "save_every": 2, "num_workers": 0,
}  # fmt: skip


@pytest.mark.train
def test_two_datasets_with_other_camera_names_train_with_a_rename_map_and_resume_exactly_after_sigkill(
    cam_pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from piperctl import train

    ref = tmp_path / "ref"
    train(ref, dataset=[str(p) for p in cam_pair], policy_options=dict(TINY_ACT), **CAM_RUN)
    (logdir,) = [p for p in (ref / "tensorboard").iterdir() if p.is_dir()]
    events = EventAccumulator(str(logdir))
    events.Reload()
    assert {"loss", "val_loss", "val_loss/home"} <= set(events.Tags()["scalars"])
    state = json.loads((ref / "checkpoint-4" / ckpt.TRAINING_STATE).read_text())
    lab, home = state["datasets"]
    assert home["rename_map"] == json.loads(RENAME) and lab["rename_map"] == {}
    assert lab["val_episodes"] == [] and home["val_episodes"] == [1]
    config = json.loads((ref / ckpt.PRETRAINED_DIR / "config.json").read_text())
    assert list(config["input_features"]) == ["observation.state", "observation.images.front"]
    rows = metric_rows(ref)
    assert rows[-1]["val_loss"] == rows[-1]["val_loss/home"] and "val_loss/lab" not in rows[-1]

    run = tmp_path / "run"
    args: list = ["train", "--output-dir", run, "--dataset", cam_pair[0], "--dataset", cam_pair[1]]
    for k, v in CAM_RUN.items():
        args += [f"--{k.replace('_', '-')}"] if v is True else [f"--{k.replace('_', '-')}", v]
    res = piperctl_cli([*map(str, args), *policy_opt_args(TINY_ACT)], env={"PIPERCTL_FAULT": "kill:3"})
    assert res.returncode == -signal.SIGKILL, res.stderr
    resume_matches(run, ref, capsys, "checkpoint-4")
    code, _, err = run_cli(["checkpoints", "verify", run], capsys)
    assert code == 0, err


def test_weighted_order_draws_by_weight_and_resumes_from_any_position() -> None:
    from piperctl.training.mixed_data import WeightedSampler

    frames = [list(range(40)), list(range(100, 140))]
    sampler = WeightedSampler(frames, [1.0, 3.0], seed=7)
    epoch0 = list(sampler)
    assert len(epoch0) == 80 and 50 <= sum(i >= 100 for i in epoch0) <= 70  # about 3/4 from the second
    # every frame of a dataset comes once before any comes twice (reshuffled only when used up)
    first = [i for i in epoch0 if i < 100]
    assert len(set(first)) == len(first)
    again = WeightedSampler(frames, [1.0, 3.0], seed=7)
    again.load_state_dict({"epoch": 0, "start_index": 33})
    assert list(again) == epoch0[33:]
    assert list(again) != epoch0  # the next epoch is another order


# ---------------------------------------------------------------------------------------------
# Open-loop scoring per dataset, twin datasets, other frame rates


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory, pair: tuple[Path, Path]) -> tuple[Path, Path, Path]:
    """day1, a byte-identical copy of it, and day1's recording at 15 fps."""
    import shutil

    base = tmp_path_factory.mktemp("trio")
    twin = Path(shutil.copytree(pair[0], base / "twin"))
    common = ["--episodes", "3", "--frames", "20:26", "--cameras", "none", "--env-state"]
    slow = synth(base / "slow", *common, "--units", "radians", "--seed", "3", "--fps", "15")
    return pair[0], twin, slow


@pytest.fixture(scope="module")
def trio_run(tmp_path_factory: pytest.TempPathFactory, trio: tuple[Path, Path, Path]) -> tuple[Path, str]:
    """2 steps over the three, open-loop scored at step 2 (--eval-every: best by val_action_nmae); its log."""
    import contextlib
    import io

    from piperctl import train

    run = tmp_path_factory.mktemp("trio") / "run"
    with contextlib.redirect_stderr(io.StringIO()) as log:
        train(
            run,
            dataset=[str(p) for p in trio],
            mixed_fps="own-rate",
            eval_every=2,
            policy_options=dict(TINY_ACT),
            **{**MIX, "steps": 2, "async_save": False},
        )
    return run, log.getvalue()


@pytest.mark.train
def test_open_loop_per_dataset_twins_score_alike_and_other_rates_train_when_asked(
    trio_run: tuple[Path, str],
    trio: tuple[Path, Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run, log = trio_run
    day1, twin, slow = trio
    # Another frame rate is refused in one line unless the user says how to mix them ...
    code, _, err = run_cli(["train", "-o", tmp_path / "r", "--dataset", day1, "--dataset", slow], capsys)
    line = one_error_line(err)
    assert code == 2 and "dataset slow is recorded at 15 fps and dataset day1 at 30 fps" in line, line
    assert "--mixed-fps own-rate" in line
    # ... and with --mixed-fps own-rate it trains, recorded in the run and in every dataset's entry,
    state = json.loads((run / "checkpoint-2" / ckpt.TRAINING_STATE).read_text())
    assert state["config"]["mixed_fps"] == "own-rate"
    assert json.loads((run / ckpt.RUN_FILE).read_text())["config"]["mixed_fps"] == "own-rate"
    assert [(d["name"], d["fps"]) for d in state["datasets"]] == [("day1", 30), ("twin", 30), ("slow", 15)]
    # ... and named in the run's first lines.
    head = [ln for ln in log.splitlines() if ln.startswith("dataset ")]
    assert head[0].startswith("dataset 1/3 day1:") and "30 fps, joints in radians" in head[0], head
    assert (
        head[2].startswith("dataset 3/3 slow:") and "15 fps (its own rate: --mixed-fps own-rate)" in head[2]
    )

    row = [r for r in metric_rows(run) if "val_loss" in r][-1]
    assert row["step"] == 2
    # Byte-identical datasets: the same held-out loss and open-loop error, whatever comes before them.
    assert row["val_loss/day1"] == row["val_loss/twin"]
    assert row["val_action_nmae/day1"] == row["val_action_nmae/twin"] > 0
    # slow holds day1's frames at 15 fps: sampled at its own rate, its chunks are the same frames, so
    # its losses are day1's too (chunks counted in seconds at 30 fps would be other frames, or refused).
    assert row["val_loss/slow"] == row["val_loss/day1"]
    assert row["val_action_nmae/slow"] == row["val_action_nmae/day1"]
    assert row["val_action_nmae"] == pytest.approx(row["val_action_nmae/day1"], rel=1e-12)
    assert state["best"] == {"step": 2, "metric": "val_action_nmae", "value": row["val_action_nmae"]}


@pytest.mark.train
def test_eval_reports_each_dataset_and_all_frames_pooled(
    mixed_run: Path, pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    day1, day2 = pair
    out = tmp_path / "eval.json"
    args = ["eval", mixed_run, "--dataset", day1, "--dataset", day2, "--convert-units", "--report", out]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert "overall" in stdout and "frame-weighted" in stdout and "day2" in stdout
    report = json.loads(out.read_text())
    assert report["weighting"] == "frames" and report["episodes"]["count"] == 2
    a, b = report["datasets"]
    assert (a["name"], b["name"]) == ("day1", "day2")
    assert a["episodes"]["ids"] == b["episodes"]["ids"] == [2]  # each dataset's held-out episode, by default
    n = [d["episodes"]["scored_frames"] for d in (a, b)]
    assert report["episodes"]["scored_frames"] == sum(n)
    for name in ("policy", "hold", "repeat"):
        pooled = (n[0] * a["summary"][name] + n[1] * b["summary"][name]) / sum(n)
        assert report["summary"][name] == pytest.approx(pooled, rel=1e-9), name
    # day1 alone through the one-dataset path: the same errors in its units (the scale aside).
    code, stdout, err = run_cli(
        ["eval", mixed_run, "--dataset-root", day1, "--episodes", "2", "--json"], capsys
    )
    assert code == 0, err
    alone = json.loads(stdout)["executed"]
    for name in ("policy", "hold"):
        np.testing.assert_allclose(
            list(a["executed"][name]["mae"].values()), list(alone[name]["mae"].values()), rtol=1e-9
        )
    # day2 is in degrees and millimetres: its errors come in day1's radians and metres.
    table = pq.read_table(next((day2 / "data").rglob("*.parquet"))).to_pandas()
    part = table[table["episode_index"] == 2].sort_values("frame_index")
    to_si = np.array([np.pi / 180] * 6 + [1e-3])
    action, state = (
        np.stack(part[c].to_numpy()).astype(np.float64) * to_si for c in ("action", "observation.state")
    )
    hold = np.abs(state[1:] - action[1:]).mean(0)
    np.testing.assert_allclose(list(b["executed"]["hold"]["mae"].values()), hold, rtol=1e-6)
    # Without the conversion the datasets do not mix: one line, as in train.
    code, _, err = run_cli(args[:6], capsys)
    assert code == 2 and "--convert-units" in one_error_line(err)
    # Naming no data evaluates what the model was trained on, as it was trained (converted): the same report.
    code, stdout, err = run_cli(["eval", mixed_run, "--json"], capsys)
    assert code == 0 and f"was trained on: {day1}, {day2}" in err, err
    assert json.loads(stdout)["summary"] == report["summary"]


@pytest.mark.train
def test_eval_episodes_are_chosen_per_dataset_by_name(
    mixed_run: Path, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    day1, day2 = pair
    base = ["eval", mixed_run, "--dataset", day1, "--dataset", day2, "--convert-units", "--json"]
    code, stdout, err = run_cli([*base, "--episodes", "day1:0,2;day2:1"], capsys)
    assert code == 0, err
    a, b = json.loads(stdout)["datasets"]
    assert a["episodes"]["ids"] == [0, 2] and b["episodes"]["ids"] == [1]
    code, stdout, err = run_cli([*base, "--episodes", "day2:all"], capsys)  # day1 left out: day2's report
    assert code == 0, err
    only = json.loads(stdout)
    assert only["dataset"]["root"] == str(day2) and only["episodes"]["ids"] == [0, 1, 2]
    code, _, err = run_cli([*base, "--episodes", "day1:0;1"], capsys)
    assert code == 2 and "mixes per-dataset entries" in one_error_line(err)


def test_eval_without_data_names_what_it_lacks(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from piperctl.errors import PiperctlError
    from piperctl.evaluation.per_dataset import trained_on

    plain = SimpleNamespace(datasets=[], description="model /m")
    with pytest.raises(PiperctlError, match="records no dataset it was trained on"):
        trained_on(plain)
    moved = SimpleNamespace(datasets=[{"id": "local/day1", "root": str(tmp_path / "day1")}], description="m")
    with pytest.raises(PiperctlError, match=r"trained on .*day1, which is no longer a dataset folder"):
        trained_on(moved)
    hub_ = {
        "id": "someone/day",
        "root": None,
        "commit": "c" * 40,
        "rename_map": {"a": "b"},
        "converted_to": {},
    }
    assert trained_on(SimpleNamespace(datasets=[hub_], description="m")) == (
        [f"someone/day@{'c' * 40}"], '{"a": "b"}', False,
    )  # fmt: skip
