"""`piperctl export`, the run's final model, the best checkpoint and `--init-from` a lerobot folder.

The promise: what piperctl writes loads in lerobot's own `from_pretrained` / `make_pre_post_processors`
and acts bit-identically to piperctl's own inference on the same frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from piperctl.checkpoints import format as fmt
from piperctl.errors import PiperctlError
from tests.conftest import TINY_ACT, one_error_line, run_cli, train_args
from tests.test_training import TINY_DIFFUSION

FAST = {"batch_size": 4, "num_workers": 0, "val_episodes": "1", "seed": 5}


def _train(run: Path, ds: Path, **overrides):
    from piperctl import train

    opts = {**FAST, "policy_options": dict(TINY_ACT), **overrides}
    return train(run, dataset_id="local/tiny", dataset_root=str(ds), **opts)


@pytest.fixture
def act_run(cam_run: Path) -> Path:
    """A 4-step tiny ACT run on a camera dataset (checkpoints at 2 and 4): exports carry the vision backbone."""
    return cam_run


def actions_on_frames(
    policy, preprocessor, postprocessor, ds_root: Path, episode: int, seed: int = 0
) -> list:
    """Actions select_action returns frame by frame over one episode (policy reset first, seeded)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/tiny", root=ds_root)
    start = int(ds.meta.episodes["dataset_from_index"][episode])
    end = int(ds.meta.episodes["dataset_to_index"][episode])
    policy.eval()
    policy.reset()
    torch.manual_seed(seed)
    out = []
    with torch.inference_mode():
        for i in range(start, end):
            item = ds[i]
            obs = {k: v for k, v in item.items() if k.startswith("observation.")}
            obs["task"] = item["task"]
            out.append(postprocessor(policy.select_action(preprocessor(obs))))
    return out


def lerobot_load(folder: Path):
    """The policy and processors as lerobot itself loads a pretrained_model folder (no piperctl code)."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    cfg = PreTrainedConfig.from_pretrained(folder)
    policy = get_policy_class(cfg.type).from_pretrained(folder)
    pre, post = make_pre_post_processors(cfg, pretrained_path=str(folder))
    return policy, pre, post


def _assert_export_matches(source: Path, export: Path, ds: Path, episode: int) -> None:
    from piperctl.checkpoints.model import load_model
    from piperctl.checkpoints.verify import verify_paths

    mine = load_model(source, "cpu")
    ours = actions_on_frames(mine.policy, mine.preprocessor, mine.postprocessor, ds, episode)
    theirs = actions_on_frames(*lerobot_load(export), ds, episode)
    assert len(ours) == len(theirs) > 10
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    report = verify_paths([export])
    assert [r.passed for r in report] == [True], [r.result.problems for r in report]


def test_export_of_act_run_loads_in_lerobot_bit_identically(
    act_run: Path, tiny_cam_ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exported"
    code, stdout, err = run_cli(["export", act_run, out], capsys)
    assert code == 0, err
    # The best checkpoint by default, and the command says which.
    assert "best checkpoint" in stdout and "checkpoint-" in stdout
    best_step = json.loads((out / fmt.MODEL_INFO).read_text())["step"]
    for name in fmt.LEROBOT_LAYOUT.files + (fmt.MODEL_CARD, fmt.MANIFEST):
        assert (out / name).is_file(), name
    _assert_export_matches(act_run / f"checkpoint-{best_step}", out, tiny_cam_ds, episode=4)
    card = (out / fmt.MODEL_CARD).read_text()
    state = json.loads((act_run / f"checkpoint-{best_step}" / fmt.TRAINING_STATE).read_text())
    assert "library_name: lerobot" in card and state["dataset"]["fingerprint"] in card
    assert f"| optimizer steps | {best_step} |" in card and "lerobot" in card


def test_final_model_is_lerobot_loadable_and_verifies(act_run: Path, tiny_cam_ds: Path) -> None:
    from piperctl.checkpoints.verify import verify_paths

    final = act_run / fmt.PRETRAINED_DIR
    policy, pre, post = lerobot_load(final)
    assert len(actions_on_frames(policy, pre, post, tiny_cam_ds, 0)) > 10
    reports = verify_paths([act_run])
    assert {r.target.path.name: r.passed for r in reports} == {
        "checkpoint-2": True,
        "checkpoint-4": True,
        fmt.PRETRAINED_DIR: True,
    }
    # A stray file in the final model is reported (the folder is the model's alone).
    (final / "notes.txt").write_text("x")
    try:
        bad = [r for r in verify_paths([act_run]) if r.target.kind == "model"]
        assert [i.code for i in bad[0].result.issues] == ["unexpected-file"]
    finally:
        (final / "notes.txt").unlink()


@pytest.mark.train
def test_export_of_diffusion_checkpoint_is_bit_identical(
    tmp_path: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "diff"
    _train(run, tiny_ds, policy="diffusion", policy_options=dict(TINY_DIFFUSION), steps=2, save_every=2)
    out = tmp_path / "diff_export"
    code, _, err = run_cli(["export", run / "checkpoint-2", out], capsys)
    assert code == 0, err
    _assert_export_matches(run / "checkpoint-2", out, tiny_ds, episode=4)


def test_export_never_overwrites_without_force(
    act_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    code, _, err = run_cli(["export", act_run, out], capsys)
    assert code == 2 and "--force" in one_error_line(err)
    assert (out / "mine.txt").read_text() == "user data"
    code, stdout, err = run_cli(["export", act_run, out, "--force", "--final"], capsys)
    assert code == 0, err
    assert "final model" in stdout and not (out / "mine.txt").exists()
    assert json.loads((out / fmt.MODEL_INFO).read_text())["source"] == "final"
    code, _, err = run_cli(["export", act_run / "nope", tmp_path / "x"], capsys)
    assert code == 2 and "does not exist" in one_error_line(err)


# ---------------------------------------------------------------------------------------------
# Hub push


def test_push_offline_is_one_line_and_writes_nothing(
    act_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    code, _, err = run_cli(["export", act_run, out, "--push-to-hub", "me/piper_act"], capsys)
    assert code == 2
    line = one_error_line(err)
    assert "HF_HUB_OFFLINE" in line and "nothing was pushed" in line
    assert not out.exists()


def test_push_without_login_is_one_line(
    act_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:

    monkeypatch.setattr("piperctl.hub.offline", lambda: False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    code, _, err = run_cli(["export", act_run, tmp_path / "o", "--push-to-hub", "me/piper_act"], capsys)
    assert code == 2 and "not logged in" in one_error_line(err)
    assert not (tmp_path / "o").exists()


class _FakeApi:
    calls: list = []
    fail: Exception | None = None

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        type(self).calls.append(("create_repo", repo_id, kwargs))
        if type(self).fail is not None:
            raise type(self).fail
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        type(self).calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        folder = Path(kwargs["folder_path"])
        # What would be uploaded: the whole sealed export.
        type(self).files = sorted(p.name for p in folder.iterdir())


def test_push_creates_repo_and_uploads_the_sealed_folder(
    act_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:

    monkeypatch.setattr("piperctl.hub.offline", lambda: False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_test")
    monkeypatch.setattr("huggingface_hub.HfApi", _FakeApi)
    _FakeApi.calls, _FakeApi.fail = [], None
    out = tmp_path / "pushed"
    code, stdout, err = run_cli(
        ["export", act_run, out, "--push-to-hub", "me/piper_act", "--private"], capsys
    )
    assert code == 0, err
    (c_name, c_repo, c_kw), (u_name, u_repo, u_kw) = _FakeApi.calls
    assert (c_name, c_repo, c_kw["private"], c_kw["exist_ok"]) == ("create_repo", "me/piper_act", True, True)
    assert (u_name, u_repo, Path(u_kw["folder_path"])) == ("upload_folder", "me/piper_act", out)
    assert {fmt.LEROBOT_WEIGHTS, fmt.MANIFEST, fmt.MODEL_CARD} <= set(_FakeApi.files)
    assert "pushed to https://huggingface.co/me/piper_act" in stdout

    # A failing Hub call: one line, the local export stays complete, and the retry command is named.
    _FakeApi.calls, _FakeApi.fail = [], RuntimeError("503 Service Unavailable")
    code, _, err = run_cli(["export", out, "--push-to-hub", "me/piper_act"], capsys)
    line = one_error_line(err, after_logs=True)
    assert code == 2 and "nothing was committed" in line and f"piperctl export {out} --push-to-hub" in line
    assert [c[0] for c in _FakeApi.calls] == ["create_repo"]


# ---------------------------------------------------------------------------------------------
# best checkpoint


@pytest.mark.train
def test_best_checkpoint_survives_rotation_is_listed_and_exported(
    tmp_path: Path, tiny_ds: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from piperctl.training.trainer import Trainer

    values = iter([5.0, 1.0, 3.0, 4.0])
    monkeypatch.setattr(Trainer, "validate", lambda self: {"val_loss": next(values)})
    run = tmp_path / "best"
    _train(run, tiny_ds, steps=8, save_every=2, keep_last=1)
    # keep-last 1 keeps the newest, and the best (val 1.0 at step 4) is never rotated away.
    assert [p.name for p in fmt.list_checkpoints(run)] == ["checkpoint-4", "checkpoint-8"]
    state = json.loads((run / "checkpoint-8" / fmt.TRAINING_STATE).read_text())
    assert state["best"] == {"step": 4, "metric": "val_loss", "value": 1.0}
    code, stdout, _ = run_cli(["checkpoints", "list", run, "--json"], capsys)
    assert code == 0
    assert {r["step"]: r["best"] for r in json.loads(stdout)} == {4: True, 8: False}
    code, stdout, err = run_cli(["export", run, tmp_path / "e"], capsys)
    assert code == 0, err
    assert "checkpoint-4, the run's best checkpoint (val_loss 1 at step 4)" in stdout
    assert json.loads((tmp_path / "e" / fmt.MODEL_INFO).read_text())["step"] == 4


@pytest.mark.train
def test_eval_every_picks_best_by_open_loop_action_error(
    tmp_path: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "nmae"
    # Through the command line: it must hand training evaluation's open-loop scorer, as piperctl.train does.
    code, _, err = run_cli(train_args(run, tiny_ds, steps=2, save_every=2, eval_every=1), capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in (run / fmt.METRICS_FILE).read_text().splitlines()]
    nmae = {r["step"]: r["val_action_nmae"] for r in rows if "val_action_nmae" in r}
    assert sorted(nmae) == [1, 2] and all(v > 0 for v in nmae.values())
    best = json.loads((run / "checkpoint-2" / fmt.TRAINING_STATE).read_text())["best"]
    assert best["metric"] == "val_action_nmae"
    assert best["value"] == min(nmae.values()) and best["step"] == min(nmae, key=nmae.get)
    # A new best is always checkpointed, even between --save-every steps.
    assert (run / f"checkpoint-{best['step']}").is_dir()


# ---------------------------------------------------------------------------------------------
# --init-from a lerobot pretrained_model


def _lerobot_pretrained(folder: Path, ds: Path) -> None:
    """Write a folder exactly as lerobot-train does: policy.save_pretrained + processors' save_pretrained."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    meta = LeRobotDatasetMetadata("local/tiny", root=ds)
    torch.manual_seed(123)
    cfg = ACTConfig(device="cpu", push_to_hub=False, **TINY_ACT)
    policy = make_policy(cfg, ds_meta=meta)
    pre, post = make_pre_post_processors(cfg, dataset_stats=meta.stats)
    policy.save_pretrained(folder)
    pre.save_pretrained(folder)
    post.save_pretrained(folder)


@pytest.mark.train
def test_init_from_lerobot_pretrained_model(tmp_path: Path, tiny_ds: Path) -> None:
    from safetensors.torch import load_file

    src = tmp_path / "pretrained_model"
    _lerobot_pretrained(src, tiny_ds)
    assert (src / fmt.LEROBOT_WEIGHTS).is_file() and (src / fmt.LEROBOT_PREPROCESSOR).is_file()
    run = tmp_path / "ft"
    # No --policy-opt: the architecture comes from the pretrained config, as with lerobot-train --policy.path.
    _train(
        run,
        tiny_ds,
        steps=1,
        save_every=1,
        lr=1e-12,
        policy_options={"optimizer_lr_backbone": 1e-12},
        init_from=str(src),
    )
    old = load_file(str(src / fmt.LEROBOT_WEIGHTS))
    new = load_file(str(run / "checkpoint-1" / fmt.POLICY_WEIGHTS))
    assert old.keys() == new.keys()
    assert all(torch.allclose(new[k], old[k], atol=1e-6) for k in old)
    assert (
        json.loads((run / "checkpoint-1" / fmt.POLICY_CONFIG).read_text())["dim_model"]
        == TINY_ACT["dim_model"]
    )


def test_init_from_refuses_mismatched_feature_in_one_line(
    tmp_path: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "pretrained_model"
    _lerobot_pretrained(src, tiny_ds)
    cfg = json.loads((src / fmt.POLICY_CONFIG).read_text())
    cfg["input_features"]["observation.state"]["shape"] = [6]
    (src / fmt.POLICY_CONFIG).write_text(json.dumps(cfg))
    run = tmp_path / "ft"
    with pytest.raises(PiperctlError, match=r"observation\.state of shape \[6\].*has shape \[7\]"):
        _train(run, tiny_ds, steps=1, save_every=1, init_from=str(src))
    code, _, err = run_cli(
        ["train", "-o", tmp_path / "ft2", "--dataset-root", tiny_ds, "--init-from", "nobody/no_such_model"],
        capsys,
    )
    assert code == 2 and "cannot download nobody/no_such_model" in one_error_line(err, after_logs=True)
