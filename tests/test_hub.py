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
    from piperctl.training import data

    fake = FakeHub(tmp_path, monkeypatch, "someone/piper_two_cams")
    fake.publish("v3.0", synth_dataset, "c" * 40)  # lerobot's default revision
    ds = data.open_dataset(fake.repo_id, None, None, drop=["observation.images.wrist"])
    assert fake.asked[-1]["allow_patterns"] == ["meta/**", "data/**", "videos/observation.images.front/**"]
    assert [p for p in fake.cache.rglob("*") if "wrist" in p.name] == []
    assert "observation.images.wrist" not in ds.meta.features
    assert ds[0]["observation.images.front"].shape[0] == 3


class FakeHub:
    """The Hub, played by local folders: `snapshot_download` copies the files a call asks for into
    lerobot's snapshot cache, under the commit its revision resolves to (as huggingface_hub does)."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, repo_id: str) -> None:
        import huggingface_hub
        import lerobot.datasets.dataset_metadata as lerobot_metadata
        import lerobot.datasets.lerobot_dataset as lerobot_dataset
        import lerobot.utils.constants as lerobot_constants

        self.repo_id = repo_id
        self.refs: dict[str, str] = {}  # revision -> commit
        self.commits: dict[str, Path] = {}  # commit -> the folder that holds its files
        self.asked: list[dict] = []
        self.cache = tmp / "hub_cache"
        # lerobot's home and snapshot cache (computed when lerobot was imported), moved here.
        monkeypatch.setattr(lerobot_metadata, "HF_LEROBOT_HOME", tmp / "lerobot_home")
        for module in (lerobot_metadata, lerobot_dataset, lerobot_constants):
            monkeypatch.setattr(module, "HF_LEROBOT_HUB_CACHE", self.cache)
        for module in (lerobot_metadata, lerobot_dataset, huggingface_hub):
            monkeypatch.setattr(module, "snapshot_download", self.snapshot_download)
        for module in (lerobot_metadata, lerobot_dataset):
            monkeypatch.setattr(module, "get_safe_version", lambda repo, version, **kw: str(version))

    def publish(self, revision: str, folder: Path, commit: str) -> None:
        """Point `revision` at `commit`, whose files are `folder`'s."""
        self.refs[revision], self.commits[commit] = commit, folder

    def snapshot_download(self, repo_id: str, **kw: object) -> str:
        """Copy what `allow_patterns`/`ignore_patterns` select of the revision's commit; that snapshot's path."""
        import fnmatch
        import shutil

        assert repo_id == self.repo_id and kw["repo_type"] == "dataset" and kw.get("local_dir") is None
        self.asked.append(kw)
        commit = self.refs.get(str(kw["revision"]), str(kw["revision"]))
        folder = self.commits[commit]
        allow, ignore = kw.get("allow_patterns"), kw.get("ignore_patterns")
        allow = [allow] if isinstance(allow, str) else allow
        ignore = [ignore] if isinstance(ignore, str) else ignore or []

        def wanted(rel: str) -> bool:
            def match(p: str) -> bool:
                return fnmatch.fnmatch(rel, p) or (p.endswith("/") and rel.startswith(p))

            return (allow is None or any(map(match, allow))) and not any(map(match, ignore))

        snapshot = Path(kw["cache_dir"]) / f"datasets--{repo_id.replace('/', '--')}" / "snapshots" / commit
        for f in folder.rglob("*"):
            rel = f.relative_to(folder).as_posix()
            if f.is_file() and wanted(rel) and not (snapshot / rel).exists():
                (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, snapshot / rel)
        return str(snapshot)


@pytest.mark.train
def test_a_hub_dataset_at_a_revision_trains_records_its_commit_and_resumes(
    tiny_ds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--dataset owner/name@v1`: fetched at v1, its commit recorded; a resume reads that commit after v1 moves."""
    import json

    from piperctl import train
    from piperctl.checkpoints import format as ckpt
    from piperctl.datasets.synth import SynthConfig, synthesize
    from piperctl.training import resume
    from tests.conftest import TINY_ACT, losses, run_cli

    hub_ = FakeHub(tmp_path, monkeypatch, "someone/piper_day")
    hub_.publish("v1", tiny_ds, "a" * 40)
    run = tmp_path / "run"
    opts = {"steps": 2, "batch_size": 4, "save_every": 1, "num_workers": 0, "val_episodes": "1", "seed": 5}
    train(run, dataset=["someone/piper_day@v1"], policy_options=dict(TINY_ACT), **opts)
    reference = tmp_path / "reference"  # the same run on the local folder, uninterrupted to step 4
    train(reference, dataset=[str(tiny_ds)], policy_options=dict(TINY_ACT), **{**opts, "steps": 4})
    assert {str(kw["revision"]) for kw in hub_.asked} == {"v1"}
    (record,) = json.loads((run / "checkpoint-2" / ckpt.TRAINING_STATE).read_text())["datasets"]
    assert record["id"] == "someone/piper_day" and record["revision"] == "v1"
    assert record["commit"] == "a" * 40
    code, out, err = run_cli(["checkpoints", "list", run], capsys)
    assert code == 0 and "dataset someone/piper_day@v1:" in out and "Hub commit aaaaaaaaaaaa" in out, (
        out + err
    )
    assert resume(run, steps=3).step == 3  # the data now in the cache: the same dataset

    # v1 moves to another commit: a resume still reads the commit it trained on, bit-exactly.
    other = synthesize(
        tmp_path / "other", SynthConfig(episodes=5, frames=(20, 26), cameras=[], env_state=True)
    )
    hub_.publish("v1", other, "b" * 40)
    assert resume(run, steps=4).step == 4
    assert str(hub_.asked[-1]["revision"]) == "a" * 40
    assert (
        json.loads((run / "checkpoint-4" / ckpt.TRAINING_STATE).read_text())["datasets"][0]["commit"]
        == "a" * 40
    )
    assert losses(run) == losses(reference)
    # eval RUN with no data named: the Hub dataset at the commit it trained on, its held-out episode.
    code, out, err = run_cli(["eval", run, "--json"], capsys)
    assert code == 0 and f"someone/piper_day@{'a' * 40}" in err, err
    assert json.loads(out)["episodes"]["ids"] == [4]
    # --allow-dataset-change takes v1 as it is now, says the order is no longer exact, and records it.
    capsys.readouterr()
    assert resume(run, steps=5, allow_dataset_change=True).step == 5
    assert "data order is not exact" in capsys.readouterr().err
    assert (
        json.loads((run / "checkpoint-5" / ckpt.TRAINING_STATE).read_text())["datasets"][0]["commit"]
        == "b" * 40
    )


@pytest.mark.train
def test_a_run_on_a_hub_dataset_id_resumes(
    tiny_ds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--dataset-id owner/name` (no folder): its checkpoint records no root, and resumes."""
    from piperctl import train
    from piperctl.training import resume
    from tests.conftest import TINY_ACT

    FakeHub(tmp_path, monkeypatch, "someone/piper_day").publish("v3.0", tiny_ds, "d" * 40)
    run = tmp_path / "run"
    opts = {"batch_size": 4, "save_every": 1, "num_workers": 0, "val_episodes": "1"}
    train(run, dataset_id="someone/piper_day", policy_options=dict(TINY_ACT), steps=1, **opts)
    assert resume(run, steps=2).step == 2


def test_only_a_hub_snapshot_folder_names_a_commit(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from piperctl.training.data import hub_commit

    sha = "0123456789abcdef0123456789abcdef01234567"
    cache = SimpleNamespace(root=tmp_path / "datasets--me--piper" / "snapshots" / sha)
    assert hub_commit(cache) == sha
    # A folder of the user's that happens to sit in a "snapshots" folder is a local dataset.
    assert hub_commit(SimpleNamespace(root=tmp_path / "robot" / "snapshots" / sha)) is None
    assert hub_commit(SimpleNamespace(root=tmp_path / "datasets--me--piper" / "snapshots" / "day1")) is None
