"""Local path or Hub id, decided once; lerobot's home found as lerobot finds it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from piperctl import hub
from piperctl.datasets.convert import resolve_source
from piperctl.errors import PiperctlError
from tests.conftest import python_exe

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "text", ["ISdept/piper_arm", "lerobot/act_aloha_sim_transfer_cube_human", "a-b/c.d_e", "0/1"]
)
def test_repo_ids(text: str) -> None:
    assert hub.is_repo_id(text)


@pytest.mark.parametrize(
    "text",
    [
        "piper_arm",  # no owner: a Hub id always has one here
        "a/b/c",
        "./owner/name",
        "/owner/name",
        "~/name",
        "my data/set",
        "owner/[set]",
        "owner/na me",
        "ünï/code",
        "owner/name.git",
        "owner/na--me",
        "owner/",
        "",
    ],
)
def test_paths_are_not_repo_ids(text: str) -> None:
    assert not hub.is_repo_id(text)


def test_an_existing_folder_is_local_even_when_it_reads_as_an_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    (tmp_path / "[odd] data" / "my set").mkdir(parents=True)
    assert hub.local_or_repo_id("owner/name") == Path("owner/name")
    assert hub.local_or_repo_id("./owner/name") == Path("owner/name")
    assert hub.local_or_repo_id("[odd] data/my set") == Path("[odd] data/my set")
    assert hub.local_or_repo_id("other/name") == "other/name"
    assert hub.local_or_repo_id("./other/name") == Path("other/name")  # a path that does not exist
    assert hub.local_or_repo_id("[odd] data/missing") == Path("[odd] data/missing")
    # A mistyped folder beside an existing one is a missing path, never a Hub id to look up.
    assert hub.local_or_repo_id("owner/nmae") == Path("owner/nmae")


def test_convert_names_a_missing_path_instead_of_asking_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PiperctlError, match="no such dataset folder"):
        resolve_source("[my] data/v21 set")
    (tmp_path / "fx").mkdir()
    with pytest.raises(PiperctlError, match="fx/nonexistent: no such dataset folder"):
        resolve_source("fx/nonexistent")  # once "the Hub is offline": a typo in a local path
    with pytest.raises(PiperctlError, match="offline"):
        resolve_source("nobody-xyz/not-cached")


def test_offline_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline()


def test_lerobot_home_honours_xdg_cache_home_like_lerobot(tmp_path: Path) -> None:
    """Without HF_HOME/HF_LEROBOT_HOME, lerobot keeps data under $XDG_CACHE_HOME/huggingface/lerobot."""
    xdg = tmp_path / "x dg[1]"
    dataset = xdg / "huggingface" / "lerobot" / "owner" / "name"
    (dataset / "meta").mkdir(parents=True)
    (dataset / "meta" / "info.json").write_text("{}")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HF_LEROBOT_HOME")}
    env.update(XDG_CACHE_HOME=str(xdg), PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
    code = (
        "from piperctl import hub; from piperctl.leakage.source import resolve_dataset\n"
        "from lerobot.utils.constants import HF_LEROBOT_HOME\n"
        "print(hub.lerobot_home()); print(HF_LEROBOT_HOME); print(resolve_dataset('owner/name'))\n"
    )
    res = subprocess.run(
        [python_exe(), "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    ours, lerobots, resolved = res.stdout.splitlines()[-3:]
    assert ours == lerobots == str(xdg / "huggingface" / "lerobot")
    assert resolved == str(dataset)


def test_hf_lerobot_home_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "lr"))
    assert hub.lerobot_home() == tmp_path / "lr"


def test_a_hub_dataset_never_downloads_the_cameras_left_out(
    synth_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--cameras front` on a Hub id: the wrist videos are never fetched (lerobot would fetch every camera)."""
    import fnmatch
    import shutil

    import huggingface_hub
    import lerobot.datasets.dataset_metadata as lerobot_metadata

    from piperctl.training import data

    repo_id = "someone/piper_two_cams"
    home = tmp_path / "lerobot_home"  # lerobot's home (computed when lerobot was imported), moved here
    monkeypatch.setattr(lerobot_metadata, "HF_LEROBOT_HOME", home)
    shutil.copytree(synth_dataset / "meta", home / repo_id / "meta")  # the metadata as lerobot caches it
    asked: list[list[str]] = []

    def fake_snapshot_download(repo: str, *, allow_patterns: list[str], **kw: object) -> str:
        """The Hub, played by the synthesized folder: the files that match `allow_patterns`, nothing else."""
        assert repo == repo_id and kw["repo_type"] == "dataset"
        asked.append(allow_patterns)
        snapshot = tmp_path / "snapshot"
        for f in synth_dataset.rglob("*"):
            rel = f.relative_to(synth_dataset).as_posix()
            if f.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, snapshot / rel)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    ds = data.open_dataset(repo_id, None, None, drop=["observation.images.wrist"])
    assert asked == [["meta/**", "data/**", "videos/observation.images.front/**"]]
    assert not (tmp_path / "snapshot" / "videos" / "observation.images.wrist").exists()
    assert "observation.images.wrist" not in ds.meta.features
    assert ds[0]["observation.images.front"].shape[0] == 3
