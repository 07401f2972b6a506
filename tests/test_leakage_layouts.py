"""Parquet layouts and paths: row groups per episode, list columns, batches, odd folder names; SKIP; retime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from piperctl.leakage import DatasetLeakageTester
from piperctl.leakage import reader as reader_mod
from piperctl.leakage import scan as scan_mod
from tests.conftest import run_cli
from tests.leakage_data import FPS, episodes_meta, frames, rows_of, set_rows, write


def _as_lerobot_writes(root: Path) -> None:
    """Rewrite every data file as lerobot 0.6.1 does: one row group per episode, vectors as list<float>."""
    for path in sorted((root / "data").glob("**/*.parquet")):
        table = pq.read_table(path)
        for i, field in enumerate(table.schema):
            if pa.types.is_fixed_size_list(field.type):
                col = table.column(i).combine_chunks()
                width = field.type.list_size
                offsets = pa.array(np.arange(0, len(col) * width + 1, width, dtype=np.int32))
                table = table.set_column(i, field.name, pa.ListArray.from_arrays(offsets, col.flatten()))
        eps = table.column("episode_index").to_numpy()
        starts = [0, *(np.nonzero(eps[1:] != eps[:-1])[0] + 1), len(eps)]
        with pq.ParquetWriter(path, table.schema) as w:
            for a, b in zip(starts[:-1], starts[1:], strict=True):
                w.write_table(table.slice(a, b - a))
        assert pq.ParquetFile(path).num_row_groups == len(starts) - 1


def _faulty_frames() -> pl.DataFrame:
    """Six episodes over two files with faults the scan finds across rows: copies, a spike, a repeat."""
    df = frames((40, 50, 45, 60, 30, 55), rest=5).with_columns(
        _file=(pl.col("episode_index") >= 3).cast(pl.Int64)
    )
    src, dst = rows_of(df, 0)[10:22], rows_of(df, 4)[8:20]  # 12 moving frames of episode 0 inside 4
    for col in ("observation.state", "action"):
        df = set_rows(df, col, dst, [df[col][r] for r in src])
    r = rows_of(df, 2)[20]
    spike = df["observation.state"][r].to_numpy().copy()
    spike[1] += 1.0
    df = set_rows(df, "observation.state", [r], [spike])
    return set_rows(df, "frame_index", [rows_of(df, 5)[30]], [29])


def _report(root: Path, full: bool = True) -> dict:
    tester = DatasetLeakageTester(root, progress=False)
    doc = (tester.run_all_tests() if full else tester.run_minimal_tests()).to_dict()
    doc.pop("root")
    doc.pop("dataset")
    return doc


def test_same_data_same_report_in_every_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One row group per episode with list columns, or one big row group with fixed-size lists: same JSON."""
    df = _faulty_frames()
    big = write(tmp_path / "big", df, meta=episodes_meta(df))
    lerobot = write(tmp_path / "lerobot", df, meta=episodes_meta(df))
    _as_lerobot_writes(lerobot)
    assert pq.read_schema(next((lerobot / "data").glob("**/*.parquet"))).field("action").type == pa.list_(
        pa.float32()
    )
    reference = _report(big)
    assert {c["name"]: c["status"] for c in reference["checks"]}["cross_episode"] == "fail"
    assert reference["status"] == "fail"
    by_name = {c["name"]: c for c in reference["checks"]}
    assert by_name["cross_episode"]["episodes"] == [0, 4]
    assert 2 in by_name["velocity_spikes"]["episodes"] and by_name["frame_index"]["episodes"] == [5]
    assert _report(lerobot) == reference
    assert _report(lerobot, full=False) == _report(big, full=False)
    # Small batches and reads: episodes straddle batch and read boundaries and are carried whole;
    # the repeated hashes are looked for bucket by bucket.
    monkeypatch.setattr(scan_mod, "BATCH_ROWS", 70)
    monkeypatch.setattr(reader_mod, "READ_ROWS", 33)
    monkeypatch.setattr(scan_mod, "HASH_SORT", 40)
    assert _report(lerobot) == reference
    assert _report(big) == reference


def test_batches_never_cut_an_episode(tmp_path: Path) -> None:
    df = frames((40, 50, 45, 60, 30))
    root = write(tmp_path / "ds", df)
    _as_lerobot_writes(root)
    layout = DatasetLeakageTester(root, progress=False)._load()
    seen: list[int] = []
    batches = list(reader_mod.iter_batches(layout.files, ["episode_index"], {}, 70, seen.append))
    assert sum(seen) == df.height and sum(b.rows for b in batches) == df.height
    owners = [set(b.frame["episode_index"].unique().to_list()) for b in batches]
    assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1 :])
    assert len(batches) >= 2  # the carried episode makes a batch a little short of 70 rows, never cut
    rows = pl.concat([b.frame["_row"] for b in batches]).to_list()
    assert rows == list(range(df.height))


def test_brackets_spaces_and_accents_in_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder named like a glob pattern is still a path: polars must not expand it."""
    root = write(tmp_path / "data [v1] é", frames())
    _as_lerobot_writes(root)
    code, out, err = run_cli(["leakage", "full", str(root), "--json", "--no-progress"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["status"] == "pass" and doc["frames"] == 195


def test_skipped_check_is_skip_in_table_json_and_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write(tmp_path / "ds", frames())
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["action"]["names"] = ["shoulder_pan", "a", "b", "c", "d", "e", "f"]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    code, out, _ = run_cli(
        ["leakage", "full", str(root), "--json", "--no-progress", "--fail-on", "warn"], capsys
    )
    doc = json.loads(out)
    lag = next(c for c in doc["checks"] if c["name"] == "action_state")
    assert code == 0 and doc["status"] == "pass"
    assert lag["status"] == "skip" and lag["skipped"].startswith("skipped: ")
    code, out, _ = run_cli(["leakage", "full", str(root), "--no-progress", "--fail-on", "warn"], capsys)
    line = next(x for x in out.splitlines() if "Action-state" in x)
    assert code == 0 and "SKIP" in line and "PASS" not in line


def test_wall_clock_timestamps_name_the_retime_fix(tmp_path: Path) -> None:
    df = frames()
    rng = np.random.default_rng(1)
    fi = df["frame_index"].to_numpy()
    wall = fi / FPS + np.concatenate([[0.0], rng.normal(0, 0.004, df.height - 1)])
    wall[fi == 0] = 0.0
    root = write(tmp_path / "cr5 v30", df.with_columns(timestamp=pl.Series(wall.astype(np.float32))))
    check = DatasetLeakageTester(root, progress=False).run_minimal_tests().check("timestamps")
    assert check.status == "fail"
    # The fix names the command and where the retimed copy goes: beside the dataset, never over it.
    command = f"piperctl dataset convert '{root}' '{tmp_path / 'cr5 v30_retimed'}' --retime"
    assert "piperctl dataset convert SRC OUT --retime" in check.summary and command in check.summary
    assert check.to_dict()["fix"] == command
    jitter = [f for f in check.findings if f.kind == "jitter"]
    assert jitter and all(f.extra["fix"] == command for f in jitter)
    # Timestamps that are frame_index / fps need no retiming, and the fix is not offered.
    clean = DatasetLeakageTester(write(tmp_path / "clean", df), progress=False).run_minimal_tests()
    assert "fix" not in clean.check("timestamps").to_dict()
