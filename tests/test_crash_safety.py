"""No dead ends: every crash window has a way forward, one writer per run, foreign text stays text, and
disk, permission and file faults are one line each (exit 2) with nothing half-written left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from piperctl import checkpoints as ckpt
from piperctl.checkpoints.lock import RunLock
from tests.conftest import (
    assert_same_weights,
    metric_rows,
    one_error_line,
    piperctl_cli,
    piperctl_start,
    python_exe,
    resume_matches,
    run_cli,
    train_args,
)


def _leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith(ckpt.TMP_PREFIX))


def _ref_args(run: Path, ds: Path, **overrides: object) -> list[str]:
    """The command line of the session's reference run (see conftest.reference_run)."""
    return train_args(run, ds, save_every=2, keep_last=2, **overrides)


# ---------------------------------------------------------------------------------------------
# 1. killed before the first checkpoint


@pytest.mark.parametrize("fault", ["after-start:0", "mid-save:2"])
def test_killed_before_first_checkpoint_starts_again_from_step_0(
    fault: str, tmp_path: Path, tiny_ds: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    res = piperctl_cli(_ref_args(run, tiny_ds), env={"PIPERCTL_FAULT": fault})
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert (run / ckpt.RUN_FILE).is_file() and not ckpt.list_checkpoints(run)
    # A second `train` names the way forward instead of a dead end.
    code, _, err = run_cli(_ref_args(run, tiny_ds), capsys)
    line = one_error_line(err)
    assert code == 2 and "before its first checkpoint" in line and f"piperctl resume {run}" in line
    # ... and that way works: the run starts again with its own options and ends as if never stopped.
    err = resume_matches(run, reference_run, capsys)
    assert "starting it again from step 0" in err
    assert _leftovers(run) == []


# ---------------------------------------------------------------------------------------------
# 2. killed while the final model is saved


def test_killed_during_final_save_is_finished_by_resume(
    tmp_path: Path, tiny_ds: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    res = piperctl_cli(_ref_args(run, tiny_ds), env={"PIPERCTL_FAULT": "mid-final-save:8"})
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not (run / "pretrained_model").exists()
    # One temporary folder, with one prefix (not `.piperctl-tmp-.piperctl-tmp-...`).
    assert [n.rsplit(".", 1)[0] for n in _leftovers(run)] == [f"{ckpt.TMP_PREFIX}pretrained_model"]

    code, out, _ = run_cli(["checkpoints", "verify", run, "--json"], capsys)
    final = next(c for c in json.loads(out)["checkpoints"] if c["kind"] == "model")
    assert code == 1 and "final-model-missing" in {p["code"] for p in final["problems"]}

    code, _, err = run_cli(["resume", run], capsys)
    assert code == 0, err
    assert "final model is missing or incomplete" in err
    assert_same_weights(run, reference_run)
    assert _leftovers(run) == []
    code, _, _ = run_cli(["checkpoints", "verify", run], capsys)
    assert code == 0
    # Once finished, the run says so instead of training further.
    code, _, err = run_cli(["resume", run], capsys)
    assert code == 2 and "--steps" in one_error_line(err, after_logs=True)


# ---------------------------------------------------------------------------------------------
# 3. one writer per run folder


def test_a_locked_run_refuses_other_writers_but_not_readers(
    tmp_path: Path, tiny_ds: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    new = tmp_path / "new"
    locks = [RunLock(), RunLock()]
    locks[0].acquire(run)
    locks[1].acquire(new)  # as a `train` that has just started would
    try:
        for args, where in (
            (["resume", run, "--steps", "10"], run),
            (["resume", run / "checkpoint-6"], run),
            (_ref_args(new, tiny_ds), new),
        ):
            res = piperctl_cli(args)
            line = one_error_line(res.stderr, after_logs=True)
            assert res.returncode == 2, res.stderr
            assert f"{where} is being written by another piperctl process (pid {os.getpid()}" in line
        res = piperctl_cli(["checkpoints", "list", run])
        assert res.returncode == 0 and "<- resume" in res.stdout
        assert not ckpt.list_checkpoints(new) and not (new / ckpt.RUN_FILE).exists()
    finally:
        for lock in locks:
            lock.release()
    # Released: the run is writable again, and the new folder was left as it was found (gone).
    assert not new.exists()
    code, _, err = run_cli(["resume", run, "--steps", "10"], capsys)
    assert code == 0, err


def test_a_killed_writers_forked_workers_do_not_keep_its_lock(tmp_path: Path) -> None:
    """DataLoader workers are forks of the trainer: orphaned by a SIGKILL, they must not hold the run."""
    code = (
        "import os, sys, time; from pathlib import Path; from piperctl.checkpoints.lock import RunLock\n"
        "RunLock().acquire(Path(sys.argv[1]))\n"
        "if os.fork() == 0:\n    time.sleep(60); os._exit(0)\n"
        "print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([python_exe(), "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        proc.kill()
        proc.wait()
        lock = RunLock()
        lock.acquire(tmp_path)  # at once, while the orphaned child still sleeps
        lock.release()
    finally:
        proc.kill()
        subprocess.run(["pkill", "-f", str(tmp_path)], check=False)


@pytest.mark.train
def test_two_trains_into_one_folder_one_wins(
    tmp_path: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    procs = [piperctl_start(_ref_args(run, tiny_ds)) for _ in range(2)]
    results = [(res.returncode, res.stderr) for res in (p.wait(timeout=300) for p in procs)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "being written by another piperctl process" in loser or "already holds" in loser, loser
    steps = [r["step"] for r in metric_rows(run)]
    assert steps == list(range(1, 9))  # one history, not two interleaved
    code, out, _ = run_cli(["checkpoints", "verify", run], capsys)
    assert code == 0, out


# ---------------------------------------------------------------------------------------------
# 4. foreign text is never Rich markup


@pytest.mark.parametrize("name", ["nope[/x]", "a[bold]b"])
def test_paths_with_brackets_are_printed_as_they_are(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / name
    code, _, err = run_cli(
        ["train", "--output-dir", tmp_path / "out", "--dataset-root", missing, "--steps", "2"], capsys
    )
    assert code == 2 and str(missing) in one_error_line(err, after_logs=True)


# ---------------------------------------------------------------------------------------------
# 5. disk full


@pytest.mark.train
def test_disk_full_during_a_save_is_one_line_and_leaves_no_temp_folder(tmp_path: Path, tiny_ds: Path) -> None:
    run = tmp_path / "run"
    res = piperctl_cli(_ref_args(run, tiny_ds), env={"PIPERCTL_FAULT": "disk-full:4"})
    line = one_error_line(res.stderr, after_logs=True)
    assert res.returncode == 2 and "cannot save checkpoint-4" in line and "no space left" in line
    assert f"piperctl resume {run}" in line
    assert _leftovers(run) == [] and [p.name for p in ckpt.list_checkpoints(run)] == ["checkpoint-2"]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 600 kB tmpfs: room for run.json and metrics, not for a checkpoint (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.train
def test_a_really_full_disk_is_one_line(small_disk: Path, tiny_ds: Path) -> None:
    run = small_disk / "run"
    res = piperctl_cli(_ref_args(run, tiny_ds))
    line = one_error_line(res.stderr, after_logs=True)
    assert res.returncode == 2 and "no space left" in line.lower(), res.stderr
    assert _leftovers(run) == []


@pytest.mark.train
def test_low_free_space_is_announced_before_the_save(
    tmp_path: Path, tiny_ds: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import piperctl.checkpoints.manager as manager

    real = shutil.disk_usage
    monkeypatch.setattr(manager.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    code, _, err = run_cli(_ref_args(tmp_path / "run", tiny_ds, steps=4), capsys)
    assert code == 0
    assert "warning: 1.0 kB free on the disk of" in err and "this save may fail" in err


# ---------------------------------------------------------------------------------------------
# 6. a symlink loop inside a checkpoint


def test_symlink_loop_is_a_damaged_checkpoint_not_a_crash(
    tmp_path: Path, reference_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from piperctl.checkpoints.manager import resolve_checkpoint

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    (run / "checkpoint-8" / "loop").symlink_to("loop")
    code, out, _ = run_cli(["checkpoints", "verify", run / "checkpoint-8", "--json"], capsys)
    assert code == 1 and ("unexpected-file", "loop") in {
        (p["code"], p["file"]) for p in json.loads(out)["checkpoints"][0]["problems"]
    }
    code, out, _ = run_cli(["checkpoints", "list", run, "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [(r["step"], r["state"], r["resume"]) for r in rows] == [
        (6, "complete", True),
        (8, "corrupt", False),
    ]
    folder, skipped = resolve_checkpoint(run)
    assert folder.name == "checkpoint-6" and [p.name for p, _ in skipped] == ["checkpoint-8"]


# ---------------------------------------------------------------------------------------------
# 7. no permission


def _unprivileged(args: list) -> subprocess.CompletedProcess:
    """Run piperctl as root without the capabilities that let root ignore file permissions."""
    return piperctl_start(args, without_dac=True).wait(timeout=300)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to drop its file-permission capabilities)")
def test_read_only_output_folder_is_one_line(tmp_path: Path, tiny_ds: Path, reference_run: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    res = _unprivileged(_ref_args(parent / "run", tiny_ds))
    line = one_error_line(res.stderr, after_logs=True)
    assert res.returncode == 2 and "permission denied" in line.lower() and str(parent) in line
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    run.chmod(0o555)
    res = _unprivileged(["resume", run, "--steps", "10"])
    line = one_error_line(res.stderr, after_logs=True)
    assert res.returncode == 2 and "permission denied" in line.lower() and str(run) in line


# ---------------------------------------------------------------------------------------------
# 8. unreadable data files


@pytest.mark.parametrize("damage", ["truncated", "no rows"])
def test_damaged_parquet_is_named(
    damage: str, tmp_path: Path, tiny_ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(tiny_ds, ds)
    data_file = sorted((ds / "data").rglob("*.parquet"))[0]
    if damage == "truncated":
        os.truncate(data_file, data_file.stat().st_size // 2)
    else:
        schema = pq.read_schema(data_file)
        pq.write_table(pa.Table.from_pylist([], schema=schema), data_file)
    code, _, err = run_cli(_ref_args(tmp_path / "run", ds), capsys)
    line = one_error_line(err, after_logs=True)
    assert code == 2 and str(data_file) in line
    assert ("not a readable parquet file" if damage == "truncated" else "holds no rows") in line
    assert not (tmp_path / "run").exists()
