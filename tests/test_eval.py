"""`piperctl eval`: open-loop action error on recorded episodes, against figures computed independently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from piperctl.evaluation import baselines as bl
from piperctl.evaluation.openloop import score
from tests.conftest import TINY_ACT, one_error_line, run_cli
from tests.test_export import actions_on_frames


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory: pytest.TempPathFactory, tiny_ds: Path) -> Path:
    """A 2-step tiny ACT run holding out episode 4."""
    from piperctl import train

    run = tmp_path_factory.mktemp("eval") / "run"
    train(
        run,
        dataset_id="local/tiny",
        dataset_root=str(tiny_ds),
        steps=2,
        save_every=2,
        batch_size=4,
        num_workers=0,
        val_episodes="1",
        seed=5,
        policy_options=dict(TINY_ACT),
    )
    return run


def _recorded(ds: Path, episode: int) -> tuple[np.ndarray, np.ndarray]:
    """Actions and states of one episode, read with pyarrow (independently of piperctl)."""
    table = pq.read_table(
        ds / "data" / "chunk-000" / "file-000.parquet",
        columns=["episode_index", "frame_index", "action", "observation.state"],
    ).to_pandas()
    part = table[table["episode_index"] == episode].sort_values("frame_index")
    return (
        np.stack(part["action"].to_numpy()).astype(np.float64),
        np.stack(part["observation.state"].to_numpy()).astype(np.float64),
    )


def _by_joint(block: dict, stat: str) -> np.ndarray:
    return np.array(list(block[stat].values()))


def test_eval_json_matches_independent_numpy(
    eval_run: Path, tiny_ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plots = tmp_path / "plots"
    code, stdout, err = run_cli(
        ["eval", eval_run, "--dataset-root", tiny_ds, "--json", "--plots", plots], capsys
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["format"] == "piperctl-eval" and report["episodes"]["spec"] == "val"
    assert report["episodes"]["ids"] == [4]  # the run's own held-out episode, by default
    action, state = _recorded(tiny_ds, 4)
    names = json.loads((tiny_ds / "meta" / "info.json").read_text())["features"]["action"]["names"]
    assert report["joints"] == names and report["hold_pairing"] == "by name"
    assert report["hold_unavailable"] is None
    assert report["episodes"]["scored_frames"] == len(action) - 1

    truth = action[1:]
    expected = {"hold": state[1:], "repeat": action[:-1]}
    # The executed action is what select_action returns frame by frame (reset per episode).
    from piperctl.checkpoints.model import load_model

    model = load_model(eval_run / "checkpoint-2", "cpu")
    executed = actions_on_frames(model.policy, model.preprocessor, model.postprocessor, tiny_ds, 4)
    expected["policy"] = torch.cat(executed).double().numpy()[1:]
    for name, pred in expected.items():
        err_ = pred - truth
        block = report["executed"][name]
        assert block["frames"] == len(truth)
        np.testing.assert_allclose(_by_joint(block, "mae"), np.abs(err_).mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            _by_joint(block, "rmse"), np.sqrt((err_**2).mean(0)), rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(_by_joint(block, "max"), np.abs(err_).max(0), rtol=1e-9, atol=1e-12)
    stats = json.loads((tiny_ds / "meta" / "stats.json").read_text())["action"]["std"]
    np.testing.assert_allclose(
        report["summary"]["hold"], np.mean(np.abs(state[1:] - truth).mean(0) / np.array(stats)), rtol=1e-6
    )

    # Chunks: ACT re-plans every n_action_steps frames; step h of a chunk is compared with action t+h.
    chunk = report["chunk"]
    assert chunk["horizon"] == TINY_ACT["chunk_size"]
    starts = [t for t in range(1, len(action)) if t % TINY_ACT["n_action_steps"] == 0]
    assert chunk["chunks"] == len(starts)
    for row in chunk["by_step"]:
        h = row["step"]
        pairs = [t for t in starts if t + h < len(action)]
        hold_err = np.array([state[t] - action[t + h] for t in pairs])
        assert row["hold"]["frames"] == row["policy"]["frames"] == len(pairs)
        np.testing.assert_allclose(_by_joint(row["hold"], "mae"), np.abs(hold_err).mean(0), rtol=1e-9)

    assert report["plots"] == [str(plots / "episode_0004.png")]
    png = (plots / "episode_0004.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_eval_table_and_episode_errors(
    eval_run: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, err = run_cli(["eval", eval_run, "--dataset-root", tiny_ds, "--episodes", "0:2"], capsys)
    assert code == 0, err
    assert "hold MAE" in stdout and "repeat MAE" in stdout and "gripper" in stdout
    assert "baselines" in stdout
    code, _, err = run_cli(["eval", eval_run, "--dataset-root", tiny_ds, "--episodes", "7"], capsys)
    assert code == 2 and "[7]" in one_error_line(err, after_logs=True)
    code, _, err = run_cli(["eval", eval_run, "--dataset-root", tiny_ds / "nope"], capsys)
    assert code == 2 and "is not a folder" in one_error_line(err)


def _known_dataset(root: Path, offset: np.ndarray, state_names: list[str]) -> None:
    """A state-only dataset where action_t = state_t + offset, state stored in `state_names` order."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    joints = ["a", "b", "c"]
    order = [joints.index(n) for n in state_names]
    ds = LeRobotDataset.create(
        repo_id="local/known",
        fps=10,
        root=root,
        use_videos=False,
        features={
            "observation.state": {"dtype": "float32", "shape": (3,), "names": state_names},
            "action": {"dtype": "float32", "shape": (3,), "names": joints},
        },
    )
    rng = np.random.default_rng(0)
    for _ in range(2):
        for _ in range(6):
            q = rng.uniform(-1, 1, 3).astype(np.float32)
            ds.add_frame(
                {"observation.state": q[order], "action": q + offset.astype(np.float32), "task": "t"}
            )
        ds.save_episode()
    ds.finalize()


def test_baselines_on_a_dataset_with_a_known_answer(tmp_path: Path) -> None:
    offset = np.array([0.1, -0.2, 0.3])
    root = tmp_path / "known"
    # State names in another order than the action's: "hold" must pair joints by name.
    _known_dataset(root, offset, ["c", "a", "b"])
    features = json.loads((root / "meta" / "info.json").read_text())["features"]
    pairing = bl.hold_pairing(features)
    assert pairing == bl.Pairing("by name", (1, 2, 0))
    recorded = bl.read_episodes(root, [0, 1], features)
    scores = score(recorded, None, pairing)
    hold = scores.executed["hold"]
    assert hold.n == 2 * 5  # every frame but each episode's first
    np.testing.assert_allclose(hold.mae, np.abs(offset), atol=1e-6)
    np.testing.assert_allclose(hold.max, np.abs(offset), atol=1e-6)
    actions = np.concatenate([recorded[e].action for e in (0, 1)])
    diffs = np.concatenate([np.diff(recorded[e].action, axis=0) for e in (0, 1)])
    assert len(actions) == 12
    np.testing.assert_allclose(scores.executed["repeat"].mae, np.abs(diffs).mean(0), rtol=1e-12)
    assert scores.executed["policy"] is None
    # Action and state of different sizes: no "hold" baseline rather than a wrong one.
    features["observation.state"]["shape"] = [4]
    features["observation.state"]["names"] = ["w", "x", "y", "z"]
    assert bl.hold_pairing(features) is None
    # ... and the report says why instead of a bare n/a (JSON, table caption and verdict alike).
    why = bl.hold_unavailable(features)
    assert why is not None and "action has 3 values and observation.state 4" in why
    from piperctl.evaluation.report import verdict

    summary = {"policy": 0.5, "hold": None, "repeat": 1.0, "beats_hold": None, "beats_repeat": True}
    assert f"'hold' n/a: {why}" in verdict({"summary": summary, "hold_unavailable": why})
    del features["observation.state"]
    assert bl.hold_unavailable(features) == "the dataset has no observation.state"


def _keys(obj: object, out: set[str]) -> set[str]:
    """Every field name in a report (per-joint objects are data keyed by joint name: not descended)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.add(k)
            if k not in ("mae", "rmse", "max"):
                _keys(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _keys(v, out)
    return out


def test_eval_json_fields_are_documented_and_report_file_written(
    eval_run: Path, tiny_ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    report_file = tmp_path / "eval.json"
    code, stdout, err = run_cli(
        ["eval", eval_run, "--dataset-root", tiny_ds, "--episodes", "4", "--report", report_file], capsys
    )
    assert code == 0, err
    assert "normalised" in stdout  # the table on the terminal, the JSON in the file
    report = json.loads(report_file.read_text())
    doc = (Path(__file__).parents[1] / "docs" / "export-eval.md").read_text()
    documented = set(re.findall(r"`([a-z0-9_]+)`", doc))
    missing = _keys(report, set()) - documented
    assert not missing, f"not documented in docs/export-eval.md: {sorted(missing)}"
    # The export's model card carries the table of a report about its own weights only.
    out = tmp_path / "exp"
    code, _, err = run_cli(["export", eval_run, out, "--eval-report", report_file], capsys)
    assert code == 0, err
    assert "| gripper |" in (out / "README.md").read_text() and (out / "eval.json").is_file()
    code, _, err = run_cli(
        [
            "export",
            eval_run / "checkpoint-2",
            tmp_path / "x",
            "--eval-report",
            tiny_ds / "meta" / "info.json",
        ],
        capsys,
    )
    assert code == 2 and "not a 'piperctl eval --json' report" in one_error_line(err)


def test_eval_and_init_from_take_a_lerobot_train_output_folder(
    eval_run: Path, tiny_ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    # lerobot-train's layout: RUN/checkpoints/<step:06d>/{pretrained_model,training_state}, last -> newest.
    lerobot_run = tmp_path / "outputs" / "train" / "act_piper"
    for step in (1, 2):
        ckpt = lerobot_run / "checkpoints" / f"{step:06d}"
        shutil.copytree(eval_run / "pretrained_model", ckpt / "pretrained_model")
        for ours in ("manifest.json", "piperctl.json", "README.md"):
            (ckpt / "pretrained_model" / ours).unlink(missing_ok=True)
        (ckpt / "training_state").mkdir()
        (ckpt / "training_state" / "training_step.json").write_text(json.dumps({"step": step}))
    (lerobot_run / "checkpoints" / "last").symlink_to("000002")

    for path, step in [
        (lerobot_run, 2),
        (lerobot_run / "checkpoints", 2),
        (lerobot_run / "checkpoints" / "last", 2),
        (lerobot_run / "checkpoints" / "000001", 1),
        (lerobot_run / "checkpoints" / "000001" / "pretrained_model", 1),
    ]:
        code, stdout, err = run_cli(
            ["eval", path, "--dataset-root", tiny_ds, "--episodes", "4", "--json"], capsys
        )
        assert code == 0, err
        model = json.loads(stdout)["model"]
        assert model["step"] == step, path
        if path.name != "pretrained_model":
            assert (
                f"lerobot-train checkpoint {'000002' if step == 2 else '000001'} (step {step})"
                in model["description"]
            )

    from piperctl import train

    ft = tmp_path / "ft"
    train(
        ft,
        dataset_root=str(tiny_ds),
        init_from=str(lerobot_run),
        steps=1,
        save_every=1,
        batch_size=2,
        num_workers=0,
        policy_options={},
    )
    assert "lerobot-train checkpoint 000002 (step 2)" in capsys.readouterr().err
