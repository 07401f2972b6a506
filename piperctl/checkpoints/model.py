"""The model half of a checkpoint: save and load a policy's config, weights and processors.

Used by the trainer (save, resume), by `checkpoints verify` (deep load) and by exports alike, so
every folder piperctl writes is read back by one piece of code. lerobot is imported lazily.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model as load_safetensors_into
from safetensors.torch import save_model

from piperctl.checkpoints import adapters
from piperctl.checkpoints.format import (
    ADAPTER_WEIGHTS,
    BASE_REF,
    CHECKPOINT_LAYOUT,
    LEROBOT_WEIGHTS,
    POLICY_CONFIG,
    POLICY_WEIGHTS,
    ModelLayout,
    model_layout,
)
from piperctl.errors import PiperctlError
from piperctl.fs import first_line


def save_model_files(
    folder: Path, policy, preprocessor, postprocessor, layout: ModelLayout = CHECKPOINT_LAYOUT
) -> None:
    """Write weights, policy config and processors into `folder` under `layout`'s file names."""
    if layout.weights == LEROBOT_WEIGHTS:
        policy.save_pretrained(folder)  # config.json and model.safetensors, as lerobot-train writes them
    else:
        # `save_pretrained` always names the weights model.safetensors; a checkpoint keeps its own name
        # (policy.safetensors, docs/checkpoint-format.md), written by the same safetensors call.
        policy.config.save_pretrained(folder)
        save_model(policy, str(folder / layout.weights))
    preprocessor.save_pretrained(folder, config_filename=layout.preprocessor)
    postprocessor.save_pretrained(folder, config_filename=layout.postprocessor)


def load_policy_config(folder: Path, device: str | None = None):
    """The lerobot policy config stored in a checkpoint's config.json."""
    import lerobot.policies  # noqa: F401
    from lerobot.configs.policies import PreTrainedConfig

    path = folder / POLICY_CONFIG
    if not path.is_file():
        raise PiperctlError(
            f"{path} is missing", hint="the checkpoint is incomplete; run 'piperctl checkpoints verify'"
        )
    try:
        cfg = _parse_policy_config(PreTrainedConfig, path)
    except Exception as e:  # noqa: BLE001 - draccus raises many types for a bad config
        raise PiperctlError(f"{path} is not a valid lerobot policy config ({e})") from e
    if device is not None:
        cfg.device = device
    return cfg


def _parse_policy_config(base_cls, path: Path):
    """Parse config.json the way lerobot 0.6.1's `PreTrainedConfig.from_pretrained` does."""
    import draccus

    # lerobot's own loader leaves its re-serialized copy in /tmp on every call
    # (lerobot/configs/policies.py: NamedTemporaryFile(delete=False)); same steps, cleaned up.
    config = json.loads(path.read_text())
    policy_type = config.pop("type", None)
    if policy_type is None:
        raise ValueError("missing 'type' field")
    try:
        config_cls = base_cls.get_choice_class(policy_type)
    except KeyError:
        raise ValueError(f"policy type {policy_type!r} is not one lerobot knows") from None
    with tempfile.TemporaryDirectory(prefix="piperctl-config-") as tmp:
        stripped = Path(tmp) / "config.json"
        stripped.write_text(json.dumps(config))
        with draccus.config_type("json"):
            return draccus.parse(config_cls, str(stripped), args=[])


def policy_from_config(cfg):
    """An untrained policy of the architecture `cfg` describes, built without downloading anything."""
    from lerobot.policies.factory import get_policy_class

    build_cfg = cfg
    if getattr(cfg, "pretrained_backbone_weights", None):
        # The checkpoint's weights replace the backbone anyway: don't download ImageNet weights for it.
        build_cfg = dataclasses.replace(cfg, pretrained_backbone_weights=None)
    policy = get_policy_class(cfg.type)(config=build_cfg)
    policy.config = cfg
    return policy


def load_weights(policy: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into `policy`, refusing missing, unexpected or mis-shaped tensors."""
    if not path.is_file():
        raise PiperctlError(
            f"{path} is missing", hint="the checkpoint is incomplete; run 'piperctl checkpoints verify'"
        )
    try:
        missing, unexpected = load_safetensors_into(policy, str(path), strict=False)
    except RuntimeError as e:
        raise PiperctlError(
            f"weights in {path} do not fit this policy ({first_line(e)})", code="weights-mismatch"
        ) from e
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        raise PiperctlError(
            f"{path} is not a readable safetensors file ({e})", code="safetensors-invalid"
        ) from e
    if missing or unexpected:
        raise PiperctlError(
            code="weights-mismatch",
            message=f"weights in {path} do not match the policy: {len(missing)} missing, {len(unexpected)} unexpected tensors"
            + (f" (e.g. {(list(missing) + list(unexpected))[0]})" if missing or unexpected else ""),
        )


def feature_shapes(policy_cfg) -> dict[str, list[int]]:
    """Input and output feature shapes of a policy config, for compatibility checks."""
    feats = {**(policy_cfg.input_features or {}), **(policy_cfg.output_features or {})}
    return {k: list(v.shape) for k, v in sorted(feats.items())}


def dataset_feature_shapes(ds_meta: Any) -> dict[str, list[int]]:
    """Shapes of the features a policy would see in this dataset (same keys as `feature_shapes`)."""
    from lerobot.utils.feature_utils import dataset_to_policy_features

    return {k: list(v.shape) for k, v in sorted(dataset_to_policy_features(ds_meta.features).items())}


def load_processors(
    policy_cfg: Any, folder: Path, device: str | None = None, layout: ModelLayout = CHECKPOINT_LAYOUT
) -> tuple[Any, Any]:
    """The pre/post-processor pipelines saved in a folder, refused if a config is unsafe to hand to lerobot."""
    from lerobot.policies.factory import make_pre_post_processors

    from piperctl.checkpoints.untrusted import processor_config_problems

    # A checkpoint is untrusted: lerobot would import any class and open any state file its configs name.
    problems = [
        e
        for name in (layout.preprocessor, layout.postprocessor)
        for e in processor_config_problems(folder, name)
    ]
    if problems:
        raise problems[0]
    overrides = {"device_processor": {"device": device or policy_cfg.device}}
    return make_pre_post_processors(
        policy_cfg=policy_cfg,
        pretrained_path=str(folder),
        preprocessor_config_filename=layout.preprocessor,
        postprocessor_config_filename=layout.postprocessor,
        preprocessor_overrides=overrides,
    )


@dataclasses.dataclass
class LoadedModel:
    """A policy ready for inference (eval mode, on its device) with the processors it was trained with."""

    folder: Path
    layout: ModelLayout
    config: Any
    policy: Any
    preprocessor: Any
    postprocessor: Any


def load_model(folder: Path, device: str = "cpu", layout: ModelLayout | None = None) -> LoadedModel:
    """Load a checkpoint, a run's final model or an export for inference, with piperctl's safe loaders."""
    layout = layout or model_layout(folder)
    cfg = load_policy_config(folder, device)
    if (folder / BASE_REF).is_file():
        # Only what fine-tuning trained is here: rebuilt over its (checked) base.
        load = load_peft_model if layout.weights == ADAPTER_WEIGHTS else load_finetuned
        policy = load(folder, cfg, device)
    else:
        policy = policy_from_config(cfg)
        load_weights(policy, folder / layout.weights)
    policy.to(device)
    policy.eval()
    preprocessor, postprocessor = load_processors(cfg, folder, device, layout)
    return LoadedModel(folder, layout, cfg, policy, preprocessor, postprocessor)


# ---------------------------------------------------------------------------------------------
# fine-tuned models (checkpoints/adapters.py): base architecture + adapter + trainable tensors


def build_finetuned(cfg: Any, ref: adapters.BaseRef, base_weights: Path | None) -> Any:
    """The model a fine-tuning run trains: the base architecture (`base_weights` loaded when given), its adapter.

    The trainable tensors are loaded afterwards (`load_trainable`). Without base weights (verify's
    structural check) the base parameters keep their initial values.
    """
    base_cfg = dataclasses.replace(cfg, use_peft=False, pretrained_path=None)
    policy = policy_from_config(base_cfg)
    policy.config = cfg
    if base_weights is not None:
        load_weights(policy, base_weights)
    if ref.peft is not None:
        policy = adapters.wrap_peft(policy, adapters.peft_config_from(ref.peft), ref)
    return policy


def load_finetuned(folder: Path, cfg: Any, device: str) -> Any:
    """A fine-tuning checkpoint's model, rebuilt over its (checked) base, on `device`."""
    ref = adapters.read_base_ref(folder)
    if ref is None:
        raise PiperctlError(f"{folder / BASE_REF} is missing", code="missing-file")
    base = adapters.require_base(ref)
    policy = build_finetuned(cfg, ref, base / LEROBOT_WEIGHTS)
    adapters.load_trainable(policy, folder / POLICY_WEIGHTS)
    return policy.to(device)


def load_peft_model(folder: Path, cfg: Any, device: str) -> Any:
    """A PEFT model folder in lerobot's layout (adapter files + base_model.json), rebuilt over its checked base."""
    ref = adapters.read_base_ref(folder)
    if ref is None or ref.peft is None:
        raise PiperctlError(
            f"{folder} holds a PEFT adapter without piperctl's {BASE_REF}",
            hint="load it with lerobot's make_policy (it reads the base from adapter_config.json)",
        )
    base = adapters.require_base(ref)
    policy = build_finetuned(cfg, ref, base / LEROBOT_WEIGHTS)
    adapters.load_adapter(policy, folder / ADAPTER_WEIGHTS)
    return policy.to(device)
