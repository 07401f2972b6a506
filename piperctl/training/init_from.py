"""`--init-from`: start a new run from the weights of a piperctl model or of a lerobot `pretrained_model`.

As with `lerobot-train --policy.path`, the architecture comes from the pretrained config and
`--policy-opt` overrides single fields; the weights are then loaded strictly (every tensor, same
shapes). The dataset must offer every feature the pretrained policy reads, with the same shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from piperctl.errors import PiperctlError

# Fields that describe where a config was used, not the architecture: never carried over.
_NOT_CARRIED = {
    "device", "pretrained_path", "push_to_hub", "repo_id", "private", "tags", "license", "use_peft",
}  # fmt: skip


def init_policy_config(
    init: Any, policy_type: str, device: str, options: dict[str, Any], ds_meta: Any
) -> Any:
    """The policy config of a run initialised from `init` (a `ModelSource`), with `options` applied."""
    from piperctl.checkpoints.model import load_policy_config
    from piperctl.checkpoints.sources import check_features_fit
    from piperctl.training.policy import _decode

    if init.layout.name == "peft":
        raise PiperctlError(
            f"--init-from {init.description} is a PEFT adapter, not a whole model",
            hint="merge it first ('piperctl export MODEL OUT --merge') and start from OUT",
        )
    base = load_policy_config(init.folder, device)
    if base.type != policy_type:
        raise PiperctlError(
            f"--init-from {init.description} holds a {base.type!r} policy, not {policy_type!r}",
            hint=f"pass --policy {base.type}",
        )
    padded = _padded_features(base, ds_meta, f"--init-from {init.description}")
    if padded is None:
        check_features_fit(base, ds_meta, f"--init-from {init.description}")
    cls = type(base)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise PiperctlError(
            f"{policy_type} policy has no option {', '.join(unknown)}",
            hint=f"valid options: {', '.join(sorted(n for n in fields if not n.startswith('_')))}",
        )
    carried = {
        f.name: getattr(base, f.name)
        for f in dataclasses.fields(cls)
        if f.init and f.name not in _NOT_CARRIED and f.name not in options
    }
    if padded is not None:
        # lerobot's rule for a pretrained VLA: the base's inputs, read from the dataset at its sizes
        # (state padded, images resized by the policy); the actions are the dataset's.
        carried["input_features"], carried["output_features"] = padded, None
    if "pretrained_backbone_weights" in fields and "pretrained_backbone_weights" not in options:
        # The pretrained weights replace the backbone anyway: never download ImageNet weights for it.
        carried["pretrained_backbone_weights"] = None
    try:
        return cls(**{**carried, **_decode(cls, options), "device": device, "push_to_hub": False})
    except (TypeError, ValueError) as e:
        raise PiperctlError(f"invalid {policy_type} policy options on top of --init-from: {e}") from e


def _padded_features(base: Any, ds_meta: Any, what: str) -> dict[str, Any] | None:
    """The input features of a VLA base that pads state and action (smolvla, pi0, pi05, ...) for this dataset.

    None for other policies (their features must fit exactly). The base's inputs must all be in the
    dataset (lerobot-train keeps them too; its --rename-map renames the dataset's keys to them); state
    and action may have any size up to the base's `max_state_dim` / `max_action_dim`.
    """
    if not hasattr(base, "max_state_dim") or not hasattr(base, "max_action_dim"):
        return None
    from lerobot.utils.feature_utils import dataset_to_policy_features

    have = dataset_to_policy_features(ds_meta.features)
    missing = [k for k in base.input_features or {} if k not in have]
    if missing:
        raise PiperctlError(
            f"{what} reads {', '.join(missing)}, which the dataset does not have (it has {', '.join(sorted(have))})",
            hint="give the dataset's cameras the base's names (what lerobot-train's --rename-map does), "
            "or start from a base trained with your names",
        )
    for key, limit, name in (
        ("observation.state", base.max_state_dim, "max_state_dim"),
        ("action", base.max_action_dim, "max_action_dim"),
    ):
        size = have[key].shape[0] if key in have else 0
        if size > limit:
            raise PiperctlError(
                f"the dataset's {key} has {size} values, more than {what}'s {name} ({limit}), "
                "the size lerobot pads it to",
                hint=f"use a base with {name} >= {size}",
            )
    return {k: have[k] for k in base.input_features or {}}
