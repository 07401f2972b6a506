"""Checkpoints that outlive the machine: `--mirror URL` uploads, `resume URL`, `checkpoints list|verify URL`.

Against a mounted-volume URL (file://) and a real S3 protocol (moto's server, through s3fs), offline.
Also: every error a checkpoint writer raises on the disk is one line.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from piperctl import checkpoints as ckpt
from piperctl.checkpoints.integrity import publish
from piperctl.checkpoints.manager import CheckpointManager, write_run_file
from piperctl.checkpoints.mirror import Mirror
from piperctl.checkpoints.remote import OWNER_FILE, open_remote, redact
from piperctl.errors import PiperctlError
from piperctl.training.config import TrainConfig
from tests.conftest import (
    assert_same_weights,
    losses,
    one_error_line,
    piperctl_cli,
    run_cli,
    train_args,
    train_tiny,
)


def _ref_args(run: Path, ds: Path, *more: str) -> list[str]:
    """The command line of the session's reference run (conftest.reference_run), plus `more`."""
    return [*train_args(run, ds, save_every=2, keep_last=2), *more]


def _names(folder: Path) -> set[str]:
    return {p.name for p in ckpt.list_checkpoints(folder)}


def _list(url: str, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    code, out, err = run_cli(["checkpoints", "list", url, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def _verify(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code, out, _ = run_cli(["checkpoints", "verify", url, "--json"], capsys)
    return code, json.loads(out)


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _assert_tamper_named(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _verify(url, capsys)
    bad = [c for c in report["checkpoints"] if c["verdict"] == "fail"]
    assert code == 1 and [c["path"] for c in bad] == [f"{url}/checkpoint-8"]
    assert [(p["code"], p["file"]) for p in bad[0]["problems"]] == [("sha256-mismatch", "policy.safetensors")]


# ---------------------------------------------------------------------------------------------
# file:// (a mounted volume): killed mid-upload, the machine lost, resumed elsewhere


def test_a_run_killed_mid_upload_resumes_bit_exact_from_its_mirror_on_a_fresh_machine(
    tmp_path: Path, tiny_ds: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, remote, new = tmp_path / "run", tmp_path / "remote", tmp_path / "new"
    url = f"file://{remote}"
    res = piperctl_cli(_ref_args(run, tiny_ds, "--mirror", url), env={"PIPERCTL_FAULT": "mid-upload:6"})
    assert res.returncode == -signal.SIGKILL, res.stderr
    # Killed while checkpoint-6's files were going up: the remote never offers it as complete.
    rows = _list(url, capsys)
    assert {r["step"]: r["state"] for r in rows}[6] == "incomplete"
    assert (remote / "checkpoint-6").is_dir() and not (remote / "checkpoint-6" / ckpt.MANIFEST).exists()
    pick = next(r["step"] for r in rows if r["resume"])
    assert pick in (2, 4)

    shutil.rmtree(run)  # the machine and its disk are gone
    code, _, err = run_cli(["resume", url, "--output-dir", new], capsys)
    assert code == 0, err
    assert f"skipping {url}/checkpoint-6: incomplete" in err
    assert f"resuming from {url}/checkpoint-{pick} (step {pick}; nothing local" in err
    assert losses(new) == losses(reference_run)
    assert_same_weights(new, reference_run)
    # The remote holds exactly what the run keeps (keep-last 2 and the best), and the final model.
    assert _names(new) == _names(reference_run)
    assert _names(remote) == _names(new)
    code, report = _verify(url, capsys)
    assert code == 0 and report["ok"]
    assert [c["kind"] for c in report["checkpoints"]][-1] == "model"
    assert all(c["checks"]["sha256"] == "pass" for c in report["checkpoints"])
    # Each checkpoint's write, the loop's wait and the upload are timed, and `list` shows them.
    for row in _list(url, capsys):
        assert all(isinstance(row[k], float) for k in ("save_s", "stall_s", "upload_s")), row

    target = remote / "checkpoint-8" / "policy.safetensors"
    target.write_bytes(_flip_last_byte(target.read_bytes()))
    _assert_tamper_named(url, capsys)


# ---------------------------------------------------------------------------------------------
# s3:// against an S3-compatible server (moto), endpoint and credentials from the environment

_SECRET = "piperctl-test-secret-key"


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    """A bucket on a local S3 server; s3fs finds it through AWS_ENDPOINT_URL, as a user's MinIO/R2 would be."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines on stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "piperctl-test",
            "AWS_SECRET_ACCESS_KEY": _SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            mp.setenv(key, value)
        remote = open_remote("s3://piperctl-test/runs/act")
        remote.fs.mkdir("piperctl-test")
        yield "s3://piperctl-test/runs/act"
    server.stop()


def test_mirror_to_s3_keeps_the_rotation_and_resumes_bit_exact(
    s3_url: str, tmp_path: Path, tiny_ds: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, new = tmp_path / "run", tmp_path / "new"
    train_tiny(run, tiny_ds, save_every=2, keep_last=2, mirror=s3_url)
    remote = open_remote(s3_url)
    assert set(remote.list_checkpoints()) == _names(run) == _names(reference_run)
    final = remote.scan(ckpt.PRETRAINED_DIR, required=ckpt.LEROBOT_LAYOUT.files)
    assert final.ok, final.problems
    run_id = json.loads((run / ckpt.RUN_FILE).read_text())["run_id"]
    assert json.loads(remote.read_bytes(OWNER_FILE))["run_id"] == run_id
    # Credentials stay where the backend found them: not in run.json, the checkpoints or the logs.
    assert json.loads(remote.read_bytes(ckpt.RUN_FILE))["config"]["mirror"] == s3_url
    assert not [p for p in run.rglob("*") if p.is_file() and _SECRET.encode() in p.read_bytes()]
    assert _SECRET not in capsys.readouterr().err

    shutil.rmtree(run)
    code, _, err = run_cli(["resume", f"{s3_url}/checkpoint-6", "--output-dir", new], capsys)
    assert code == 0, err
    assert_same_weights(new, reference_run)
    assert losses(new) == losses(reference_run)
    assert set(remote.list_checkpoints()) == _names(new)
    code, report = _verify(s3_url, capsys)
    assert code == 0 and len(report["checkpoints"]) == len(_names(new)) + 1
    # Local and remote both at step 8: the local one wins, and the choice is said.
    code, _, err = run_cli(["resume", s3_url, "--output-dir", new], capsys)
    assert f"resuming from the local {new / 'checkpoint-8'} (step 8)" in err
    assert code == 2 and "--steps" in one_error_line(err, after_logs=True)  # the run has ended

    path = remote.path("checkpoint-8", "policy.safetensors")
    remote.fs.pipe_file(path, _flip_last_byte(remote.fs.cat_file(path)))
    _assert_tamper_named(s3_url, capsys)


@pytest.mark.train
def test_a_preempted_run_exits_only_once_its_last_checkpoint_is_remote(
    tmp_path: Path, tiny_ds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from piperctl.training.trainer import TrainingInterrupted

    url = f"file://{tmp_path / 'remote'}"
    fs = open_remote(url).fs
    real_put = fs.put_file

    def slow_put(lpath: str, rpath: str, **kwargs: object) -> None:
        time.sleep(0.05)  # a slow link: an upload that is not waited for is still under way below
        real_put(lpath, rpath, **kwargs)

    monkeypatch.setattr(fs, "put_file", slow_put)
    monkeypatch.setenv("PIPERCTL_FAULT", "sigterm:3")  # the scheduler's (or the cloud's) notice
    with pytest.raises(TrainingInterrupted):
        train_tiny(tmp_path / "run", tiny_ds, steps=8, save_every=4, mirror=url)
    assert open_remote(url).scan("checkpoint-3").ok


# ---------------------------------------------------------------------------------------------
# the mirror's rules, on small published folders (no training)


def _fake_checkpoint(run: Path, step: int) -> Path:
    """A published checkpoint-`step` folder (the mirror only needs files and a manifest)."""

    def write(folder: Path) -> None:
        (folder / "policy.safetensors").write_bytes(bytes([step]) * 2000)
        (folder / "training_state.json").write_text(json.dumps({"step": step}))

    return publish(ckpt.checkpoint_dir(run, step), write, step)


def _mirror(run: Path, url: str, run_id: str = "run-a") -> Mirror:
    run.mkdir(parents=True, exist_ok=True)
    write_run_file(run, run_id)
    mirror = Mirror(url, run, run_id)
    mirror.backoff_s = 0.0
    mirror.claim()
    return mirror


def _complete(url: str) -> set[str]:
    remote = open_remote(url)
    return {n for n in remote.list_checkpoints() if remote.scan(n, required=()).ok}


def test_failed_uploads_are_retried_reported_and_never_leave_a_checkpoint_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run, url = tmp_path / "run", f"file://{tmp_path / 'remote'}"
    mirror = _mirror(run, url)
    fs = mirror.remote.fs
    real_put = fs.put_file
    calls: list[str] = []

    def flaky(lpath: str, rpath: str, **kwargs: object) -> None:
        calls.append(rpath)
        if len(calls) == 2:  # the connection drops once, in the middle of a folder
            raise ConnectionError("connection reset by peer")
        real_put(lpath, rpath, **kwargs)

    monkeypatch.setattr(fs, "put_file", flaky)
    _fake_checkpoint(run, 2)
    mirror.sync()
    assert mirror.wait() == [] and mirror.failures == {}
    assert _complete(url) == {"checkpoint-2"}
    assert "warning" not in capsys.readouterr().err  # a retried blip is not worth a line

    def down(lpath: str, rpath: str, **kwargs: object) -> None:
        if "checkpoint-6" in rpath:
            real_put(lpath, rpath, **kwargs)  # one file goes up, then the network is gone
            raise ConnectionError("network is unreachable")
        real_put(lpath, rpath, **kwargs)

    monkeypatch.setattr(fs, "put_file", down)
    _fake_checkpoint(run, 4)
    shutil.rmtree(_fake_checkpoint(run, 6).parent / "checkpoint-2")  # keep-last 2 rotated it away locally
    mirror.sync()
    assert mirror.wait() == ["checkpoint-6"]
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: upload of checkpoint-6")]
    assert len(warnings) == 2  # when it failed, and again in the list at the end
    assert "ConnectionError: network is unreachable (4 tries)" in warnings[0]
    assert f"not on {url}: checkpoint-6" in err
    # checkpoint-6 is there in part but not offered; checkpoint-2 stays until every newer one is complete.
    assert (tmp_path / "remote" / "checkpoint-6").is_dir()
    assert _complete(url) == {"checkpoint-2", "checkpoint-4"}

    monkeypatch.setattr(fs, "put_file", real_put)  # the network is back: the next save's sync catches up
    mirror.sync()
    assert mirror.wait() == [] and mirror.failures == {}
    assert _complete(url) == {"checkpoint-4", "checkpoint-6"} == _names(tmp_path / "remote")


def test_a_url_another_run_mirrors_to_is_refused_naming_that_run(
    tmp_path: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"file://{tmp_path / 'remote'}"
    _mirror(tmp_path / "first", url, run_id="0123abcd")
    run = tmp_path / "second"
    code, _, err = run_cli(_ref_args(run, tiny_ds, "--mirror", url), capsys)
    line = one_error_line(err, after_logs=True)
    assert code == 2 and f"{url} already holds the mirror of run 0123abcd" in line
    assert not (run / ckpt.RUN_FILE).exists()


def test_urls_are_recorded_without_credentials() -> None:
    url = "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/runs/act?X-Amz-Signature=abc#frag"
    assert redact(url) == "s3://bucket/runs/act"
    cfg = TrainConfig(output_dir="r", mirror=url)
    assert cfg.to_json()["mirror"] == "s3://bucket/runs/act" and cfg.mirror == url
    with pytest.raises(PiperctlError, match="is not a URL .* file:///absolute/path"):
        TrainConfig(output_dir="r", mirror="/mnt/volume/run").validate()


# ---------------------------------------------------------------------------------------------
# writer errors: whatever a writer raises on the disk is one line, exit 2, no temporary folder


@contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes fail with EFBIG, as a full quota would (a real OS error, no device needed)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


@pytest.mark.parametrize(
    ("writer", "says"), [("safetensors", "File too large"), ("torch.save", "the write failed")]
)
def test_a_writer_failing_on_the_disk_is_one_line_and_leaves_no_temp_folder(
    tmp_path: Path, writer: str, says: str
) -> None:
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        with _file_size_limit(1 << 16):
            if writer == "safetensors":  # raises safetensors' own SafetensorError (os error 27)
                save_file({"w": torch.zeros(100_000)}, str(folder / "policy.safetensors"))
            else:  # raises torch's RuntimeError from its zip writer
                torch.save({"w": torch.zeros(100_000)}, folder / "optimizer_state.pth")

    manager = CheckpointManager(tmp_path, save_every=1, keep_last=0, total_steps=1)
    with pytest.raises(PiperctlError) as caught:
        manager.save(1, write)
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith(f"cannot save checkpoint-1 in {tmp_path}: {says}")
    assert "piperctl resume" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.train
def test_a_full_disk_in_the_background_writer_is_one_line_exit_2(
    tmp_path: Path, tiny_ds: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors import SafetensorError

    def disk_full(*_: object, **__: object) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("piperctl.training.rng.save_file", disk_full)
    run = tmp_path / "run"
    code, _, err = run_cli(train_args(run, tiny_ds, steps=2, save_every=1), capsys)
    line = one_error_line(err, after_logs=True)
    assert code == 2 and f"cannot save checkpoint-1 in {run}: no space left on the device" in line
    assert not ckpt.list_checkpoints(run) and not [
        p for p in run.iterdir() if p.name.startswith(ckpt.TMP_PREFIX)
    ]
