"""Policies and processors: build them from lerobot's configs, save and load the model files of a checkpoint."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from piperctl.checkpoint import POLICY_CONFIG, POLICY_WEIGHTS, POSTPROCESSOR_CONFIG, PREPROCESSOR_CONFIG
from piperctl.errors import PiperctlError


def parse_policy_options(items: list[str] | None, config_file: str | Path | None = None) -> dict[str, Any]:
    """Policy-config overrides from a TOML/JSON file and `key=value` items (values parsed as JSON)."""
    options: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        except FileNotFoundError as e:
            raise PiperctlError(f"policy config file {path} does not exist") from e
        except (OSError, ValueError) as e:
            raise PiperctlError(
                f"policy config file {path} is not valid {path.suffix[1:].upper() or 'JSON'} ({e})"
            ) from e
        if not isinstance(data, dict):
            raise PiperctlError(f"policy config file {path} must hold a table/object of policy fields")
        options.update(data.get("policy", data))
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PiperctlError(
                f"--policy-opt {item!r} is not KEY=VALUE", hint="e.g. --policy-opt chunk_size=20"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options[key.strip()] = value
    return options


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    default = field.default if field.default is not dataclasses.MISSING else None
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def make_policy_config(policy_type: str, device: str, options: dict[str, Any]):
    """A lerobot policy config of `policy_type` with `options` applied and validated."""
    from lerobot.configs.policies import PreTrainedConfig

    from piperctl.quiet import quiet_third_party

    quiet_third_party()
    import lerobot.policies  # noqa: F401  (registers every policy type)

    known = sorted(PreTrainedConfig.get_known_choices())
    if policy_type not in known:
        raise PiperctlError(f"unknown policy type {policy_type!r}", hint=f"choose one of: {', '.join(known)}")
    cls = PreTrainedConfig.get_choice_class(policy_type)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise PiperctlError(
            f"{policy_type} policy has no option {', '.join(unknown)}",
            hint=f"valid options: {', '.join(sorted(n for n in fields if not n.startswith('_')))}",
        )
    kwargs = {k: _coerce(fields[k], v) for k, v in options.items()}
    kwargs["device"] = device
    kwargs.setdefault("push_to_hub", False)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise PiperctlError(f"invalid {policy_type} policy options: {e}") from e


def build_policy(policy_cfg, ds_meta):
    """Instantiate a fresh policy whose input/output features come from the dataset."""
    from lerobot.policies.factory import make_policy

    try:
        return make_policy(cfg=policy_cfg, ds_meta=ds_meta)
    except (ValueError, NotImplementedError) as e:
        raise PiperctlError(f"cannot build a {policy_cfg.type} policy for this dataset: {e}") from e
    except OSError as e:
        # Typically torchvision trying to download ImageNet backbone weights while offline.
        raise PiperctlError(
            f"cannot build the {policy_cfg.type} policy: {e}",
            hint="offline? pass --policy-opt pretrained_backbone_weights=null to start the backbone from scratch",
        ) from e


def make_processors(
    policy_cfg, stats: dict | None = None, pretrained: Path | None = None, device: str | None = None
):
    """Pre/post-processor pipelines: new ones from dataset stats, or the ones saved in a checkpoint."""
    from lerobot.policies.factory import make_pre_post_processors

    if pretrained is None:
        return make_pre_post_processors(policy_cfg=policy_cfg, dataset_stats=stats)
    from piperctl.untrusted import processor_config_problems

    # A checkpoint is untrusted: lerobot would import any class and open any state file its configs name.
    problems = [
        e
        for name in (PREPROCESSOR_CONFIG, POSTPROCESSOR_CONFIG)
        for e in processor_config_problems(Path(pretrained), name)
    ]
    if problems:
        raise problems[0]
    overrides = {"device_processor": {"device": device or policy_cfg.device}}
    return make_pre_post_processors(
        policy_cfg=policy_cfg,
        pretrained_path=str(pretrained),
        preprocessor_config_filename=PREPROCESSOR_CONFIG,
        postprocessor_config_filename=POSTPROCESSOR_CONFIG,
        preprocessor_overrides=overrides,
    )


def save_model_files(folder: Path, policy, preprocessor, postprocessor) -> None:
    """Write weights, policy config and processors into `folder` (the model half of a checkpoint)."""
    policy.config._save_pretrained(folder)
    save_model(policy, str(folder / POLICY_WEIGHTS))
    preprocessor.save_pretrained(folder, config_filename=PREPROCESSOR_CONFIG)
    postprocessor.save_pretrained(folder, config_filename=POSTPROCESSOR_CONFIG)


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
        cfg = PreTrainedConfig.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - draccus raises many types for a bad config
        raise PiperctlError(f"{path} is not a valid lerobot policy config ({e})") from e
    if device is not None:
        cfg.device = device
    return cfg


def load_policy(folder: Path, device: str = "cpu", policy_cfg=None):
    """Rebuild the policy from a checkpoint folder and load its weights strictly."""
    cfg = policy_cfg if policy_cfg is not None else load_policy_config(folder, device)
    policy = policy_from_config(cfg)
    load_weights(policy, folder / POLICY_WEIGHTS)
    policy.to(device)
    return policy


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
        missing, unexpected = load_model(policy, str(path), strict=False)
    except RuntimeError as e:
        raise PiperctlError(f"weights in {path} do not fit this policy ({str(e).splitlines()[0]})") from e
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        raise PiperctlError(f"{path} is not a readable safetensors file ({e})") from e
    if missing or unexpected:
        raise PiperctlError(
            f"weights in {path} do not match the policy: {len(missing)} missing, {len(unexpected)} unexpected tensors"
            + (f" (e.g. {(list(missing) + list(unexpected))[0]})" if missing or unexpected else "")
        )


def feature_shapes(policy_cfg) -> dict[str, list[int]]:
    """Input and output feature shapes of a policy config, for compatibility checks."""
    feats = {**(policy_cfg.input_features or {}), **(policy_cfg.output_features or {})}
    return {k: list(v.shape) for k, v in sorted(feats.items())}


def dataset_feature_shapes(ds_meta) -> dict[str, list[int]]:
    """Shapes of the features a policy would see in this dataset (same keys as `feature_shapes`)."""
    from lerobot.utils.feature_utils import dataset_to_policy_features

    return {k: list(v.shape) for k, v in sorted(dataset_to_policy_features(ds_meta.features).items())}
