"""Policies for training: lerobot configs from piperctl options, fresh policies and processors for a dataset."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from piperctl.errors import PiperctlError


def parse_policy_options(items: list[str] | None, config_file: str | Path | None = None) -> dict[str, Any]:
    """Policy-config overrides from a TOML/JSON file and `key=value` items (values parsed as JSON)."""
    options: dict[str, Any] = {}
    if config_file:
        from piperctl.training.config import read_fields_file

        data = read_fields_file(config_file, "policy config file", "policy")
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


def _decode(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """Turn JSON-ish option values into the field types of config class `cls` (draccus, as lerobot's CLI does)."""
    import draccus

    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in options.items():
        try:
            out[key] = draccus.decode(hints[key], value) if value is not None else None
        except Exception as e:  # noqa: BLE001 - draccus raises its own error types for a bad value
            raise PiperctlError(
                f"policy option {key}={json.dumps(value)}: expected {describe_type(hints[key])}",
                hint=f"e.g. --policy-opt {key}={_example(hints[key])}",
            ) from e
    return out


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_EXAMPLES = {int: "10", float: "0.5", bool: "true", str: "name"}


def describe_type(hint: Any) -> str:
    """A config field's type in the user's words: 'an integer', 'a list of integers', 'a number or null'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _TYPE_WORDS:
        return _TYPE_WORDS[hint]
    if origin in (typing.Union, types.UnionType):
        words = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if origin in (list, tuple) or hint in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return "a list" + (f" of {_plural(describe_type(inner[0]))}" if len(set(inner)) == 1 else "")
    if origin is dict or hint is dict:
        return "a JSON object"
    return f"a {getattr(hint, '__name__', str(hint))}"


def _plural(words: str) -> str:
    return {"an integer": "integers", "a number": "numbers", "a string": "strings"}.get(words, words)


def _example(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _EXAMPLES:
        return _EXAMPLES[hint]
    if origin in (typing.Union, types.UnionType):
        return next((_example(a) for a in args if a is not type(None)), "null")
    if origin in (list, tuple):
        inner = next((a for a in args if a is not Ellipsis), int)
        return f"[{_example(inner)},{_example(inner)}]"
    return "null"


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
    kwargs = _decode(cls, options)
    kwargs["device"] = device
    kwargs.setdefault("push_to_hub", False)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise PiperctlError(f"invalid {policy_type} policy options: {e}") from e


def policy_class(policy_type: str) -> type:
    """The lerobot config class of `policy_type` (one line for an unknown type)."""
    from lerobot.configs.policies import PreTrainedConfig

    from piperctl.quiet import quiet_third_party

    quiet_third_party()
    import lerobot.policies  # noqa: F401  (registers every policy type)

    known = sorted(PreTrainedConfig.get_known_choices())
    if policy_type not in known:
        raise PiperctlError(f"unknown policy type {policy_type!r}", hint=f"choose one of: {', '.join(known)}")
    return PreTrainedConfig.get_choice_class(policy_type)


# lerobot policy types built on transformers (lerobot's smolvla, pi, groot, xvla, wallx, ... extras):
# piperctl's `vla` extra brings what they need.
VLA_TYPES = frozenset(
    {"smolvla", "pi0", "pi05", "pi0_fast", "groot", "xvla", "wall_x", "eo1", "evo1", "molmoact2", "vla_jepa"}
)


def require_policy_packages(policy_type: str) -> None:
    """Refuse in one line a policy type whose optional packages are missing, naming piperctl's extra."""
    if policy_type in VLA_TYPES:
        from piperctl.errors import require_extra

        require_extra("transformers", f"the {policy_type} policy")


# The Hub models a VLA's processors load by a fixed name (lerobot's processor_pi0/pi05.py).
_PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"


def hub_models(policy_cfg: Any) -> str | None:
    """The Hub ids a VLA loads besides its weights (its VLM or tokenizers), for error messages."""
    names = [
        getattr(policy_cfg, f, None)
        for f in ("vlm_model_name", "text_tokenizer_name", "action_tokenizer_name")
        if isinstance(getattr(policy_cfg, f, None), str)
    ]
    if not names and policy_cfg.type in ("pi0", "pi05"):
        names = [_PALIGEMMA_TOKENIZER]
    return " or ".join(names) or None


def hub_model_error(what: str, e: Exception, model_id: str | None) -> PiperctlError:
    """A model, tokenizer or processor the policy loads from the Hub is missing: one line naming it."""
    from piperctl import hub
    from piperctl.fs import first_line

    name = model_id or "a model"
    if hub.offline():
        return PiperctlError(
            f"{what} needs {name} from the Hugging Face Hub, which is not in the local cache and HF_HUB_OFFLINE is set",
            hint="unset HF_HUB_OFFLINE once so that it is downloaded, or point the option at a local copy "
            "(e.g. --policy-opt vlm_model_name=FOLDER)",
        )
    return PiperctlError(f"{what} cannot load {name} from the Hugging Face Hub ({first_line(e)})")


def build_policy(policy_cfg, ds_meta):
    """Instantiate a fresh policy whose input/output features come from the dataset."""
    from lerobot.policies.factory import make_policy

    try:
        return make_policy(cfg=policy_cfg, ds_meta=ds_meta)
    except ImportError as e:
        raise PiperctlError(
            f"the {policy_cfg.type} policy needs a package that is not installed ({e})",
            hint="pip install 'piperctl[vla]'",
        ) from e
    except (ValueError, NotImplementedError) as e:
        raise PiperctlError(f"cannot build a {policy_cfg.type} policy for this dataset: {e}") from e
    except OSError as e:
        if policy_cfg.type in VLA_TYPES:
            raise hub_model_error(f"the {policy_cfg.type} policy", e, hub_models(policy_cfg)) from e
        # Typically torchvision trying to download ImageNet backbone weights while offline.
        raise PiperctlError(
            f"cannot build the {policy_cfg.type} policy: {e}",
            hint="offline? pass --policy-opt pretrained_backbone_weights=null to start the backbone from scratch",
        ) from e


def new_processors(policy_cfg: Any, stats: dict) -> tuple[Any, Any]:
    """Fresh pre/post-processor pipelines normalizing with the training episodes' `stats`."""
    from lerobot.policies.factory import make_pre_post_processors

    try:
        return make_pre_post_processors(policy_cfg=policy_cfg, dataset_stats=stats)
    except OSError as e:  # a tokenizer from the Hub (smolvla: vlm_model_name; pi0/pi05: PaliGemma's)
        raise hub_model_error(f"the {policy_cfg.type} policy's tokenizer", e, hub_models(policy_cfg)) from e
