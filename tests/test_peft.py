"""Fine-tuning with LoRA adapters and --freeze: adapter-only checkpoints, exact resume, base checks, lerobot loading."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from piperctl import checkpoints as ckpt
from piperctl.checkpoints import format as fmt
from piperctl.checkpoints.adapters import BASE_FILES
from piperctl.checkpoints.integrity import sha256_file
from tests.conftest import (
    assert_same_optimizer_state,
    assert_same_weights,
    hide_package,
    losses,
    one_error_line,
    piperctl_cli,
    run_cli,
    train_args,
    train_tiny,
)

LORA = {"r": 4, "target_modules": ["linear1", "linear2"]}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tiny_ds: Path) -> Path:
    """A tiny ACT run (2 steps) whose final model is the base the fine-tuning runs start from."""
    run = tmp_path_factory.mktemp("peft_base") / "base"
    train_tiny(run, tiny_ds, steps=2, save_every=2, val_episodes=None)
    return run


def _base_hashes(monkeypatch: pytest.MonkeyPatch, base_model: Path) -> list[str]:
    """The names of the base model's files hashed from now on (the per-process hash memo emptied)."""
    from piperctl.checkpoints import adapters, integrity

    monkeypatch.setattr(adapters, "_HASHED", {})
    calls: list[str] = []
    real = integrity.sha256_file

    def counting(path: Path) -> str:
        if Path(path).resolve().parent == base_model.resolve():
            calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(integrity, "sha256_file", counting)
    return calls


def _lora_args(run: Path, ds: Path, base: Path, **overrides: object) -> list[str]:
    peft = ["--init-from", base / ckpt.PRETRAINED_DIR, "--peft", "lora", "--peft-opt", "r=4"]
    peft += ["--peft-opt", 'target_modules=["linear1","linear2"]']
    return [*train_args(run, ds, **overrides), *map(str, peft)]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_ds: Path, base: Path) -> Path:
    """An uninterrupted 8-step LoRA run over `base` (checkpoints at 4 and 8)."""
    run = tmp_path_factory.mktemp("lora") / "run"
    init = str(base / ckpt.PRETRAINED_DIR)
    train_tiny(run, tiny_ds, init_from=init, peft="lora", peft_options=dict(LORA))
    return run


@pytest.mark.train
def test_a_lora_checkpoint_holds_only_the_adapter_and_names_its_base(lora_run: Path, base: Path) -> None:
    c8 = lora_run / "checkpoint-8"
    assert ckpt.check_checkpoint(c8).ok
    saved = load_file(str(c8 / ckpt.POLICY_WEIGHTS))
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved), sorted(saved)
    # Adapters, their optimizer state and the rest of the resume state: under a fifth of a full checkpoint.
    assert _size(c8) * 5 < _size(base / "checkpoint-2"), (_size(c8), _size(base / "checkpoint-2"))
    ref = json.loads((c8 / fmt.BASE_REF).read_text())
    base_model = base / ckpt.PRETRAINED_DIR
    assert ref["source"] == "local" and ref["location"] == str(base_model.resolve())
    assert ref["files"]["model.safetensors"]["sha256"] == sha256_file(base_model / ckpt.LEROBOT_WEIGHTS)
    assert ref["peft"]["r"] == 4 and ref["peft"]["peft_type"] == "LORA"
    # Only the adapter was trained: the base's own weights inside the run are untouched.
    opt = torch.load(c8 / ckpt.OPTIMIZER_STATE, weights_only=True)
    assert sum(len(g["params"]) for g in opt["param_groups"]) == len(saved)
    # The final model is lerobot-train's PEFT layout: adapter files and a config saying use_peft.
    final = lora_run / ckpt.PRETRAINED_DIR
    assert json.loads((final / ckpt.POLICY_CONFIG).read_text())["use_peft"] is True
    adapter = json.loads((final / fmt.ADAPTER_CONFIG).read_text())
    assert adapter["base_model_name_or_path"] == str(base_model.resolve()) and adapter["r"] == 4
    assert not (final / ckpt.LEROBOT_WEIGHTS).exists()


@pytest.mark.train
def test_a_killed_lora_run_resumes_bit_exactly(
    tmp_path: Path,
    tiny_ds: Path,
    base: Path,
    lora_run: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    res = piperctl_cli(_lora_args(run, tiny_ds, base), env={"PIPERCTL_FAULT": "after-save:4"})
    assert res.returncode == -signal.SIGKILL, res.stderr
    hashed = _base_hashes(monkeypatch, base / ckpt.PRETRAINED_DIR)
    code, _, err = run_cli(["resume", run], capsys)
    assert code == 0, err
    # The base's files are the very ones hashed when the run started: resume does not hash them again.
    assert hashed == []
    assert losses(run) == losses(lora_run)
    assert_same_weights(run / "checkpoint-8", lora_run / "checkpoint-8")
    a = load_file(str(run / ckpt.PRETRAINED_DIR / fmt.ADAPTER_WEIGHTS))
    b = load_file(str(lora_run / ckpt.PRETRAINED_DIR / fmt.ADAPTER_WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert_same_optimizer_state(run / "checkpoint-8", lora_run / "checkpoint-8")


@pytest.mark.train
def test_verify_checks_the_base(
    lora_run: Path, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hashed = _base_hashes(monkeypatch, base / ckpt.PRETRAINED_DIR)
    code, out, err = run_cli(["checkpoints", "verify", lora_run, "--json"], capsys)
    assert code == 0, out + err
    doc = json.loads(out)
    assert [c["kind"] for c in doc["checkpoints"]] == ["checkpoint", "checkpoint", "model"]
    assert all(c["checks"]["base"] == "pass" and c["checks"]["policy"] == "pass" for c in doc["checkpoints"])
    # Three folders name the same base: each of its files is hashed once, not once per folder.
    assert sorted(hashed) == sorted(BASE_FILES)
    weights = base / ckpt.PRETRAINED_DIR / ckpt.LEROBOT_WEIGHTS
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-4] + bytes(4 * [original[-1] ^ 1]))
        code, out, _ = run_cli(["checkpoints", "verify", lora_run / "checkpoint-8", "--json"], capsys)
        assert code == 1
        (problem,) = json.loads(out)["checkpoints"][0]["problems"]
        assert problem["code"] == "base-changed" and problem["check"] == "base"
        # resume refuses it too, in one line naming the base.
        code, _, err = run_cli(["resume", lora_run / "checkpoint-8", "--steps", "9"], capsys)
        assert code == 2 and "changed since the run started" in one_error_line(err, after_logs=True)
    finally:
        weights.write_bytes(original)
    moved = base / "moved"
    (base / ckpt.PRETRAINED_DIR).rename(moved)
    try:
        code, out, _ = run_cli(["checkpoints", "verify", lora_run / ckpt.PRETRAINED_DIR, "--json"], capsys)
        assert code == 1
        codes = {p["code"] for p in json.loads(out)["checkpoints"][0]["problems"]}
        assert codes == {"base-missing"}
        # --quick hashes nothing but still finds the base gone.
        code, out, _ = run_cli(
            ["checkpoints", "verify", lora_run / "checkpoint-8", "--quick", "--json"], capsys
        )
        (report,) = json.loads(out)["checkpoints"]
        assert code == 1 and report["checks"]["base"] == "fail" and report["checks"]["sha256"] == "skipped"
        assert [p["code"] for p in report["problems"]] == ["base-missing"]
    finally:
        moved.rename(base / ckpt.PRETRAINED_DIR)


@pytest.mark.train
def test_the_export_loads_in_lerobot_as_an_adapter_and_merged(
    tmp_path: Path, lora_run: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import get_policy_class, make_policy
    from peft import PeftModel

    out, merged = tmp_path / "export", tmp_path / "merged"
    code, _, err = run_cli(["export", lora_run / "checkpoint-8", out], capsys)
    assert code == 0, err
    code, _, err = run_cli(["export", lora_run / "checkpoint-8", merged, "--merge"], capsys)
    assert code == 0, err
    # lerobot's own loading of a PEFT policy (as lerobot-rollout --policy.path=OUT does).
    cfg = PreTrainedConfig.from_pretrained(out)
    cfg.pretrained_path = out
    cfg.device = "cpu"
    meta = LeRobotDatasetMetadata("local/tiny", root=tiny_ds)
    policy = make_policy(cfg, ds_meta=meta)
    assert isinstance(policy, PeftModel)
    trained = load_file(str(lora_run / "checkpoint-8" / ckpt.POLICY_WEIGHTS))
    params = dict(policy.named_parameters())
    assert all(torch.equal(params[k], t) for k, t in trained.items())
    plain = get_policy_class("act").from_pretrained(merged)
    assert not json.loads((merged / ckpt.POLICY_CONFIG).read_text())["use_peft"]
    policy.eval()
    state_dim = meta.features["observation.state"]["shape"][0]
    batch = {
        "observation.state": torch.randn(1, state_dim),
        "observation.environment_state": torch.randn(
            1, meta.features["observation.environment_state"]["shape"][0]
        ),
    }
    with torch.no_grad():
        a, b = policy.select_action(dict(batch)), plain.select_action(dict(batch))
    assert a.shape == (1, meta.features["action"]["shape"][0])
    assert torch.allclose(a, b, atol=1e-5)  # the merged model computes what base + adapter compute
    code, out_json, _ = run_cli(["checkpoints", "verify", out, merged, "--json"], capsys)
    assert code == 0, out_json
    # The run's final model (PEFT layout) merges the same way.
    final_merged = tmp_path / "final_merged"
    code, _, err = run_cli(["export", lora_run, final_merged, "--final", "--merge"], capsys)
    assert code == 0, err
    again = get_policy_class("act").from_pretrained(final_merged)
    with torch.no_grad():
        assert torch.allclose(again.select_action(dict(batch)), b, atol=1e-5)


@pytest.mark.train
def test_eval_scores_a_lora_runs_final_model_as_its_merged_export(
    tmp_path: Path, lora_run: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    merged = tmp_path / "merged"
    code, _, err = run_cli(["export", lora_run, merged, "--final", "--merge"], capsys)
    assert code == 0, err
    reports = []
    for target in ([lora_run, "--final"], [merged]):
        code, out, err = run_cli(["eval", *target, "--dataset-root", tiny_ds, "--json"], capsys)
        assert code == 0, err
        reports.append(json.loads(out))
    peft, plain = reports
    # base + adapter (rebuilt over the checked base) acts as the merged weights do, on the held-out episode.
    assert peft["model"]["policy_type"] == "act" and peft["episodes"]["ids"] == plain["episodes"]["ids"] == [
        4
    ]
    a, b = peft["executed"]["policy"], plain["executed"]["policy"]
    assert a["frames"] == b["frames"] > 0 and isinstance(a["nmae"], float)
    assert a["nmae"] == pytest.approx(b["nmae"], rel=1e-4)


@pytest.mark.train
def test_freeze_saves_only_what_trains(tmp_path: Path, tiny_ds: Path, base: Path) -> None:
    run = tmp_path / "run"
    init = str(base / ckpt.PRETRAINED_DIR)
    train_tiny(run, tiny_ds, init_from=init, freeze=["model.encoder.*"], steps=2, save_every=2)
    saved = load_file(str(run / "checkpoint-2" / ckpt.POLICY_WEIGHTS))
    full = load_file(str(base / ckpt.PRETRAINED_DIR / ckpt.LEROBOT_WEIGHTS))
    assert saved and not [k for k in saved if k.startswith("model.encoder.")]
    assert {k for k in full if not k.startswith("model.encoder.")} >= set(saved)
    # The final model is whole (lerobot loads it plainly), its frozen part the base's bit for bit.
    final = load_file(str(run / ckpt.PRETRAINED_DIR / ckpt.LEROBOT_WEIGHTS))
    assert final.keys() == full.keys()
    assert all(torch.equal(final[k], full[k]) for k in full if k.startswith("model.encoder."))
    assert ckpt.check_checkpoint(run / "checkpoint-2").ok


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--peft", "lora"], "needs --init-from"),
        (["--freeze", "model.*"], "needs --init-from"),
        (["--peft-opt", "r=4"], "--peft-opt needs --peft"),
        (["--peft", "lora", "--peft-opt", "rank=4"], "rank is not a PEFT option"),
        (["--gradient-checkpointing"], "does not support gradient checkpointing"),
    ],
)
def test_fine_tuning_options_that_cannot_work_are_one_line(
    tmp_path: Path, tiny_ds: Path, extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli([*train_args(tmp_path / "run", tiny_ds), *extra], capsys)
    assert code == 2 and needle in one_error_line(err, after_logs=True), err


@pytest.mark.train
def test_act_needs_target_modules_and_a_lerobot_layout_base(
    tmp_path: Path, tiny_ds: Path, base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*train_args(tmp_path / "run", tiny_ds), "--peft", "lora", "--init-from"]
    code, _, err = run_cli([*args, base / ckpt.PRETRAINED_DIR], capsys)
    line = one_error_line(err, after_logs=True)
    assert code == 2 and "no default PEFT target modules" in line and "target_modules" in line
    code, _, err = run_cli([*args, base / "checkpoint-2", "--peft-opt", "target_modules=linear1"], capsys)
    assert code == 2 and "lerobot's layout" in one_error_line(err, after_logs=True)


def test_a_missing_peft_is_one_line_naming_the_extra(
    tmp_path: Path, tiny_ds: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hide_package(monkeypatch, "peft")
    args = [*train_args(tmp_path / "run", tiny_ds), "--peft", "lora", "--init-from", tmp_path]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "pip install 'piperctl[vla]'" in one_error_line(err, after_logs=True)


def test_gradient_checkpointing_is_set_where_the_policy_has_it() -> None:
    from piperctl.training.config import TrainConfig
    from piperctl.training.finetune import policy_options
    from piperctl.training.policy import policy_class

    cfg = TrainConfig.from_options("out", None, {"policy": "diffusion", "gradient_checkpointing": True})
    assert policy_options(cfg, policy_class("diffusion"), {"horizon": 8}) == {
        "horizon": 8,
        "gradient_checkpointing": True,
    }
