"""`piperctl leakage`: the three command forms, exit codes, JSON contract, Markdown, one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import one_error_line, python_exe, run_cli
from tests.leakage_data import frames, set_rows, write

CHECKS_MINIMAL = ["episode_index", "frame_index", "global_index", "timestamps", "metadata"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("lk") / "clean", frames())


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Episode 2 repeats a frame_index (fail); episode 3's gripper action is constant (warn)."""
    df = frames()
    df = set_rows(df, "frame_index", [100], [9])
    return write(tmp_path_factory.mktemp("lk") / "faulty", df, meta=None)


@pytest.fixture(scope="module")
def warn_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    df = frames()
    rows = list(range(135, 195))
    vals = []
    for r in rows:
        v = df["action"][r].to_list()
        v[6] = 0.025  # inside the PiPER gripper range (m): constant, so only a warning
        vals.append(v)
    return write(tmp_path_factory.mktemp("lk") / "warn", set_rows(df, "action", rows, vals))


def _json(out: str) -> dict:
    return json.loads(out)


def _assert_contract(doc: dict, mode: str) -> None:
    """The documented contract: top-level keys and, per check, name/status/count/summary/episodes."""
    assert set(doc) >= {"dataset", "mode", "status", "checks"}
    assert doc["mode"] == mode and doc["status"] in ("pass", "warn", "fail")
    assert isinstance(doc["dataset"], str)
    for c in doc["checks"]:
        assert isinstance(c["name"], str) and c["status"] in ("pass", "skip", "warn", "fail")
        assert isinstance(c["count"], int) and isinstance(c["summary"], str) and c["summary"]
        assert isinstance(c["episodes"], list) and all(isinstance(e, int) for e in c["episodes"])
        assert c["count"] >= len(c["episodes"])
    ranks = {"pass": 0, "skip": 0, "warn": 1, "fail": 2}
    statuses = ["pass" if c["status"] == "skip" else c["status"] for c in doc["checks"]]
    assert doc["status"] == max(statuses, key=ranks.__getitem__)


@pytest.mark.parametrize(
    "form,mode",
    [
        (["leakage", "full", "{ds}"], "full"),
        (["leakage", "minimal", "{ds}"], "minimal"),
        (["leakage", "{ds}", "--minimal"], "minimal"),
        (["leakage", "{ds}"], "full"),
        (["leakage", "--minimal", "{ds}"], "minimal"),
        (["leakage", "minimal", "--dataset-root", "{ds}"], "minimal"),
        (["leakage", "--dataset-root", "{ds}"], "full"),
    ],
)
def test_command_forms(clean: Path, capsys: pytest.CaptureFixture[str], form: list[str], mode: str) -> None:
    args = [str(clean) if a == "{ds}" else a for a in form] + ["--json", "--no-progress"]
    code, out, _ = run_cli(args, capsys)
    doc = _json(out)
    assert code == 0
    _assert_contract(doc, mode)
    names = [c["name"] for c in doc["checks"]]
    assert names[:5] == CHECKS_MINIMAL and (len(names) == 5) == (mode == "minimal")


def test_faulty_dataset_exits_1_and_names_episode(faulty: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["leakage", "minimal", faulty, "--json"], capsys)
    doc = _json(out)
    _assert_contract(doc, "minimal")
    assert code == 1 and doc["status"] == "fail"
    fi = next(c for c in doc["checks"] if c["name"] == "frame_index")
    assert fi["status"] == "fail" and fi["episodes"] == [2] and fi["count"] == 1


def test_fail_on_warn(warn_only: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["leakage", "full", warn_only, "--json"], capsys)
    assert code == 0 and _json(out)["status"] == "warn"
    code, _, _ = run_cli(["leakage", "full", warn_only, "--json", "--fail-on", "warn"], capsys)
    assert code == 1
    code, _, _ = run_cli(["leakage", "minimal", warn_only, "--fail-on", "warn"], capsys)
    assert code == 0  # the warning is a content check that minimal does not run


def test_table_output_and_markdown(faulty: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = tmp_path / "report.md"
    code, out, err = run_cli(["leakage", faulty, "--markdown", md], capsys)
    assert code == 1
    assert "Frame index continuity" in out and "FAIL" in out and "overall: FAIL" in out
    assert "scanning" in err  # progress goes to stderr, never into the results on stdout
    text = md.read_text()
    assert "| Frame index continuity | FAIL | 1 | 2 |" in text
    assert "frame_index repeats" in text


def test_progress_counts_frames_and_no_progress_is_silent(
    clean: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Off a terminal the bar logs frames read (start and end); --no-progress adds nothing to stderr."""
    code, out, err = run_cli(["leakage", "full", clean, "--json"], capsys)
    frames = _json(out)["frames"]
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 0 and lines[0].endswith(f": 0/{frames}") and lines[-1].endswith(f": {frames}/{frames}")
    code, out, err = run_cli(["leakage", "full", clean, "--json", "--no-progress"], capsys)
    assert code == 0 and err.strip() == "" and _json(out)["frames"] == frames


def test_split_option_overrides_info(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["leakage", clean, "--json", "--split", "train=0:3", "--split", "val=2:4"], capsys)
    doc = _json(out)
    split = next(c for c in doc["checks"] if c["name"] == "split_leakage")
    assert code == 1 and split["status"] == "fail" and split["episodes"] == [2]
    assert split["splits_source"] == "--split" and split["splits"] == {"train": 3, "val": 2}


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--split", "val"], "--split"),
        (["--split", "val=a:b"], "--split val"),
        (["--fail-on", "maybe"], "--fail-on"),
        (["--tolerance-s", "-1"], "--tolerance-s"),
    ],
)
def test_bad_options_give_one_line(
    clean: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    code, _, err = run_cli(["leakage", "full", clean, *args], capsys)
    assert code == 2 and needle in one_error_line(err, ignore=("scanning",))


def test_dataset_given_twice_or_not_at_all(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["leakage", "full", clean, "--dataset-root", clean], capsys)
    assert code == 2 and "not both" in one_error_line(err, ignore=("scanning",))
    code, _, err = run_cli(["leakage", "full"], capsys)
    assert code == 2 and "no dataset" in one_error_line(err, ignore=("scanning",))


def _corrupt_pages(path: Path) -> None:
    """Overwrite every data page but keep the footer, so only reading the data can notice."""
    data = bytearray(path.read_bytes())
    footer_len = int.from_bytes(data[-8:-4], "little")
    end = len(data) - 8 - footer_len
    data[4:end] = b"\xff" * (end - 4)
    path.write_bytes(bytes(data))


def _rewrite_data(root: Path, fn) -> None:  # type: ignore[no-untyped-def]
    for f in (root / "data").glob("**/*.parquet"):
        pq.write_table(fn(pq.read_table(f)), f)


MALFORMED = {
    "missing_info": (lambda r: (r / "meta" / "info.json").unlink(), "meta/info.json: missing"),
    "info_not_json": (lambda r: (r / "meta" / "info.json").write_text("{oops"), "not valid JSON"),
    "unsupported_version": (
        lambda r: (r / "meta" / "info.json").write_text(
            json.dumps({"codebase_version": "v1.6", "fps": 30, "features": {}})
        ),
        "codebase_version 'v1.6' is not supported",
    ),
    "no_data_files": (lambda r: shutil.rmtree(r / "data"), "no parquet data files"),
    "garbage_parquet": (
        lambda r: (r / "data" / "chunk-000" / "file-000.parquet").write_bytes(b"not parquet at all"),
        "data/chunk-000/file-000.parquet: not a readable parquet file",
    ),
    "corrupt_pages": (
        lambda r: _corrupt_pages(r / "data" / "chunk-000" / "file-000.parquet"),
        "data/chunk-000/file-000.parquet: cannot",
    ),
    "missing_column": (
        lambda r: _rewrite_data(r, lambda t: t.drop_columns(["frame_index"])),
        "data/chunk-000/file-000.parquet: has no 'frame_index' column",
    ),
    "wrong_dtype": (
        lambda r: _rewrite_data(
            r,
            lambda t: t.set_column(t.schema.get_field_index("index"), "index", t["index"].cast(pa.string())),
        ),
        "column 'index' has type string, expected integer",
    ),
    "missing_episode_metadata": (lambda r: shutil.rmtree(r / "meta" / "episodes"), "no episode metadata"),
    "episode_metadata_without_length": (
        lambda r: pq.write_table(
            pq.read_table(r / "meta/episodes/chunk-000/file-000.parquet").drop_columns(["length"]),
            r / "meta/episodes/chunk-000/file-000.parquet",
        ),
        "meta/episodes/chunk-000/file-000.parquet: has no 'length' column",
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_dataset_gives_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    root = write(tmp_path / "ds", frames())
    break_it, needle = MALFORMED[name]
    break_it(root)
    for mode in ("minimal", "full"):
        code, out, err = run_cli(["leakage", mode, root, "--json"], capsys)
        assert code == 2 and out == ""
        assert needle in one_error_line(err, ignore=("scanning",))


def test_content_column_missing_only_matters_in_full_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write(tmp_path / "ds", frames())
    _rewrite_data(root, lambda t: t.drop_columns(["action"]))
    assert run_cli(["leakage", "minimal", root, "--json"], capsys)[0] == 0
    code, _, err = run_cli(["leakage", "full", root, "--json"], capsys)
    assert code == 2 and "has no 'action' column" in one_error_line(err, ignore=("scanning",))


def test_v21_malformed_episodes_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write(tmp_path / "ds", frames(), version="v2.1")
    (root / "meta" / "episodes.jsonl").write_text('{"episode_index": 0, "length": 40}\n{broken\n')
    code, _, err = run_cli(["leakage", "minimal", root], capsys)
    assert code == 2 and "meta/episodes.jsonl: line 2 is not valid JSON" in one_error_line(
        err, ignore=("scanning",)
    )


def test_missing_folder_and_offline_hub_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["leakage", "full", tmp_path / "nope"], capsys)
    assert code == 2 and "does not exist" in one_error_line(err, ignore=("scanning",))
    code, _, err = run_cli(["leakage", "full", "nobody-xyz/not-cached"], capsys)
    line = one_error_line(err, ignore=("scanning",))
    assert code == 2 and "nobody-xyz/not-cached" in line and "HF_HUB_OFFLINE" in line


def test_real_console_script(clean: Path) -> None:
    """The installed entry point, in a fresh process: exit code, JSON on stdout, and no torch/lerobot."""
    exe = Path(python_exe()).parent / "piperctl"
    proc = subprocess.run(
        [str(exe), "leakage", "minimal", str(clean), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    _assert_contract(json.loads(proc.stdout), "minimal")
    code = (
        "import sys; from piperctl.leakage import DatasetLeakageTester as T; "
        f"T({str(clean)!r}, progress=False).run_all_tests(); "
        "bad = [m for m in ('torch', 'lerobot') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([python_exe(), "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
