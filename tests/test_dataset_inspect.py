"""The dataset checks `train` runs before loading: version, missing files, cameras, timestamps, video frames."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from piperctl.datasets import inspect as dsi
from piperctl.errors import PiperctlError
from tests.dataset_builders import copy, tiny


@pytest.fixture(scope="module")
def jittered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v3.0, two cameras, stored timestamps off frame_index / fps by up to 10 ms."""
    return tiny(tmp_path_factory.mktemp("insp") / "jit", timestamp_jitter_s=0.01, episodes=2)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v2.1, one camera."""
    return tiny(tmp_path_factory.mktemp("insp") / "old", version="v2.1", cameras=["top"], episodes=2)


def _line(e: pytest.ExceptionInfo[PiperctlError]) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_versions_and_the_convert_command(synth_dataset: Path, legacy: Path) -> None:
    assert dsi.dataset_version(synth_dataset) == "v3.0"
    assert dsi.dataset_version(legacy) == "v2.1"
    dsi.require_v30(synth_dataset)
    with pytest.raises(PiperctlError) as e:
        dsi.require_v30(legacy)
    line = _line(e)
    assert f"{legacy} is a LeRobot v2.1 dataset" in line
    assert line.endswith(
        f"piperctl dataset convert {legacy} {legacy.parent / 'old_v30'}"
    )  # no --retime needed
    assert dsi.convert_command(Path("/a b/ds"), "/x/out", retime=True) == (
        "piperctl dataset convert '/a b/ds' /x/out --retime"
    )


def test_not_a_dataset_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PiperctlError) as e:
        dsi.dataset_version(tmp_path)
    assert "no meta/info.json" in _line(e)
    with pytest.raises(PiperctlError) as e:
        dsi.dataset_version(tmp_path / "nope")
    assert "no such dataset folder" in _line(e)


def test_missing_files_v30_names_each_camera_and_its_first_file(jittered: Path, tmp_path: Path) -> None:
    assert dsi.missing_files(jittered) == {}
    dsi.require_files(jittered)
    root = copy(jittered, tmp_path / "ds")
    shutil.rmtree(root / "videos/observation.images.wrist")
    found = dsi.missing_files(root)
    assert list(found) == ["observation.images.wrist"]
    m = found["observation.images.wrist"]
    assert (m.missing, m.total, m.first) == (1, 1, "videos/observation.images.wrist/chunk-000/file-000.mp4")
    assert m.message() == (
        "camera wrist: 1 of 1 video files missing, first: videos/observation.images.wrist/chunk-000/file-000.mp4"
    )
    # Training on the other camera only is fine.
    assert dsi.missing_files(root, cameras=["observation.images.front"]) == {}
    with pytest.raises(PiperctlError) as e:
        dsi.require_files(root)
    line = _line(e)
    assert line.startswith(f"{root} is incomplete: camera wrist: 1 of 1") and "--cameras" in line
    (root / "data/chunk-000/file-000.parquet").unlink()
    assert dsi.missing_files(root)["data"].first == "data/chunk-000/file-000.parquet"


def test_missing_files_v21(legacy: Path, tmp_path: Path) -> None:
    root = copy(legacy, tmp_path / "ds")
    (root / "videos/chunk-000/observation.images.top/episode_000001.mp4").unlink()
    m = dsi.missing_files(root)["observation.images.top"]
    assert (m.missing, m.total) == (1, 2)
    assert m.first == "videos/chunk-000/observation.images.top/episode_000001.mp4"


def test_select_cameras(jittered: Path) -> None:
    assert dsi.select_cameras(jittered, None) == ["observation.images.front", "observation.images.wrist"]
    assert dsi.select_cameras(jittered, "wrist") == ["observation.images.wrist"]
    assert dsi.select_cameras(jittered, ["observation.images.front", "front"]) == ["observation.images.front"]
    with pytest.raises(PiperctlError) as e:
        dsi.select_cameras(jittered, "front,top")
    assert _line(e) == f"{jittered} has no camera top — choose from: front, wrist"


def test_check_timestamps_names_episode_and_frame(jittered: Path, synth_dataset: Path) -> None:
    assert dsi.check_timestamps(synth_dataset) is None
    found = dsi.check_timestamps(jittered)
    assert found is not None
    assert found.expected == pytest.approx(found.frame / 30)
    assert 1e-4 < found.timestamp - found.expected < 0.01
    assert found.episodes == 2 and found.rows > 10
    # A generous tolerance accepts the jitter, like lerobot-train's --tolerance-s.
    assert dsi.check_timestamps(jittered, tolerance_s=0.011) is None
    with pytest.raises(PiperctlError) as e:
        dsi.require_consistent_timestamps(jittered)
    line = _line(e)
    assert f"episode {found.episode} frame {found.frame} has timestamp" in line
    # A v3.0 folder is retimed into a new folder beside it, not "converted" to a v3.0 named _v30.
    assert f"piperctl dataset convert {jittered} {jittered.parent / 'jit_retimed'} --retime" in line
    assert f"differ, by up to {found.max_error:.4g} s" in line and 1e-4 < found.max_error <= 0.01


def test_check_video_frames(jittered: Path, legacy: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    assert dsi.check_video_frames(jittered) is None  # jitter is in the parquet only
    assert dsi.check_video_frames(legacy) is None
    root = copy(legacy, tmp_path / "ds")
    p = root / "data/chunk-000/episode_000000.parquet"
    t = pq.read_table(p)
    pq.write_table(t.slice(0, t.num_rows - 2), p)
    bad = dsi.check_video_frames(root)
    assert (bad.episode, bad.key) == (0, "observation.images.top")
    assert bad.message().startswith(
        "episode 0, camera top (videos/chunk-000/observation.images.top/episode_000000.mp4)"
    )
    assert f"{t.num_rows} video frames for {t.num_rows - 2} data rows" in bad.message()


@pytest.mark.parametrize("column", ["action", "timestamp"])
def test_a_column_of_the_wrong_type_is_one_line_for_train_and_leakage(
    tiny_ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str
) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tests.conftest import one_error_line, run_cli, train_args

    ds = tmp_path / "ds"
    shutil.copytree(tiny_ds, ds)
    (path,) = (ds / "data").rglob("*.parquet")
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    as_text = (
        pc.cast(table[column], pa.string())
        if column == "timestamp"
        else pa.array([str(v) for v in table[column].to_pylist()])
    )
    pq.write_table(table.set_column(i, column, as_text), path)

    code, _, err = run_cli(train_args(tmp_path / "run", ds), capsys)
    line = one_error_line(err, after_logs=True)
    assert code == 2 and f"column '{column}' has type string" in line and "file-000.parquet" in line
    assert "unexpected" not in err
    code, _, err = run_cli(
        ["leakage", "minimal" if column == "timestamp" else "full", ds, "--no-progress"], capsys
    )
    assert code == 2 and f"column '{column}' has type string" in one_error_line(err, after_logs=True)
