"""Every leakage check catches its planted fault (naming the episodes), in both layouts; clean data passes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest

from piperctl.leakage import DatasetLeakageTester, LeakageReport
from piperctl.leakage import scan as scan_mod
from tests.leakage_data import FPS, episodes_meta, frames, rows_of, set_rows, write

# Default episodes: 0 -> rows 0-39, 1 -> 40-89, 2 -> 90-134, 3 -> 135-194.
LAYOUTS = ["v3.0", "v2.1"]


@dataclass
class Fault:
    """A planted fault and what the report must say about it."""

    check: str
    status: str
    episodes: list[int]
    data: Callable[[pl.DataFrame], pl.DataFrame] = lambda df: df
    meta: Callable[[pl.DataFrame], pl.DataFrame] | None = None  # edits the metadata derived from clean data
    info: Callable[[dict], None] | None = None
    lengths: tuple[int, ...] = (40, 50, 45, 60)
    full: bool = False
    layouts: list[str] = field(default_factory=lambda: list(LAYOUTS))
    splits: list[str] | None = None
    meta_from_data: bool = False  # metadata agrees with the faulty data (else: as written for clean data)


def _split_episode_1(df: pl.DataFrame) -> pl.DataFrame:
    """Rows 65-89 of episode 1 move after episode 2 (v3.0: same file)."""
    return pl.concat([df.slice(0, 65), df.slice(90, 45), df.slice(65, 25), df.slice(135)])


def _split_episode_1_v21(df: pl.DataFrame) -> pl.DataFrame:
    """Rows 65-89 of episode 1 move into the end of episode 2's file."""
    df = df.with_columns(_file=pl.col("episode_index"))
    moved = df.slice(65, 25).with_columns(_file=pl.lit(2, dtype=pl.Int64))
    return pl.concat([df.slice(0, 65), df.slice(90, 45), moved, df.slice(135)])


def _shift(df: pl.DataFrame, column: str, rows: list[int], by: float) -> pl.DataFrame:
    return set_rows(df, column, rows, [df[column][r] + by for r in rows])


def _copy_content(df: pl.DataFrame, src: list[int], dst: list[int]) -> pl.DataFrame:
    for c in ("observation.state", "action"):
        df = set_rows(df, c, dst, [df[c][r].to_list() for r in src])
    return df


def _with_value(df: pl.DataFrame, column: str, row: int, dim: int, value: float) -> pl.DataFrame:
    v = df[column][row].to_list()
    v[dim] = value
    return set_rows(df, column, [row], [v])


def _freeze_state(df: pl.DataFrame) -> pl.DataFrame:
    # 61 identical states (just over 2 s at 30 fps) inside episode 3 (which has 60 frames: use all).
    rows = rows_of(df, 3)
    first = df["observation.state"][rows[0]].to_list()
    return set_rows(df, "observation.state", rows, [first] * len(rows))


def _constant_gripper(df: pl.DataFrame) -> pl.DataFrame:
    rows = rows_of(df, 1)
    vals = []
    for r in rows:
        v = df["action"][r].to_list()
        v[6] = 0.5
        vals.append(v)
    return set_rows(df, "action", rows, vals)


def _renumber(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(
        episode_index=pl.when(pl.col("episode_index") == 3).then(5).otherwise(pl.col("episode_index"))
    )


def _set_info(key: str, value: object) -> Callable[[dict], None]:
    return lambda info: info.__setitem__(key, value)


def _meta_col(
    episode: int, column: str, fn: Callable[[pl.Expr], pl.Expr]
) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def edit(meta: pl.DataFrame) -> pl.DataFrame:
        return meta.with_columns(
            pl.when(pl.col("episode_index") == episode)
            .then(fn(pl.col(column)))
            .otherwise(pl.col(column))
            .alias(column)
        )

    return edit


FAULTS: dict[str, Fault] = {
    # 1. episode index uniqueness
    "episode_split_in_two_runs": Fault("episode_index", "fail", [1], data=_split_episode_1, layouts=["v3.0"]),
    "episode_rows_in_another_file": Fault(
        "episode_index", "fail", [1], data=_split_episode_1_v21, layouts=["v2.1"]
    ),
    "episode_missing_from_metadata": Fault(
        "episode_index", "fail", [2], meta=lambda m: m.filter(pl.col("episode_index") != 2)
    ),
    "episode_missing_from_data": Fault(
        "episode_index", "fail", [3], data=lambda df: df.filter(pl.col("episode_index") != 3)
    ),
    "episode_in_wrong_file": Fault(
        "episode_index", "fail", [1], meta=_meta_col(1, "file_index", lambda c: c + 1), layouts=["v3.0"]
    ),
    "episode_numbering_gap": Fault("episode_index", "warn", [3, 4], data=_renumber, meta_from_data=True),
    "rows_without_episode_index": Fault(  # the null row also splits episode 1 in two runs
        "episode_index", "fail", [1], data=lambda df: set_rows(df, "episode_index", [60], [None])
    ),
    # 2. frame index continuity
    "frame_index_null": Fault(
        "frame_index", "fail", [1], data=lambda df: set_rows(df, "frame_index", [50], [None])
    ),
    "frame_index_repeat": Fault(
        "frame_index", "fail", [1], data=lambda df: set_rows(df, "frame_index", [50], [9])
    ),
    "frame_index_gap": Fault(
        "frame_index", "fail", [2], data=lambda df: _shift(df, "frame_index", list(range(100, 135)), 1)
    ),
    "frame_index_not_from_zero": Fault(
        "frame_index", "fail", [0], data=lambda df: _shift(df, "frame_index", list(range(0, 40)), 1)
    ),
    "length_differs_from_metadata": Fault(
        "frame_index", "fail", [3], meta=_meta_col(3, "length", lambda c: c + 5)
    ),
    # 3. global index
    "index_ranges_overlap": Fault(
        "global_index", "fail", [1, 2], data=lambda df: _shift(df, "index", list(range(90, 135)), -10)
    ),
    "index_repeats_inside_episode": Fault(
        "global_index", "fail", [0], data=lambda df: set_rows(df, "index", [5], [4])
    ),
    "index_differs_from_metadata": Fault(
        "global_index", "fail", [1, 2, 3], data=lambda df: _shift(df, "index", list(range(40, 195)), 3)
    ),
    # 4. timestamps
    "timestamp_backwards": Fault(
        "timestamps", "fail", [1], data=lambda df: set_rows(df, "timestamp", [60], [18 / FPS])
    ),
    "timestamp_gap": Fault(
        "timestamps", "fail", [2], data=lambda df: _shift(df, "timestamp", list(range(110, 135)), 2 / FPS)
    ),
    "timestamp_jitter": Fault(
        "timestamps", "fail", [3], data=lambda df: _shift(df, "timestamp", [150], 0.002)
    ),
    "timestamp_null": Fault(
        "timestamps", "fail", [0], data=lambda df: set_rows(df, "timestamp", [7], [None])
    ),
    # 5. metadata totals
    "total_frames_wrong": Fault("metadata", "fail", [], info=_set_info("total_frames", 196)),
    "total_episodes_wrong": Fault("metadata", "fail", [], info=_set_info("total_episodes", 5)),
    "total_tasks_wrong": Fault("metadata", "fail", [], info=_set_info("total_tasks", 3)),
    "task_missing_from_task_table": Fault(
        "metadata",
        "fail",
        [2],
        meta=_meta_col(2, "tasks", lambda c: pl.lit(["fly away"], dtype=pl.List(pl.String))),
    ),
    # 6. duplicate data
    "duplicate_frame_in_episode": Fault(
        "duplicate_frames", "warn", [1], data=lambda df: _copy_content(df, [45], [70]), full=True
    ),
    "frozen_state_stream": Fault("frozen_streams", "warn", [3], data=_freeze_state, full=True),
    "nan_in_state": Fault(
        "non_finite",
        "fail",
        [2],
        data=lambda df: _with_value(df, "observation.state", 100, 3, math.nan),
        full=True,
    ),
    "inf_in_action": Fault(
        "non_finite", "fail", [0], data=lambda df: _with_value(df, "action", 3, 0, math.inf), full=True
    ),
    "constant_gripper_action": Fault("constant_dimensions", "warn", [1], data=_constant_gripper, full=True),
    # 7. cross-episode contamination
    "partial_copy_between_episodes": Fault(
        "cross_episode",
        "fail",
        [0, 2],
        data=lambda df: _copy_content(df, list(range(10, 30)), list(range(90, 110))),
        full=True,
    ),
    "exact_duplicate_episode": Fault(
        "cross_episode",
        "fail",
        [1, 2],
        lengths=(40, 50, 50, 60),
        data=lambda df: _copy_content(df, list(range(40, 90)), list(range(90, 140))),
        full=True,
    ),
    # 8. split leakage
    "episode_id_in_two_splits": Fault(
        "split_leakage", "fail", [2], full=True, splits=["train=0:3", "val=2:4"]
    ),
    "frames_shared_between_splits": Fault(
        "split_leakage",
        "fail",
        [0, 3],
        data=lambda df: _copy_content(df, list(range(0, 10)), list(range(150, 160))),
        info=_set_info("splits", {"train": "0:3", "val": "3:4"}),
        full=True,
    ),
}


def build(tmp: Path, fault: Fault, version: str) -> Path:
    """Write the dataset with `fault` planted."""
    clean = frames(fault.lengths)
    df = fault.data(clean)
    meta = episodes_meta(df if fault.meta_from_data else clean)
    if fault.meta is not None:
        meta = fault.meta(meta)
    root = write(tmp / "ds", df, version=version, meta=meta)
    if fault.info is not None:
        import json

        p = root / "meta" / "info.json"
        info = json.loads(p.read_text())
        fault.info(info)
        p.write_text(json.dumps(info))
    return root


CASES = [(name, v) for name, f in FAULTS.items() for v in f.layouts]


@pytest.mark.parametrize("name,version", CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_fault_is_reported(tmp_path: Path, name: str, version: str) -> None:
    fault = FAULTS[name]
    root = build(tmp_path, fault, version)
    tester = DatasetLeakageTester(root, splits=fault.splits, progress=False)
    report = tester.run_all_tests() if fault.full else tester.run_minimal_tests()
    check = report.check(fault.check)
    assert check.status == fault.status, check.summary
    assert check.episodes == fault.episodes, check.summary
    assert check.count == len(fault.episodes)
    assert report.status == ("fail" if fault.status == "fail" else report.status)
    assert report.failed("warn")
    for ep in fault.episodes[:3]:
        assert str(ep) in check.summary  # the one-line summary names the episodes


def _assert_clean(report: LeakageReport) -> None:
    bad = [(c.name, c.summary) for c in report.checks if c.findings]
    assert not bad
    assert report.status == "pass" and not report.failed("warn")
    assert all(c.count == 0 and c.episodes == [] for c in report.checks)


@pytest.mark.parametrize("version", LAYOUTS)
def test_clean_dataset_passes_every_check(tmp_path: Path, version: str) -> None:
    root = write(tmp_path / "ds", frames(), version=version)
    tester = DatasetLeakageTester(root, progress=False)
    full = tester.run_all_tests()
    _assert_clean(full)
    assert [c.name for c in full.checks] == [
        "episode_index",
        "frame_index",
        "global_index",
        "timestamps",
        "metadata",
        "duplicate_frames",
        "frozen_streams",
        "non_finite",
        "constant_dimensions",
        "cross_episode",
        "split_leakage",
        # Added by the kinematic checks: new checks only ever append entries to the contract.
        "velocity_spikes",
        "frozen_joints",
        "action_state",
        "units_and_ranges",
        "short_episodes",
        "videos",
    ]
    minimal = tester.run_minimal_tests()
    _assert_clean(minimal)
    assert [c.name for c in minimal.checks] == [c.name for c in full.checks[:5]]
    assert full.info["layout"] == version and full.info["episodes"] == 4 and full.info["frames"] == 195


def test_lerobot_written_dataset_passes(state_dataset: Path) -> None:
    tester = DatasetLeakageTester(state_dataset, progress=False)
    _assert_clean(tester.run_all_tests())
    _assert_clean(tester.run_minimal_tests())


def test_many_files_and_small_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Episodes spread over several files and scanned in several batches give the same answers."""
    monkeypatch.setattr(scan_mod, "BATCH_ROWS", 50)
    df = frames((40, 50, 45, 60, 30)).with_columns(_file=pl.col("episode_index") // 2)
    clean = write(tmp_path / "clean", df)
    _assert_clean(DatasetLeakageTester(clean, progress=False).run_all_tests())
    # Copy 12 frames of episode 0 (file 0, batch 1) into episode 4 (file 2, a later batch).
    dirty = _copy_content(df, list(range(5, 17)), list(range(200, 212)))
    root = write(tmp_path / "dirty", dirty, meta=episodes_meta(df))
    report = DatasetLeakageTester(root, progress=False).run_all_tests()
    cross = report.check("cross_episode")
    assert cross.episodes == [0, 4]
    pair = cross.to_dict()["findings"][0]
    assert pair["shared_frames"] == [12, 12] and pair["share_of_shorter"] == pytest.approx(12 / 30)


def test_episode_continuing_into_next_file_is_reported(tmp_path: Path) -> None:
    """A v3.0 episode must live in one file, even if its rows look contiguous across the boundary."""
    df = frames()
    files = [0 if r < 60 else 1 for r in range(df.height)]  # episode 1 (rows 40-89) straddles files
    root = write(tmp_path / "ds", df.with_columns(_file=pl.Series(files)), meta=episodes_meta(df))
    check = DatasetLeakageTester(root, progress=False).run_minimal_tests().check("episode_index")
    assert check.status == "fail" and 1 in check.episodes


def test_exact_duplicate_and_partial_copy_are_told_apart(tmp_path: Path) -> None:
    df = frames((40, 50, 50, 60))
    df = _copy_content(df, list(range(40, 90)), list(range(90, 140)))  # 2 is a copy of 1
    df = _copy_content(df, list(range(0, 20)), list(range(150, 170)))  # half of 0 inside 3
    root = write(tmp_path / "ds", df)
    findings = (
        DatasetLeakageTester(root, progress=False)
        .run_all_tests()
        .check("cross_episode")
        .to_dict()["findings"]
    )
    by_pair = {tuple(f["episodes"]): f for f in findings}
    assert set(by_pair) == {(1, 2), (0, 3)}
    assert by_pair[(1, 2)]["exact_duplicate"] is True and by_pair[(1, 2)]["share_of_shorter"] == 1.0
    assert by_pair[(0, 3)]["exact_duplicate"] is False
    assert by_pair[(0, 3)]["share_of_shorter"] == pytest.approx(0.5)  # 20 of episode 0's 40 frames


def test_reordered_copy_is_not_an_exact_duplicate(tmp_path: Path) -> None:
    """Same frames in another order: every frame shared, but not an exact duplicate episode."""
    df = frames((40, 50, 50, 60))
    df = _copy_content(df, list(range(89, 39, -1)), list(range(90, 140)))
    root = write(tmp_path / "ds", df)
    finding = DatasetLeakageTester(root, progress=False).run_all_tests().check("cross_episode").findings[0]
    assert finding.episodes == [1, 2] and finding.kind == "shared_frames"
    assert finding.extra["share_of_shorter"] == 1.0 and finding.extra["exact_duplicate"] is False


def test_min_shared_frames_threshold(tmp_path: Path) -> None:
    from piperctl.leakage import Thresholds

    df = _copy_content(frames(), [0, 1, 2], [150, 151, 152])
    root = write(tmp_path / "ds", df)
    assert DatasetLeakageTester(root, progress=False).run_all_tests().check("cross_episode").episodes == [
        0,
        3,
    ]
    relaxed = DatasetLeakageTester(root, progress=False, thresholds=Thresholds(min_shared_frames=4))
    assert relaxed.run_all_tests().check("cross_episode").status == "pass"


def test_frozen_threshold_follows_frozen_seconds(tmp_path: Path) -> None:
    from piperctl.leakage import Thresholds

    df = frames()
    rows = list(range(140, 170))  # 30 identical actions = 1 s at 30 fps
    df = set_rows(df, "action", rows, [df["action"][140].to_list()] * len(rows))
    root = write(tmp_path / "ds", df)
    assert DatasetLeakageTester(root, progress=False).run_all_tests().check("frozen_streams").status == "pass"
    strict = DatasetLeakageTester(root, progress=False, thresholds=Thresholds(frozen_seconds=1.0))
    check = strict.run_all_tests().check("frozen_streams")
    assert check.status == "warn" and check.episodes == [3]
    run = check.findings[0].extra["runs"][0]
    assert run["start_frame"] == 5 and run["length"] == 30 and run["feature"] == "action"


def test_float32_timestamps_of_long_episodes_are_not_jitter(tmp_path: Path) -> None:
    """An hour-long episode: float32 cannot hold k/30 closer than ~2e-4 s, which is not a fault."""
    root = write(tmp_path / "ds", frames((108_000,)))
    assert DatasetLeakageTester(root, progress=False).run_minimal_tests().check("timestamps").status == "pass"


def test_timestamp_tolerance_option(tmp_path: Path) -> None:
    from piperctl.leakage import Thresholds

    root = write(tmp_path / "ds", _shift(frames(), "timestamp", [150], 0.002))
    loose = DatasetLeakageTester(root, progress=False, thresholds=Thresholds(tolerance_s=0.01))
    assert loose.run_minimal_tests().check("timestamps").status == "pass"


def test_huge_but_finite_values_are_not_nan(tmp_path: Path) -> None:
    """float32 values near the type's limit are finite: no NaN/Inf finding (no overflow in the check)."""
    df = _with_value(
        _with_value(frames(), "observation.state", 10, 0, 3e38), "observation.state", 10, 1, 3e38
    )
    root = write(tmp_path / "ds", df)
    assert DatasetLeakageTester(root, progress=False).run_all_tests().check("non_finite").status == "pass"
