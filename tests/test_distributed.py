"""Data-parallel training on CPU with gloo, 2 processes: sharding, exact resume, world-size changes, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from piperctl import checkpoints as ckpt
from piperctl.training.launcher import FRESH_RANKS_VAR
from tests.conftest import (
    TINY_ACT,
    assert_same_optimizer_state,
    assert_same_weights,
    losses,
    metric_rows,
    piperctl_cli,
    python_exe,
    run_cli,
)

BATCH = 4
# Four steps of two processes, a checkpoint every second step, all of them kept.
BASE = {
    "steps": 4,
    "batch_size": BATCH,
    "save_every": 2,
    "keep_last": 0,
    "num_workers": 0,
    "val_episodes": "1",
    "seed": 5,
    "device": "cpu",
}
# The same thread count under every launcher, so that runs started differently compute identically.
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def ds(tiny_ds: Path) -> Path:
    """The shared one-camera PNG dataset (4 training episodes, 1 validation episode)."""
    return tiny_ds


def _train_args(run: Path, ds: Path, **overrides: object) -> list[str]:
    args = ["train", "--output-dir", str(run), "--dataset-root", str(ds), "--dataset-id", "local/tiny"]
    for k, v in {**BASE, **overrides}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    for k, v in TINY_ACT.items():
        args += ["--policy-opt", f"{k}={json.dumps(v)}"]
    return args


def _piperctl(args: list[str], env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """`piperctl ARGS` forked from the preloaded test server; its launcher then forks the ranks from itself."""
    return piperctl_cli(args, {**ENV, **(env or {})}, timeout)


def _torchrun(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [python_exe(), "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(
        [*cmd, "-m", "piperctl", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        timeout=timeout,
    )


def _state(folder: Path) -> dict:
    return json.loads((folder / ckpt.TRAINING_STATE).read_text())


def _no_tmp(run: Path) -> bool:
    return not [p for p in run.iterdir() if p.name.startswith(ckpt.TMP_PREFIX)]


@pytest.fixture(scope="module")
def ref2(tmp_path_factory: pytest.TempPathFactory, ds: Path) -> Path:
    """An uninterrupted 4-step run of 2 processes started by torchrun (the multi-node launcher)."""
    run = tmp_path_factory.mktemp("ref2") / "run"
    res = _torchrun(_train_args(run, ds))
    assert res.returncode == 0, res.stderr[-3000:]
    return run


# ---------------------------------------------------------------------------------------------


def test_ranks_take_disjoint_shards_of_the_same_global_order(ds: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from piperctl.training import loading

    meta = LeRobotDatasetMetadata("local/tiny", root=ds)

    def sampler(rank: int, world: int, start: int = 0) -> loading.EpochSampler:
        s = loading.EpochSampler(
            loading.make_sampler(meta, [0, 1, 2, 3], shuffle=True, seed=5), BATCH, rank, world
        )
        s.epoch, s.start = 3, start
        return s

    order = [i for _, i in sampler(0, 1)]
    global_batch = 2 * BATCH
    r0, r1 = [i for _, i in sampler(0, 2)], [i for _, i in sampler(1, 2)]
    assert len(r0) == len(r1) == len(sampler(0, 2)) == (len(order) // global_batch) * BATCH
    for step in range(len(order) // global_batch):
        chunk = order[step * global_batch : (step + 1) * global_batch]
        assert r0[step * BATCH : (step + 1) * BATCH] == chunk[:BATCH]
        assert r1[step * BATCH : (step + 1) * BATCH] == chunk[BATCH:]
    assert not set(r0) & set(r1)
    assert len(order) % global_batch and len(r0) + len(r1) < len(order)  # the incomplete tail is skipped
    # A position in global samples means the same thing for any number of processes.
    assert [i for _, i in sampler(1, 2, start=16)][:BATCH] == order[16 + BATCH : 16 + 2 * BATCH]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_run_writes_checkpoints_that_verify(
    ref2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert [p.name for p in ckpt.list_checkpoints(ref2)] == ["checkpoint-2", "checkpoint-4"]
    for folder in ckpt.list_checkpoints(ref2):
        assert ckpt.check_checkpoint(folder).ok, folder
    code, out, err = run_cli(["checkpoints", "verify", ref2], capsys)
    assert code == 0, out + err
    state = _state(ref2 / "checkpoint-4")
    assert state["world_size"] == 2 and state["effective_batch_size"] == 2 * BATCH
    assert state["batch_size_per_process"] == BATCH
    assert state["samples_seen"] == 4 * 2 * BATCH and state["data"]["offset"] == 4 * 2 * BATCH
    assert state["lr_schedule"]["unit"] == "optimizer step" and state["lr_schedule"]["total_steps"] == 4
    assert state["topology"] == [
        {"from_step": 0, "world_size": 2, "batch_size_per_process": BATCH, "effective_batch_size": 2 * BATCH}
    ]
    # Every rank's generators are in the checkpoint; rank 0's where a single-process run keeps them.
    rng_json = json.loads((ref2 / "checkpoint-4" / ckpt.RNG_STATE_JSON).read_text())
    assert rng_json["world_size"] == 2 and set(rng_json["ranks"]) == {"1"}
    tensors = load_file(str(ref2 / "checkpoint-4" / ckpt.RNG_STATE_TENSORS))
    assert {"torch_cpu", "rank1.torch_cpu"} <= tensors.keys()
    assert not torch.equal(tensors["torch_cpu"], tensors["rank1.torch_cpu"])  # ranks draw different noise
    rows = metric_rows(ref2)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["samples"] for r in rows] == [8, 16, 24, 32]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4]
    assert (ref2 / ckpt.PRETRAINED_DIR / ckpt.LEROBOT_WEIGHTS).is_file() and _no_tmp(ref2)


@pytest.mark.train
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_main_process_killed_while_saving_then_resumed_matches_uninterrupted_run(
    tmp_path: Path, ds: Path, ref2: Path
) -> None:
    run = tmp_path / "run"
    # Rank 0 (the only writer) is SIGKILLed in the middle of writing checkpoint-4, after checkpoint-2.
    res = _piperctl([*_train_args(run, ds), "--num-processes", "2"], env={"PIPERCTL_FAULT": "mid-save:4"})
    assert res.returncode == 128 + signal.SIGKILL, res.stderr[-3000:]
    assert "process 0 of 2 was killed by SIGKILL" in res.stderr, res.stderr[-3000:]
    assert f"piperctl resume {run}" in res.stderr  # one line: what happened and the way forward
    assert "Traceback" not in res.stderr and "MarkupError" not in res.stderr, res.stderr[-3000:]
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["checkpoint-2"]  # no partial checkpoint-4
    assert ckpt.check_checkpoint(run / "checkpoint-2").ok and not _no_tmp(run), sorted(os.listdir(run))
    res = _piperctl(["resume", run, "--num-processes", "2"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "removed 1 unfinished save" in res.stderr and _no_tmp(run), res.stderr[-3000:]
    assert losses(run) == losses(ref2), res.stderr[-3000:]
    assert_same_weights(run, ref2)
    assert_same_weights(run / "checkpoint-4", ref2 / "checkpoint-4")
    assert_same_optimizer_state(run / "checkpoint-4", ref2 / "checkpoint-4")


@pytest.mark.train
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_world_size_changes_both_ways_and_a_sigterm_on_one_rank_stops_all(
    tmp_path: Path, ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1 process -> 2 (stopped by a SIGTERM that only rank 1 gets) -> 1, each from the same sample."""
    from piperctl import train
    from piperctl.training import resume

    run = tmp_path / "run"
    opts = {k: v for k, v in BASE.items() if k != "device"}
    train(
        run,
        dataset_id="local/tiny",
        dataset_root=str(ds),
        policy_options=dict(TINY_ACT),
        **{**opts, "steps": 1, "save_every": 1},
    )
    assert _state(run / "checkpoint-1")["world_size"] == 1

    # Two processes now; only rank 1 gets SIGTERM (after step 2): both stop there, one checkpoint, one message.
    res = _piperctl(
        ["resume", run / "checkpoint-1", "--steps", "3", "--num-processes", "2", "--device", "cpu"],
        env={"PIPERCTL_FAULT": "sigterm:2@1"},
    )
    assert res.returncode == 128 + signal.SIGTERM, res.stderr[-3000:]
    assert "world size changed" in res.stderr and "rank 1: no saved random state" in res.stderr
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.count("continue with: piperctl resume") == 1, res.stderr[-3000:]
    assert f"piperctl resume {run / 'checkpoint-2'} --num-processes 2" in res.stderr
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["checkpoint-1", "checkpoint-2"] and _no_tmp(run)
    assert ckpt.check_checkpoint(run / "checkpoint-2").ok
    state = _state(run / "checkpoint-2")
    assert state["world_size"] == 2 and state["samples_seen"] == BATCH + 2 * BATCH
    assert state["data"]["offset"] == BATCH + 2 * BATCH
    assert json.loads((run / "checkpoint-2" / ckpt.RNG_STATE_JSON).read_text())["world_size"] == 2

    capsys.readouterr()
    result = resume(run / "checkpoint-2", steps=3)  # one process again
    err = capsys.readouterr().err
    assert "world size changed" in err and "effective batch 8 -> 4" in err and "from sample 12" in err
    state = _state(run / "checkpoint-3")
    assert result.step == 3 and state["world_size"] == 1 and state["effective_batch_size"] == BATCH
    assert state["samples_seen"] == BATCH + 2 * BATCH + BATCH  # continued from the same sample count
    assert [t["world_size"] for t in state["topology"]] == [1, 2, 1]
    assert [t["from_step"] for t in state["topology"]] == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_an_error_every_rank_hits_is_printed_once(tmp_path: Path) -> None:
    # The dataset check fails inside setup, after the process group exists, on both ranks alike.
    # Ranks as fresh interpreters here (as on a GPU machine); forked from the launcher elsewhere.
    args = [*_train_args(tmp_path / "run", tmp_path / "nowhere"), "--num-processes", "2"]
    res = _piperctl(args, env={FRESH_RANKS_VAR: "1"})
    lines = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith("error:") and "not a LeRobot dataset" in lines[0]
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()


def test_num_processes_is_refused_inside_a_launcher(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli(["resume", "/nonexistent", "--num-processes", "2"], capsys)
    assert code == 2 and "cannot be used inside torchrun" in err


def _probe_fork(conn: object, fresh: str) -> None:
    from piperctl.training import launcher

    os.environ[FRESH_RANKS_VAR] = fresh
    conn.send(launcher._prepare_fork())  # type: ignore[attr-defined]


def test_ranks_are_forked_after_the_imports_on_a_machine_without_cuda() -> None:
    """The launcher forks its ranks here (no CUDA): they skip the 10-15 s of imports a fresh one pays."""
    import multiprocessing

    from piperctl.training import launcher

    for name in launcher._RANK_IMPORTS:  # once here (the in-process runs need them too), not per child
        __import__(name)
    ctx = multiprocessing.get_context("fork")  # a child of one thread, as the console script is
    answers = []
    for fresh in ("", "1"):
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=_probe_fork, args=(theirs, fresh))
        p.start()
        answers.append(mine.recv())
        p.join()
    assert answers == [True, False]


class _FakeRank:
    """A rank for the launcher's wait loop: exits with `code` after `after` s (never, with None)."""

    def __init__(self, code: int | None, after: float = 0.0) -> None:
        import time

        self.code, self.end, self.returncode = code, time.monotonic() + after, None

    def poll(self) -> int | None:
        import time

        if self.returncode is None and self.code is not None and time.monotonic() >= self.end:
            self.returncode = self.code
        return self.returncode

    def kill(self) -> None:
        self.returncode = -signal.SIGKILL

    def wait(self) -> int | None:
        return self.returncode


def test_a_rank_stuck_after_the_others_finished_is_stopped_and_the_run_still_succeeds() -> None:
    from piperctl.training.launcher import wait_for_ranks

    # Rank 1 hangs in teardown after rank 0 finished: stopped after the grace, not reported as a failure.
    stuck = [_FakeRank(0), _FakeRank(None)]
    assert wait_for_ranks(stuck, finished_grace=0.2, tick=0.01) == (None, [1])
    assert stuck[1].returncode == -signal.SIGKILL
    # A rank that failed is still the one reported, and a clean finish of all is (None, []).
    first, hung = wait_for_ranks([_FakeRank(0), _FakeRank(2, after=0.05)], finished_grace=5, tick=0.01)
    assert first is not None and first[:2] == (1, 2) and hung == []
    assert wait_for_ranks([_FakeRank(0), _FakeRank(0, after=0.05)], finished_grace=5, tick=0.01) == (None, [])
