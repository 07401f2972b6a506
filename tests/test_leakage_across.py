"""`piperctl leakage full|minimal A B ...`: several datasets scanned as one collection (issue 18)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from piperctl.errors import PiperctlError
from piperctl.leakage import DatasetLeakageTester, LeakageReport
from piperctl.leakage.result import CollectionReport
from tests.conftest import one_error_line, run_cli
from tests.leakage_data import frames, write


def _episode(df: pl.DataFrame, episode: int, as_episode: int, first_index: int) -> pl.DataFrame:
    """Episode `episode` of `df` renumbered as `as_episode`, its global index starting at `first_index`."""
    ep = df.filter(pl.col("episode_index") == episode)
    return ep.with_columns(
        episode_index=pl.lit(as_episode, dtype=pl.Int64), index=pl.col("frame_index") + first_index
    )


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`a` and `b`: independent recordings, every episode starting and ending at the same home pose;
    `copy_a`: `a` uploaded twice; `mixed`: 3 episodes of its own and, as episode 3, `a`'s episode 1;
    `pasted`: `b` with 12 moving frames of `a`'s episode 2 pasted into its episode 1."""
    base = tmp_path_factory.mktemp("across")
    df_a = frames(rest=5, seed=1)
    df_b = frames(rest=5, seed=2)
    a = write(base / "a", df_a)
    shutil.copytree(a, base / "copy_a")
    b = write(base / "b", df_b)
    own = frames((40, 50, 45), rest=5, seed=3)
    mixed = write(base / "mixed", pl.concat([own, _episode(df_a, 1, 3, own.height)]))
    src = df_a.filter(pl.col("episode_index") == 2)["observation.state", "action"][10:22]
    rows = df_b.with_row_index("_r").filter(pl.col("episode_index") == 1)["_r"].to_list()[15:27]
    pasted = df_b.to_dict(as_series=False)
    for k, r in enumerate(rows):
        pasted["observation.state"][r] = src["observation.state"][k].to_list()
        pasted["action"][r] = src["action"][k].to_list()
    pasted_df = pl.DataFrame(pasted, schema=df_b.schema)
    return {
        "a": a,
        "copy_a": base / "copy_a",
        "b": b,
        "mixed": mixed,
        "pasted": write(base / "pasted", pasted_df),
    }


def _across(doc: dict, name: str) -> dict:
    return next(c for c in doc["across"]["checks"] if c["name"] == name)


def test_copy_of_a_dataset_exits_1_and_names_the_shared_episodes(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    md = tmp_path / "report.md"
    code, out, _ = run_cli(
        ["leakage", "full", sets["a"], sets["copy_a"], "--json", "--no-progress", "--markdown", md], capsys
    )
    doc = json.loads(out)
    assert code == 1 and doc["status"] == "fail" and doc["mode"] == "full"
    assert doc["datasets"] == [str(sets["a"]), str(sets["copy_a"])] and doc["labels"] == ["a", "copy_a"]
    # Each dataset on its own is clean: only the check across them finds the copy.
    assert [r["status"] for r in doc["reports"]] == ["pass", "pass"]
    assert [r["label"] for r in doc["reports"]] == ["a", "copy_a"]
    copies = _across(doc, "copies_across")
    assert copies["status"] == "fail"
    assert copies["episodes"] == [f"{d}:{e}" for d in ("a", "copy_a") for e in range(4)]
    pairs = sorted((f["episodes"], f["kind"], f["shared_frames"]) for f in copies["findings"])
    lengths = [40, 50, 45, 60]
    assert pairs == [([f"a:{e}", f"copy_a:{e}"], "duplicate_episode", [n, n]) for e, n in enumerate(lengths)]
    text = md.read_text()
    assert "## Across datasets" in text and "a:1 and copy_a:1 are the same episode (50 frames)" in text


def test_independent_datasets_pass_and_shared_rest_poses_are_no_finding(
    sets: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["leakage", sets["a"], sets["b"], "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["status"] == "pass"
    # Progress off a terminal: each dataset's frames, then the comparison, on stderr.
    logged = [line.rpartition(" ")[2] for line in err.splitlines() if line.strip()]
    assert logged == ["0/195", "195/195", "0/195", "195/195", "0/2", "2/2"], err
    copies = _across(doc, "copies_across")
    assert copies["status"] == "pass" and copies["findings"] == [] and copies["episodes"] == []
    # Both datasets hold the same home pose at both ends of every episode: compared, left out.
    assert copies["rest_poses"] == 1 and copies["rest_frames"] == 2 * 4 * 2 * 5
    assert _across(doc, "split_leakage_across")["status"] == "pass"


def test_a_pasted_run_of_moving_frames_is_found(sets: dict[str, Path]) -> None:
    report = DatasetLeakageTester([sets["a"], sets["pasted"]], progress=False).run_all_tests()
    assert isinstance(report, CollectionReport) and report.failed()
    copies = report.check("copies_across")
    assert copies.episodes == ["a:2", "pasted:1"]
    (finding,) = copies.findings
    assert finding.kind == "shared_frames" and finding.extra["shared_frames"] == [12, 12]
    assert finding.extra["datasets"] == ["a", "pasted"] and finding.extra["episode_ids"] == [2, 1]
    assert report.report("pasted").status == "pass"


def test_copy_from_train_into_validation_is_split_leakage(
    sets: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["leakage", "full", sets["a"], sets["mixed"], "--json", "--no-progress"]
    split = ["--split", "mixed:train=0:3", "--split", "mixed:val=3"]
    code, out, _ = run_cli([*args, *split], capsys)
    doc = json.loads(out)
    assert code == 1
    leak = _across(doc, "split_leakage_across")
    assert leak["status"] == "fail" and leak["episodes"] == ["a:1", "mixed:3"]
    assert "a:1 (train) and mixed:3 (val) share 50 frames" in leak["summary"]
    assert leak["splits_source"] == {"a": "meta/info.json", "mixed": "--split"}
    assert _across(doc, "copies_across")["episodes"] == ["a:1", "mixed:3"]
    # Within `mixed` the held-out episode shares nothing with its own training episodes.
    mixed = doc["reports"][1]
    assert next(c for c in mixed["checks"] if c["name"] == "split_leakage")["status"] == "pass"
    # Without the split, the copy is still a copy, but no split leaks into another.
    code, out, _ = run_cli(args, capsys)
    doc = json.loads(out)
    assert code == 1 and _across(doc, "split_leakage_across")["status"] == "pass"


@pytest.mark.parametrize("form", [["leakage", "minimal"], ["leakage", "--minimal"]])
def test_minimal_scans_each_dataset(
    sets: dict[str, Path], capsys: pytest.CaptureFixture[str], form: list[str]
) -> None:
    code, out, _ = run_cli([*form, sets["a"], sets["copy_a"], "--json", "--no-progress"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["mode"] == "minimal" and doc["across"]["checks"] == []
    assert [len(r["checks"]) for r in doc["reports"]] == [5, 5]


def test_api_one_dataset_or_a_list(sets: dict[str, Path]) -> None:
    one = DatasetLeakageTester([sets["a"]], progress=False).run_minimal_tests()
    assert isinstance(one, LeakageReport) and one.dataset == str(sets["a"])
    tester = DatasetLeakageTester([sets["a"], sets["b"], sets["copy_a"]], progress=False)
    many = tester.run_all_tests()
    assert isinstance(many, CollectionReport) and many.labels == ["a", "b", "copy_a"]
    copied = [*(f"a:{e}" for e in range(4)), *(f"copy_a:{e}" for e in range(4))]
    assert many.check("copies_across").episodes == copied
    buf = io.StringIO()
    tester.print_report(console=Console(file=buf, width=200))
    text = buf.getvalue()
    # One table per dataset, then the table across them, then the overall status.
    assert text.count("Cross-episode contamination") == 3 and "across 3 datasets (a, b, copy_a)" in text
    assert "a:3 and copy_a:3 are the same episode" in text and text.rstrip().endswith("overall: FAIL")


def test_datasets_of_other_types_are_not_compared(sets: dict[str, Path], tmp_path: Path) -> None:
    """The same values stored as float64 are another dataset's own values: not compared, said so."""
    df = pl.read_parquet(sets["a"] / "data" / "chunk-000" / "file-000.parquet")
    wide = df.with_columns(pl.col("action").cast(pl.Array(pl.Float64, 7)))
    other = write(tmp_path / "f64", wide)
    report = DatasetLeakageTester([sets["a"], other], progress=False).run_all_tests()
    copies = report.check("copies_across")  # type: ignore[union-attr]
    assert copies.status == "skip" and copies.extra["not_compared"] == [["a", "f64"]]
    assert not report.failed()


def test_user_errors_are_one_line(sets: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["leakage", "full", sets["a"], sets["a"]], capsys)
    assert code == 2 and "given twice" in one_error_line(err)
    code, _, err = run_cli(["leakage", "full", sets["a"], f"{sets['a']}/"], capsys)
    assert code == 2 and "same dataset" in one_error_line(err)
    code, _, err = run_cli(["leakage", "full", sets["a"], sets["b"], "--split", "nope:val=0:2"], capsys)
    assert code == 2 and "no dataset called 'nope'" in one_error_line(err)
    with pytest.raises(PiperctlError):
        DatasetLeakageTester([])


def test_synthesized_recordings_in_other_units_and_names(state_dataset: Path, tmp_path: Path) -> None:
    """`dataset synth` twice with one seed: the same motion, once in radians with `joint_1` names and once
    in degrees with `joint_1.pos` names. Each dataset is checked in its own units; values differ, so
    nothing is called a copy (what is compared is each dataset's stored values)."""
    from piperctl.datasets.synth import SynthConfig, synthesize

    cfg = SynthConfig(episodes=6, frames=(40, 60), seed=3, cameras=[], units="degrees", names="pos")
    degrees = synthesize(tmp_path / "piper_degrees", cfg)
    report = DatasetLeakageTester([state_dataset, degrees], progress=False).run_all_tests()
    assert isinstance(report, CollectionReport) and report.status == "pass"
    units = [set(r.info["conventions"]["observation.state"].values()) for r in report.reports]
    assert units[0] >= {"rad"} and units[1] >= {"deg"}
    copies = report.check("copies_across")
    assert copies.status == "pass" and copies.extra["not_compared"] == []


def test_labels_and_split_routing() -> None:
    """Labels are folder or Hub repo names (the whole string where they clash); `--split NAME=...` goes
    to every dataset, `--split DATASET:NAME=...` to the one named by its label or as given."""
    from piperctl.leakage.splits import route_split_options
    from piperctl.leakage.tester import labels_of

    assert labels_of(["lerobot/pusht", "data/mon/"]) == ["pusht", "mon"]
    assert labels_of(["a/piper", "b/piper", "c"]) == ["a/piper", "b/piper", "c"]
    names = [("mon", "data/mon"), ("tue", "data/tue")]
    routed = route_split_options(["train=0:40", "data/tue:val=40:50", "tue:val=51"], names)
    assert routed == [["train=0:40"], ["train=0:40", "val=40:50", "val=51"]]
    assert route_split_options(["mon:val=1"], names) == [["val=1"], None]
