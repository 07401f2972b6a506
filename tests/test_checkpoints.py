"""`piperctl checkpoints list` / `verify`: every kind of damage is found and named; nothing untrusted runs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from piperctl import checkpoints as ckpt
from piperctl.errors import PiperctlError
from tests.conftest import TINY_ACT, metric_rows, one_error_line, run_cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "checkpoint-format.md"


@pytest.fixture(scope="session")
def good_run(tmp_path_factory: pytest.TempPathFactory, tiny_ds: Path) -> Path:
    """A 4-step ACT run with checkpoint-2, checkpoint-4, final model files and validation losses.

    Shared read-only: tests that damage a run copy it into their own tmp_path first. A camera-less
    ACT (~1 MB checkpoints): the checks read files and manifests, whatever the model.
    """
    from piperctl import train

    run = tmp_path_factory.mktemp("ckpt_run") / "run"
    train(
        run,
        dataset_id="local/x",
        dataset_root=tiny_ds,
        steps=4,
        batch_size=4,
        save_every=2,
        num_workers=0,
        val_episodes="1",
        policy_options=dict(TINY_ACT),
    )
    return run


def _copy_run(good_run: Path, tmp_path: Path, checkpoints: tuple[str, ...] | None = None) -> Path:
    """A private copy of the run (optionally only some checkpoints, to keep copies cheap)."""
    run = tmp_path / "run"
    if checkpoints is None:
        shutil.copytree(good_run, run)
        return run
    run.mkdir()
    for name in (ckpt.RUN_FILE, "metrics.jsonl"):
        shutil.copy2(good_run / name, run / name)
    for name in checkpoints:
        shutil.copytree(good_run / name, run / name)
    return run


def _reseal(folder: Path) -> None:
    """Rewrite the manifest to match the folder, as an attacker (or a careless tool) could."""
    ckpt.write_json(folder / ckpt.MANIFEST, ckpt.build_manifest(folder, ckpt.step_of(folder)))


def _verify(paths: list[Path], capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:
    code, out, err = run_cli(["checkpoints", "verify", *paths, "--json", *extra], capsys)
    assert "Traceback" not in err
    return code, json.loads(out)


def _codes(report: dict) -> set[tuple[str, str | None]]:
    return {(p["code"], p["file"]) for p in report["problems"]}


# ---------------------------------------------------------------------------------------------
# a good run


def test_verify_leaves_no_temp_files(
    good_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """lerobot's PreTrainedConfig.from_pretrained leaves a tmp*.json behind per call; reading ours must not."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, _ = _verify([good_run], capsys)
    assert code == 0
    assert list(tmp_path.iterdir()) == []


def test_good_run_verifies(good_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _verify([good_run], capsys)
    assert code == 0 and doc["ok"] is True and doc["mode"] == "full"
    got = [(c["path"], c["kind"], c["step"], c["verdict"]) for c in doc["checkpoints"]]
    assert got == [
        (str(good_run / "checkpoint-2"), "checkpoint", 2, "pass"),
        (str(good_run / "checkpoint-4"), "checkpoint", 4, "pass"),
        (str(good_run / "pretrained_model"), "model", 4, "pass"),
    ]
    assert set(doc["checkpoints"][0]["checks"].values()) == {"pass"}
    final = doc["checkpoints"][2]["checks"]
    assert {k for k, v in final.items() if v == "n/a"} == {"optimizer", "training_state", "rng_state"}
    assert {v for k, v in final.items() if k not in ("optimizer", "training_state", "rng_state")} == {"pass"}

    code, doc = _verify([good_run / "checkpoint-4"], capsys, "--quick")
    assert code == 0 and doc["mode"] == "quick"
    checks = doc["checkpoints"][0]["checks"]
    assert (
        checks["layout"] == checks["manifest"] == "pass" and checks["sha256"] == checks["policy"] == "skipped"
    )

    code, out, _ = run_cli(["checkpoints", "verify", good_run / "checkpoint-2"], capsys)
    assert code == 0 and "pass" in out and "all 1 passed" in out


def test_list_good_run(good_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["checkpoints", "list", good_run, "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    metrics = {r["step"]: r for r in metric_rows(good_run)}
    assert [r["step"] for r in rows] == [2, 4]
    assert [r["resume"] for r in rows] == [False, True]
    assert [r["state"] for r in rows] == ["complete", "complete"]
    for r in rows:
        folder = good_run / f"checkpoint-{r['step']}"
        assert r["path"] == str(folder)
        assert r["train_loss"] == metrics[r["step"]]["loss"] and r["train_loss_step"] == r["step"]
        assert r["val_loss"] == metrics[r["step"]]["val_loss"] and r["val_loss_step"] == r["step"]
        assert r["size_bytes"] == sum(p.stat().st_size for p in folder.iterdir())
        assert r["written"] == json.loads((folder / ckpt.MANIFEST).read_text())["created"]
        assert r["problems"] == []
    # The resume pick was proven by hashing; the other one only had the quick check.
    assert [r["checked"] for r in rows] == ["size", "sha256"]

    code, out, _ = run_cli(["checkpoints", "list", good_run], capsys)
    assert code == 0
    resume_lines = [ln for ln in out.splitlines() if "<- resume" in ln]
    assert len(resume_lines) == 1 and re.match(r"^\s*4\s", resume_lines[0]), out


# ---------------------------------------------------------------------------------------------
# damage, one kind at a time


def _flip_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))


DAMAGE = {
    # name: (what to do to checkpoint-2, problems a full verify must name, found by --quick too)
    "missing": (lambda f: (f / ckpt.RNG_STATE_JSON).unlink(), {("missing-file", ckpt.RNG_STATE_JSON)}, True),
    "truncated": (
        lambda f: os.truncate(f / ckpt.POLICY_WEIGHTS, (f / ckpt.POLICY_WEIGHTS).stat().st_size // 2),
        {("size-mismatch", ckpt.POLICY_WEIGHTS), ("safetensors-invalid", ckpt.POLICY_WEIGHTS)},
        True,
    ),
    "flipped": (
        lambda f: _flip_byte(f / ckpt.OPTIMIZER_STATE),
        {("sha256-mismatch", ckpt.OPTIMIZER_STATE)},
        False,
    ),
    "extra": (lambda f: (f / "notes.txt").write_text("mine"), {("unexpected-file", "notes.txt")}, True),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_is_found_and_named(
    damage: str, good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    do, expected, quick_finds = DAMAGE[damage]
    run = _copy_run(good_run, tmp_path, ("checkpoint-2",))
    folder = run / "checkpoint-2"
    do(folder)
    code, doc = _verify([folder], capsys)
    (report,) = doc["checkpoints"]
    assert code == 1 and doc["ok"] is False and report["verdict"] == "fail" and report["state"] == "corrupt"
    assert expected <= _codes(report), report["problems"]
    code, doc = _verify([folder], capsys, "--quick")
    assert (code == 1) is quick_finds  # --quick reads no content: a same-size bit flip passes it


def test_training_state_reads_typed_and_writes_back_the_same(good_run: Path) -> None:
    from piperctl.checkpoints.format import LrSchedule, Topology

    written = json.loads((good_run / "checkpoint-4" / ckpt.TRAINING_STATE).read_text())
    state, problems = ckpt.TrainingState.parse(written, good_run / "checkpoint-4")
    assert problems == [] and state is not None
    assert state.topology == [Topology(0, 1, 4, 4)] and isinstance(state.lr_schedule, LrSchedule)
    assert state.lr_schedule.total_steps == 4 and state.data.epoch_length > 0
    # Typed on the inside, the same JSON on disk: what the trainer writes parses back unchanged.
    assert json.loads(state.to_text()) == written
    # Checkpoints written before topology, the LR schedule and best were recorded still load.
    older = {k: v for k, v in written.items() if k not in ("topology", "lr_schedule", "best")}
    state = ckpt.TrainingState.parse(older)[0]
    assert state is not None and state.topology == [] and state.lr_schedule is None and state.best is None
    # A field of the wrong type is a problem verify reports, not a crash.
    state, problems = ckpt.TrainingState.parse({**written, "samples_seen": "many"})
    assert state is None and problems[-1].code == "training-state-invalid"


def test_renamed_folder_step_disagrees(
    good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(good_run, tmp_path, ("checkpoint-2",))
    folder = (run / "checkpoint-2").rename(run / "checkpoint-3")
    code, doc = _verify([folder], capsys)
    assert code == 1
    assert {("step-mismatch", ckpt.MANIFEST), ("step-mismatch", ckpt.TRAINING_STATE)} <= _codes(
        doc["checkpoints"][0]
    )
    # Even with a manifest rewritten for the new name, training_state.json still gives it away.
    _reseal(folder)
    code, doc = _verify([folder], capsys)
    assert code == 1 and _codes(doc["checkpoints"][0]) == {("step-mismatch", ckpt.TRAINING_STATE)}
    # A name without a step: resume could not tell where it stands.
    folder = folder.rename(run / "best")
    code, doc = _verify([folder], capsys)
    assert code == 1 and doc["checkpoints"][0]["step"] is None
    assert _codes(doc["checkpoints"][0]) == {("bad-name", None)}


def test_optimizer_state_of_another_model(
    good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from piperctl.checkpoints.model import load_policy_config, policy_from_config

    run = _copy_run(good_run, tmp_path, ("checkpoint-2",))
    folder = run / "checkpoint-2"
    cfg = load_policy_config(folder, "cpu")
    other = policy_from_config(dataclasses.replace(cfg, dim_model=16))
    optimizer = cfg.get_optimizer_preset().build(other.get_optim_params())
    for p in other.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.save(optimizer.state_dict(), folder / ckpt.OPTIMIZER_STATE)
    _reseal(folder)
    code, doc = _verify([folder], capsys)
    (report,) = doc["checkpoints"]
    assert code == 1 and _codes(report) == {("optimizer-mismatch", ckpt.OPTIMIZER_STATE)}
    assert "exp_avg" in report["problems"][0]["message"] and report["checks"]["policy"] == "pass"


# ---------------------------------------------------------------------------------------------
# untrusted content: nothing runs, nothing outside the folder is read


class _OpensFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204 - the pickle payload under test
        return (open, (self.path, "w"))


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused_without_running(
    good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from piperctl.checkpoints.untrusted import load_torch_state
    from piperctl.training import resume

    run = _copy_run(good_run, tmp_path, ("checkpoint-2",))
    folder = run / "checkpoint-2"
    opened, touched = tmp_path / "opened", tmp_path / "touched"
    payload = {
        "state": {},
        "param_groups": [],
        "a": _OpensFile(str(opened)),
        "b": _RunsCommand(f"touch {touched}"),
    }
    torch.save(payload, folder / ckpt.OPTIMIZER_STATE)
    _reseal(folder)  # the hash check passes: only the pickle itself can give it away

    code, doc = _verify([folder], capsys)
    (report,) = doc["checkpoints"]
    assert code == 1 and ("unsafe-pickle", ckpt.OPTIMIZER_STATE) in _codes(report)
    message = next(p["message"] for p in report["problems"] if p["code"] == "unsafe-pickle")
    assert "open" in message and "system" in message

    code, _, err = run_cli(["resume", folder, "--steps", "6"], capsys)
    assert code == 2 and "would call" in one_error_line(err)
    with pytest.raises(PiperctlError, match="would call"):
        resume(run, steps=6)  # a run folder: no intact checkpoint left to pick
    with pytest.raises(PiperctlError, match="would call"):
        load_torch_state(folder / ckpt.OPTIMIZER_STATE)
    assert not opened.exists() and not touched.exists()

    # The payload is real: an unsafe load runs it.
    loaded = torch.load(folder / ckpt.OPTIMIZER_STATE, weights_only=False)
    loaded["a"].close()
    assert opened.exists() and touched.exists()


def test_manifest_paths_never_leave_the_folder(
    good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from piperctl.checkpoints.manager import resolve_checkpoint

    run = _copy_run(good_run, tmp_path, ("checkpoint-2",))
    folder = run / "checkpoint-2"
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())
    secret = Path("/etc/passwd")
    manifest["files"]["../../etc/passwd"] = {
        "size": secret.stat().st_size,
        "sha256": hashlib.sha256(secret.read_bytes()).hexdigest(),
    }
    # A file swapped for a link to an identical copy outside the folder passes size and hash if followed.
    outside = run / "rng_copy.json"
    shutil.move(folder / ckpt.RNG_STATE_JSON, outside)
    (folder / ckpt.RNG_STATE_JSON).symlink_to(outside)
    ckpt.write_json(folder / ckpt.MANIFEST, manifest)

    code, doc = _verify([folder], capsys, "--quick")
    assert code == 1
    assert {("path-escape", "../../etc/passwd"), ("path-escape", ckpt.RNG_STATE_JSON)} <= _codes(
        doc["checkpoints"][0]
    )
    with pytest.raises(PiperctlError, match="no intact checkpoint"):
        resolve_checkpoint(run)


def test_processor_configs_cannot_import_or_escape(
    good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lerobot.processor.pipeline import DataProcessorPipeline

    from piperctl.checkpoints.model import load_policy_config, load_processors

    run = _copy_run(good_run, tmp_path, ("checkpoint-2",))
    folder = run / "checkpoint-2"
    marker = tmp_path / "created-by-config"
    pre = json.loads((folder / ckpt.PREPROCESSOR_CONFIG).read_text())
    step = next(s for s in pre["steps"] if "state_file" in s)
    shutil.copy(folder / step["state_file"], run / "stats_outside.safetensors")
    step["state_file"] = "../stats_outside.safetensors"
    (folder / ckpt.PREPROCESSOR_CONFIG).write_text(json.dumps(pre))
    post = json.loads((folder / ckpt.POSTPROCESSOR_CONFIG).read_text())
    post["steps"].insert(0, {"class": "logging.FileHandler", "config": {"filename": str(marker)}})
    (folder / ckpt.POSTPROCESSOR_CONFIG).write_text(json.dumps(post))
    _reseal(folder)

    code, doc = _verify([folder], capsys)
    assert code == 1
    found = _codes(doc["checkpoints"][0])
    assert {("path-escape", ckpt.PREPROCESSOR_CONFIG), ("unsafe-config", ckpt.POSTPROCESSOR_CONFIG)} <= found
    with pytest.raises(PiperctlError):
        load_processors(load_policy_config(folder, "cpu"), folder, device="cpu")
    assert not marker.exists()

    # The config is a real attack: lerobot's own loader instantiates the class it names.
    try:
        DataProcessorPipeline.from_pretrained(folder, config_filename=ckpt.POSTPROCESSOR_CONFIG)
    except Exception:  # noqa: BLE001, S110 - it may fail after running the payload; the marker tells
        pass
    assert marker.exists()


# ---------------------------------------------------------------------------------------------
# list: incomplete and corrupt checkpoints, and the resume pick


def test_list_shows_incomplete_and_corrupt(
    good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from piperctl.checkpoints.manager import resolve_checkpoint

    run = _copy_run(good_run, tmp_path, ("checkpoint-2", "checkpoint-4"))
    # checkpoint-6: a copy cut short before its manifest was written (e.g. an interrupted rsync).
    shutil.copytree(run / "checkpoint-4", run / "checkpoint-6")
    (run / "checkpoint-6" / ckpt.MANIFEST).unlink()
    # checkpoint-4: same sizes, one flipped bit: only hashing can tell.
    _flip_byte(run / "checkpoint-4" / ckpt.POLICY_WEIGHTS)

    code, out, _ = run_cli(["checkpoints", "list", run, "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [(r["step"], r["state"], r["resume"]) for r in rows] == [
        (2, "complete", True),
        (4, "corrupt", False),
        (6, "incomplete", False),
    ]
    assert "sha256 mismatch" in rows[1]["problems"][0] and "manifest.json missing" in rows[2]["problems"][0]
    assert resolve_checkpoint(run)[0] == run / "checkpoint-2"  # what `piperctl resume RUN` picks

    code, out, _ = run_cli(["checkpoints", "list", run], capsys)
    assert code == 0 and "incomplete" in out and "corrupt" in out
    assert re.match(r"^\s*2\s", next(ln for ln in out.splitlines() if "<- resume" in ln))

    (run / "checkpoint-2" / ckpt.TRAINING_STATE).unlink()
    code, out, _ = run_cli(["checkpoints", "list", run], capsys)
    assert code == 0 and "<- resume" not in out and "would refuse" in out


# ---------------------------------------------------------------------------------------------
# usage errors are one line, exit 2


def test_missing_or_empty_folders_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing, empty = tmp_path / "nope", tmp_path / "empty"
    empty.mkdir()
    for args, needle in [
        (["checkpoints", "list", missing], "does not exist"),
        (["checkpoints", "list", empty], "holds no checkpoint-N folders"),
        (["checkpoints", "verify", missing], "does not exist"),
        (["checkpoints", "verify", empty, "--json"], "holds no checkpoint-N folders"),
    ]:
        code, out, err = run_cli(args, capsys)
        assert code == 2 and needle in one_error_line(err) and out == "", args
    # A run that has not saved yet is not an error: nothing to list.
    (empty / ckpt.RUN_FILE).write_text("{}")
    code, out, _ = run_cli(["checkpoints", "list", empty, "--json"], capsys)
    assert code == 0 and json.loads(out) == []
    code, _, err = run_cli(["checkpoints", "list", empty], capsys)
    assert code == 0 and "no checkpoints yet" in err


def test_list_of_a_checkpoint_points_to_its_run(good_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["checkpoints", "list", good_run / "checkpoint-2"], capsys)
    assert code == 2 and f"piperctl checkpoints list {good_run}" in one_error_line(err)


# ---------------------------------------------------------------------------------------------
# the --json contract


def _documented_fields() -> set[str]:
    return set(re.findall(r"`([a-z0-9_]+)`", DOC.read_text(encoding="utf-8")))


def test_json_fields_are_stable_and_documented(good_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from piperctl.checkpoints.verify import CHECKS

    _, doc = _verify([good_run / "checkpoint-2"], capsys, "--quick")
    assert list(doc) == ["format", "version", "mode", "ok", "checkpoints"]
    assert doc["format"] == "piperctl-verify" and doc["version"] == 1
    entry = doc["checkpoints"][0]
    assert list(entry) == ["path", "kind", "step", "verdict", "state", "checks", "problems"]
    assert tuple(entry["checks"]) == CHECKS
    code, out, _ = run_cli(["checkpoints", "list", good_run, "--json"], capsys)
    row = json.loads(out)[0]
    assert list(row) == [
        "step", "path", "written", "size_bytes", "train_loss", "train_loss_step",
        "val_loss", "val_loss_step", "state", "checked", "resume", "best", "problems",
        "save_s", "stall_s", "upload_s",
    ]  # fmt: skip
    problem_fields = ["check", "code", "file", "message"]
    documented = _documented_fields()
    missing = (set(doc) | set(entry) | set(CHECKS) | set(row) | set(problem_fields)) - documented
    assert not missing, f"not documented in {DOC.name}: {sorted(missing)}"
