"""Normalization like lerobot-train: ImageNet statistics for cameras (opt out with --no-imagenet-stats),
the training episodes' own statistics for state and action, written into the saved processors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_ACT, TRAIN_BASE

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CAMERA = "observation.images.front"


def _normalizer(folder: Path) -> dict[str, torch.Tensor]:
    (path,) = folder.glob("*preprocessor*normalizer*.safetensors")
    return load_file(str(path))


def _processors_built(ds: Path, out: Path, **options: object) -> dict[str, torch.Tensor]:
    """The normalizer statistics a fresh run on `ds` would save, without training it."""
    from piperctl.training import build
    from piperctl.training.config import TrainConfig

    opts = {**TRAIN_BASE, "dataset_root": str(ds), "policy_options": dict(TINY_ACT), **options}
    cfg = TrainConfig.from_options(out / "run", "local/tiny_cam", opts)
    parts = build.fresh_model(cfg, "cpu", build.open_split(cfg))
    parts.preprocessor.save_pretrained(out / "processors")
    return _normalizer(out / "processors")


def test_cameras_use_imagenet_stats_by_default_and_the_datasets_own_on_request(
    cam_run: Path, tiny_cam_ds: Path, tmp_path: Path
) -> None:
    saved = _normalizer(cam_run / "checkpoint-4")
    for stat, want in IMAGENET.items():
        np.testing.assert_allclose(saved[f"{CAMERA}.{stat}"].flatten().numpy(), want, rtol=1e-6)
    config = json.loads((cam_run / "checkpoint-4" / "training_state.json").read_text())["config"]
    assert config["imagenet_stats"] is True

    own = _processors_built(tiny_cam_ds, tmp_path, imagenet_stats=False)
    assert not np.allclose(own[f"{CAMERA}.std"].flatten().numpy(), IMAGENET["std"], rtol=1e-2)
    assert float(own[f"{CAMERA}.std"].max()) < 1.0 and float(own[f"{CAMERA}.mean"].min()) > 0.0
    # State and action: the training episodes' statistics either way (never ImageNet's).
    for key in ("observation.state.mean", "observation.state.std", "action.mean", "action.std"):
        assert torch.equal(saved[key], own[key]), key
