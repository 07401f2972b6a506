"""Rest poses are not leakage; the five reporting bugs of issue 12; kinematic, unit and video checks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from piperctl.leakage import DatasetLeakageTester, LeakageReport, Thresholds
from piperctl.leakage.report import print_report
from tests.conftest import run_cli
from tests.leakage_data import (
    FPS,
    HIGH,
    LOW,
    episodes_meta,
    frames,
    rows_of,
    set_rows,
    with_video_feature,
    write,
    write_video,
)

LEAKAGE = ("cross_episode", "split_leakage", "duplicate_frames")


def _full(root: Path, **kw: object) -> LeakageReport:
    return DatasetLeakageTester(root, progress=False, **kw).run_all_tests()  # type: ignore[arg-type]


def _copy_content(df: pl.DataFrame, src: list[int], dst: list[int]) -> pl.DataFrame:
    for c in ("observation.state", "action"):
        df = set_rows(df, c, dst, [df[c][r].to_list() for r in src])
    return df


def _edit(df: pl.DataFrame, column: str, rows: list[int], fn) -> pl.DataFrame:  # type: ignore[no-untyped-def]
    return set_rows(df, column, rows, [fn(np.array(df[column][r].to_list())).tolist() for r in rows])


# -- rest poses --------------------------------------------------------------------------------

REST = (60, 70, 65, 80)  # episodes 0: rows 0-59, 1: 60-129, 2: 130-194, 3: 195-274


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_home_pose_at_both_ends_is_no_leakage(tmp_path: Path, version: str) -> None:
    """Every episode starts and ends holding the same home pose: nothing leaks, nothing is duplicated."""
    root = write(tmp_path / "ds", frames(REST, rest=8), version=version)
    report = _full(root, splits=["train=0:2", "val=2:4"])
    for name in LEAKAGE:
        assert report.check(name).status == "pass", report.check(name).summary
    cross = report.check("cross_episode").to_dict()
    assert cross["rest_frames"] == 4 * 16 and cross["rest_poses"] == 1
    assert report.status == "pass", [(c.name, c.summary) for c in report.checks if c.findings]


def test_copies_of_moving_frames_are_still_found_between_rests(tmp_path: Path) -> None:
    df = frames(REST, rest=8)
    df = _copy_content(df, [20, 21, 22], [150, 151, 152])  # 3 moving frames of 0 pasted into 2
    root = write(tmp_path / "ds", df, meta=episodes_meta(frames(REST, rest=8)))
    report = _full(root, splits=["train=0:2", "val=2:4"])
    cross = report.check("cross_episode")
    assert cross.status == "fail" and cross.episodes == [0, 2]
    assert cross.findings[0].extra["shared_frames"] == [3, 3]  # the rest frames are not counted
    assert report.check("split_leakage").episodes == [0, 2]


def test_copied_episode_with_rests_is_an_exact_duplicate(tmp_path: Path) -> None:
    lengths = (60, 70, 70, 80)
    df = _copy_content(frames(lengths, rest=8), list(range(60, 130)), list(range(130, 200)))
    finding = _full(write(tmp_path / "ds", df)).check("cross_episode").findings[0]
    assert finding.episodes == [1, 2] and finding.kind == "duplicate_episode"
    assert finding.extra["shared_frames"] == [70, 70] and finding.extra["share_of_shorter"] == 1.0


def test_moving_frame_repeated_inside_an_episode_is_still_a_duplicate(tmp_path: Path) -> None:
    df = _copy_content(frames(REST, rest=8), [80], [110])  # episode 1, far apart: not a hold
    check = _full(write(tmp_path / "ds", df)).check("duplicate_frames")
    assert check.status == "warn" and check.episodes == [1]


def test_rest_frames_threshold_decides_what_is_a_rest(tmp_path: Path) -> None:
    """A home pose held 3 frames is a rest at --rest-frames 3, but shared frames at --rest-frames 4."""
    root = write(tmp_path / "ds", frames(REST, rest=3))
    assert _full(root, thresholds=Thresholds(rest_frames=3)).check("cross_episode").status == "pass"
    strict = _full(root, thresholds=Thresholds(rest_frames=4)).check("cross_episode")
    assert strict.status == "fail" and strict.episodes == [0, 1, 2, 3]


# -- the five reporting bugs ---------------------------------------------------------------------


def test_table_keeps_bracketed_dimension_names(tmp_path: Path) -> None:
    df = frames()
    df = _edit(df, "action", rows_of(df, 1), lambda v: np.concatenate([v[:6], [0.03]]))
    report = _full(write(tmp_path / "ds", df))
    buf = io.StringIO()
    print_report(report, console=Console(file=buf, width=400))
    assert "action[gripper] constant in 1/4 episodes" in buf.getvalue()


def test_frozen_streams_cover_every_float_vector_feature(tmp_path: Path) -> None:
    """Features named `state`/`actions` (not observation.state/action) are checked too."""
    df = frames().rename({"observation.state": "state", "action": "actions"})
    rows = rows_of(df, 3)
    df = set_rows(df, "state", rows, [df["state"][rows[0]].to_list()] * len(rows))
    root = write(tmp_path / "ds", df.rename({"state": "observation.state", "actions": "action"}))
    # Rename the columns in the files and the metadata, as such a dataset would have them.
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["state"] = info["features"].pop("observation.state")
    info["features"]["actions"] = info["features"].pop("action")
    (root / "meta" / "info.json").write_text(json.dumps(info))
    import pyarrow.parquet as pq

    for f in (root / "data").glob("**/*.parquet"):
        t = pq.read_table(f)
        pq.write_table(
            t.rename_columns(
                [
                    "state" if c == "observation.state" else "actions" if c == "action" else c
                    for c in t.column_names
                ]
            ),
            f,
        )
    check = _full(root).check("frozen_streams")
    assert check.status == "warn" and check.episodes == [3]
    assert check.findings[0].kind == "frozen_state" and sorted(check.to_dict()["features"]) == [
        "actions",
        "state",
    ]


def test_timestamp_gap_example_names_the_first_gap(tmp_path: Path) -> None:
    """Episode 3 jitters at frame 5 and has a gap from frame 30: the gap's example is frame 30."""
    df = frames()
    ts = df["timestamp"].to_list()
    ts[140] += 0.002
    for r in range(165, 195):
        ts[r] += 2 / FPS
    df = df.with_columns(pl.Series("timestamp", ts, dtype=pl.Float32))
    check = (
        DatasetLeakageTester(write(tmp_path / "ds", df), progress=False)
        .run_minimal_tests()
        .check("timestamps")
    )
    by_kind = {f.kind: f for f in check.findings}
    assert "episode 3 at frame 30" in by_kind["gap"].message
    assert "episode 3 at frame 5" in by_kind["jitter"].message
    assert by_kind["gap"].extra["details"] == [{"episode": 3, "frame": 30}]


def test_missing_column_hint_says_whether_it_is_declared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.parquet as pq

    root = write(tmp_path / "ds", frames())
    for f in (root / "data").glob("**/*.parquet"):
        pq.write_table(pq.read_table(f).drop_columns(["frame_index", "action"]), f)
    code, _, err = run_cli(["leakage", "full", root], capsys)
    assert code == 2 and "has no 'frame_index' column" in err and "declared in meta/info.json" in err
    info = json.loads((root / "meta" / "info.json").read_text())
    del info["features"]["frame_index"]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    code, _, err = run_cli(["leakage", "full", root], capsys)
    assert code == 2 and "has no 'frame_index' column" in err and "not declared" in err


# -- kinematic checks --------------------------------------------------------------------------


def test_one_frame_jump_is_a_velocity_spike_with_its_frame(tmp_path: Path) -> None:
    df = frames()
    df = _edit(df, "observation.state", [110], lambda v: v + np.r_[0.8, np.zeros(6)])  # episode 2, frame 20
    check = _full(write(tmp_path / "ds", df)).check("velocity_spikes")
    assert check.status == "warn" and check.episodes == [2]
    f = check.findings[0]
    assert f.extra["feature"] == "observation.state" and f.extra["dimension"] == 0
    assert f.extra["details"][0]["frame"] == 20 and "episode 2 at frame 20" in f.message


def test_joint_frozen_for_a_whole_episode(tmp_path: Path) -> None:
    df = frames()
    rows = rows_of(df, 1)
    first = df["observation.state"][rows[0]].to_list()
    df = _edit(df, "observation.state", rows, lambda v: np.r_[v[:2], first[2], v[3:]])
    check = _full(write(tmp_path / "ds", df)).check("frozen_joints")
    assert check.status == "warn" and check.episodes == [1]
    assert "observation.state[joint_3]" in check.summary


def _lagged(lengths: tuple[int, ...], episode: int, lag: int) -> pl.DataFrame:
    """Action(t) = state(t+1) (the arm follows its command one frame later), except in `episode`,
    whose action lags the state by `lag` frames."""
    df = frames(lengths)
    out = []
    for (e,), part in df.group_by("episode_index", maintain_order=True):
        s = np.array(part["observation.state"].to_list())
        shift = -lag if e == episode else 1
        idx = np.clip(np.arange(len(s)) + shift, 0, len(s) - 1)
        out.append(
            part.with_columns(pl.Series("action", s[idx].astype(np.float32), dtype=pl.Array(pl.Float32, 7)))
        )
    return pl.concat(out)


def test_action_lagging_the_state_is_found_per_episode(tmp_path: Path) -> None:
    lengths = (150, 160, 140, 150, 155, 145)
    check = _full(write(tmp_path / "ds", _lagged(lengths, 4, 30))).check("action_state")
    assert check.status == "warn" and check.episodes == [4]
    detail = check.findings[0].extra["details"][0]
    assert detail == {"episode": 4, "lead_frames": -30, "error": detail["error"]}
    assert check.extra["typical_lead_frames"] == 1


def test_action_state_skipped_when_names_differ(tmp_path: Path) -> None:
    root = write(tmp_path / "ds", frames())
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["action"]["names"] = ["shoulder_pan", "a", "b", "c", "d", "e", "f"]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    report = _full(root)
    check = report.check("action_state")
    # A check that looked at nothing is SKIP, never PASS, and never fails the run.
    assert check.status == "skip" and check.summary.startswith("skipped: ")
    assert check.to_dict()["skipped"] == check.summary and check.to_dict()["status"] == "skip"
    assert report.status == "pass" and not report.failed("warn")


def test_short_episodes_and_chunk_size(tmp_path: Path) -> None:
    root = write(tmp_path / "ds", frames((40, 50, 5, 60)))
    check = _full(root).check("short_episodes")
    assert check.status == "warn" and check.episodes == [2]
    check = _full(root, thresholds=Thresholds(chunk_size=45)).check("short_episodes")
    assert {f.kind: f.episodes for f in check.findings} == {"short": [2], "shorter_than_chunk": [0, 2]}


def test_jitter_with_the_right_mean_step(tmp_path: Path) -> None:
    df = frames()
    rows = rows_of(df, 2)
    ts = df["timestamp"].to_list()
    for k, r in enumerate(rows):
        ts[r] = k / FPS + (0.003 if k % 2 else 0.0)  # steps alternate 36.7 and 30.0 ms
    df = df.with_columns(pl.Series("timestamp", ts, dtype=pl.Float32))
    check = (
        DatasetLeakageTester(write(tmp_path / "ds", df), progress=False)
        .run_minimal_tests()
        .check("timestamps")
    )
    jitter = next(f for f in check.findings if f.kind == "jitter")
    assert jitter.episodes == [2]
    d = jitter.extra["details"][0]
    assert d["mean_step_s"] == pytest.approx(1 / FPS, abs=1e-4) and d["std_step_s"] == pytest.approx(
        0.003, rel=0.05
    )


# -- units, ranges and the PiPER profile ----------------------------------------------------------


def _convert(df: pl.DataFrame, episodes: list[int] | None, joints=None, gripper=None) -> pl.DataFrame:  # type: ignore[no-untyped-def]
    """Joints (rad) and gripper (m) of `episodes` (all when None) to another unit."""
    rows = list(range(df.height)) if episodes is None else [r for e in episodes for r in rows_of(df, e)]

    def conv(v: np.ndarray) -> np.ndarray:
        v = v.copy()
        if joints == "deg":
            v[:6] = np.degrees(v[:6])
        elif joints == "percent":
            v[:6] = (v[:6] - (LOW[:6] + HIGH[:6]) / 2) / ((HIGH[:6] - LOW[:6]) / 2) * 100
        if gripper == "mm":
            v[6] *= 1000
        elif gripper == "0..100":
            v[6] = v[6] / 0.07 * 100
        return v

    for c in ("observation.state", "action"):
        df = _edit(df, c, rows, conv)
    return df


@pytest.mark.parametrize("joints,gripper", [("rad", "m"), ("deg", "mm"), ("percent", "0..100")])
def test_piper_convention_is_detected_and_printed(tmp_path: Path, joints: str, gripper: str) -> None:
    df = _convert(frames(), None, joints, gripper)
    report = _full(write(tmp_path / "ds", df))
    units = report.check("units_and_ranges")
    assert units.status == "pass", units.summary
    conv = report.to_dict()["conventions"]["observation.state"]
    assert conv["joint_2"] == joints
    assert conv["gripper"] in (gripper, "mm or 0..100")  # a gripper under 85 fits mm and 0..100 alike
    buf = io.StringIO()
    print_report(report, console=Console(file=buf, width=300))
    header = buf.getvalue().splitlines()[1]
    assert header.startswith("piper convention: observation.state joints " + joints), header


def test_mixed_conventions_fail(tmp_path: Path) -> None:
    df = _convert(frames(), [3], "deg", None)  # episode 3 in degrees, the rest in radians
    units = _full(write(tmp_path / "ds", df)).check("units_and_ranges")
    mixed = [f for f in units.findings if f.kind == "mixed_units"]
    assert units.status == "fail" and mixed and all(f.episodes == [3] for f in mixed)
    assert "in deg" in mixed[0].message and "radians" in mixed[0].message


def test_gripper_in_another_unit_for_one_episode(tmp_path: Path) -> None:
    df = _convert(frames(), [1], None, "mm")
    root = write(tmp_path / "ds", df)
    units = _full(root).check("units_and_ranges")
    assert units.status == "fail" and units.episodes == [1]
    generic = _full(root, robot="none").check("units_and_ranges")  # no profile: scale heuristics only
    assert generic.status == "warn" and generic.episodes == [1]
    assert {f.kind for f in generic.findings} == {"unit_change"}


def test_values_beyond_the_piper_limits_fail(tmp_path: Path) -> None:
    df = frames()
    df = _edit(df, "observation.state", rows_of(df, 2)[10:20], lambda v: np.r_[v[0], -0.6, v[2:]])
    units = _full(write(tmp_path / "ds", df)).check("units_and_ranges")
    bad = [f for f in units.findings if f.kind == "out_of_range"]
    assert units.status == "fail" and [f.episodes for f in bad] == [[2]]
    assert "observation.state[joint_2]" in bad[0].message


def test_unknown_robot_profile_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write(tmp_path / "ds", frames())
    code, _, err = run_cli(["leakage", "full", root, "--robot", "ur5"], capsys)
    assert code == 2 and "--robot 'ur5'" in err and "Traceback" not in err


# -- videos ----------------------------------------------------------------------------------


def _video_dataset(tmp: Path, counts: dict[int, int] | None = None) -> Path:
    df = frames()
    root = write(tmp / "ds", df, version="v2.1")
    with_video_feature(root)
    for e, n in enumerate((40, 50, 45, 60)):
        path = root / f"videos/chunk-000/observation.images.front/episode_{e:06d}.mp4"
        write_video(path, (counts or {}).get(e, n))
    return root


def test_videos_matching_the_rows_pass(tmp_path: Path) -> None:
    check = _full(_video_dataset(tmp_path)).check("videos")
    assert check.status == "pass" and check.extra["video_files"] == 4


def test_video_frame_count_missing_and_orphan_files(tmp_path: Path) -> None:
    root = _video_dataset(tmp_path, {2: 30})
    (root / "videos/chunk-000/observation.images.front/episode_000001.mp4").unlink()
    write_video(root / "videos/chunk-000/observation.images.front/episode_000009.mp4", 5)
    check = _full(root).check("videos")
    kinds = {f.kind: f for f in check.findings}
    assert check.status == "fail" and set(kinds) == {"frame_count", "missing_video", "orphan_video"}
    assert kinds["frame_count"].episodes == [2] and "30 frames, 45 expected" in kinds["frame_count"].message
    assert kinds["missing_video"].episodes == [1] and kinds["orphan_video"].status == "warn"


def test_lerobot_written_video_dataset_passes(synth_dataset: Path) -> None:
    check = _full(synth_dataset).check("videos")
    assert check.status == "pass" and check.extra["video_files"] > 0


def test_declared_videos_without_folder_warn(tmp_path: Path) -> None:
    root = write(tmp_path / "ds", frames())
    with_video_feature(root)
    check = _full(root).check("videos")
    assert check.status == "warn" and check.findings[0].kind == "videos_absent"


def test_rest_pose_dataset_stays_clean_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write(tmp_path / "ds", frames(REST, rest=8))
    code, out, _ = run_cli(
        ["leakage", "full", root, "--json", "--split", "train=0:2", "--split", "val=2:4"], capsys
    )
    doc = json.loads(out)
    assert code == 0 and doc["status"] == "pass" and doc["thresholds"]["rest_frames"] == 2
    assert doc["robot"] == "piper" and doc["conventions"]["observation.state"]["joint_1"] == "rad"
    cross = next(c for c in doc["checks"] if c["name"] == "cross_episode")
    assert cross["rest_frames"] == 64 and cross["rest_poses"] == 1


def test_chunk_size_and_rest_frames_options_reach_the_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write(tmp_path / "ds", frames((40, 50, 45, 60)))
    code, out, _ = run_cli(
        ["leakage", "full", root, "--json", "--chunk-size", "45", "--rest-frames", "3"], capsys
    )
    doc = json.loads(out)
    short = next(c for c in doc["checks"] if c["name"] == "short_episodes")
    assert code == 0 and short["status"] == "warn" and short["episodes"] == [0]
    assert doc["thresholds"]["chunk_size"] == 45 and doc["thresholds"]["rest_frames"] == 3
