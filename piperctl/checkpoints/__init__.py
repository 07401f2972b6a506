"""Checkpoints: the folder contract, atomic publishing and integrity, the manager, verify and list.

The names of the contract (file names, `list_checkpoints`, `check_checkpoint`, ...) are re-exported
here; none of these modules imports torch or lerobot at import time.
"""

from __future__ import annotations

from piperctl.checkpoints.atomic import atomic_write_text, read_json, remove_stale_tmp, write_json
from piperctl.checkpoints.format import (
    LEROBOT_LAYOUT,
    LEROBOT_WEIGHTS,
    MANIFEST,
    METRICS_FILE,
    MODEL_FILES,
    OPTIMIZER_STATE,
    POLICY_CONFIG,
    POLICY_WEIGHTS,
    POSTPROCESSOR_CONFIG,
    PREPROCESSOR_CONFIG,
    PRETRAINED_DIR,
    REQUIRED_FILES,
    RNG_STATE_JSON,
    RNG_STATE_TENSORS,
    RUN_FILE,
    TMP_PREFIX,
    TRAINING_STATE,
    TrainingState,
    checkpoint_dir,
    list_checkpoints,
    step_of,
)
from piperctl.checkpoints.integrity import (
    QuickCheck,
    build_manifest,
    check_checkpoint,
    hash_pending,
    publish,
    scan_checkpoint,
)

__all__ = [
    "LEROBOT_LAYOUT",
    "LEROBOT_WEIGHTS",
    "MANIFEST",
    "METRICS_FILE",
    "MODEL_FILES",
    "OPTIMIZER_STATE",
    "POLICY_CONFIG",
    "POLICY_WEIGHTS",
    "POSTPROCESSOR_CONFIG",
    "PREPROCESSOR_CONFIG",
    "PRETRAINED_DIR",
    "REQUIRED_FILES",
    "RNG_STATE_JSON",
    "RNG_STATE_TENSORS",
    "RUN_FILE",
    "TMP_PREFIX",
    "TRAINING_STATE",
    "QuickCheck",
    "TrainingState",
    "atomic_write_text",
    "build_manifest",
    "check_checkpoint",
    "checkpoint_dir",
    "hash_pending",
    "list_checkpoints",
    "publish",
    "read_json",
    "remove_stale_tmp",
    "scan_checkpoint",
    "step_of",
    "write_json",
]
