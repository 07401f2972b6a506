"""Fine-tuning a pretrained policy: `--peft` adapters, `--freeze` patterns, `--gradient-checkpointing`.

As `lerobot-train --peft.*` does, `--peft lora --peft-opt KEY=VALUE` (lerobot's `PeftConfig` fields)
builds the adapter config from the policy's own defaults (`_get_default_peft_targets`) and wraps the
policy with lerobot's `wrap_with_peft`; PEFT needs a pretrained base (`--init-from`). The run then
trains, and its checkpoints hold, only the adapter (and whatever `--freeze` leaves trainable), with a
reference to the base (checkpoints/adapters.py).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from typing import TYPE_CHECKING, Any

from piperctl.checkpoints import format as fmt
from piperctl.checkpoints.adapters import BaseRef, describe_base, peft_config_dict, wrap_peft
from piperctl.errors import PiperctlError, require_extra

if TYPE_CHECKING:
    from piperctl.checkpoints.sources import ModelSource
    from piperctl.training.config import TrainConfig

# lerobot's PeftConfig (lerobot.configs.default): the fields --peft-opt may set.
PEFT_FIELDS = ("r", "lora_alpha", "target_modules", "full_training_modules", "init_type", "method_type")
PEFT_PREFIX = "base_model.model."  # PEFT's prefix of the wrapped policy's parameter names


def parse_peft_options(items: list[str] | None) -> dict[str, Any]:
    """`--peft-opt KEY=VALUE` items (values parsed as JSON, else taken as strings), lerobot's PeftConfig fields only."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PiperctlError(f"--peft-opt {item!r} is not KEY=VALUE", hint="e.g. --peft-opt r=8")
        if key not in PEFT_FIELDS:
            raise PiperctlError(
                f"--peft-opt {key} is not a PEFT option", hint=f"valid: {', '.join(PEFT_FIELDS)}"
            )
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw  # a regular expression of target modules, a method name
    return options


def check_options(cfg: TrainConfig) -> None:
    """Refuse fine-tuning options that cannot work, in one line each (before anything is built)."""
    if cfg.peft_options and cfg.peft is None:
        raise PiperctlError("--peft-opt needs --peft", hint="e.g. --peft lora --peft-opt r=8")
    if (cfg.peft or cfg.freeze) and not cfg.init_from:
        what = "--peft" if cfg.peft else "--freeze"
        raise PiperctlError(
            f"{what} fine-tunes a pretrained policy: it needs --init-from (lerobot refuses PEFT from scratch too)",
            hint="pass --init-from with a pretrained model folder or Hub id",
        )
    if cfg.peft is not None:
        require_extra("peft", "--peft")


def policy_options(cfg: TrainConfig, policy_cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """`options` plus `gradient_checkpointing` when asked for and the policy supports it (one line when not)."""
    if not cfg.gradient_checkpointing:
        return options
    if "gradient_checkpointing" not in {f.name for f in dataclasses.fields(policy_cls)}:
        raise PiperctlError(
            f"the {cfg.policy} policy does not support gradient checkpointing",
            hint="drop --gradient-checkpointing (pi0, pi05, pi0_fast, diffusion and others support it)",
        )
    return {**options, "gradient_checkpointing": True}


def base_location(cfg: TrainConfig, init: ModelSource) -> tuple[str, str | None]:
    """Where the base lives for lerobot: (local folder or Hub id, Hub commit or None)."""
    from piperctl import hub

    source = hub.local_or_repo_id(cfg.init_from or "")
    if isinstance(source, str):
        return source, init.folder.name  # a Hub snapshot's folder is named by its commit
    return str(init.folder.resolve()), None


def apply(cfg: TrainConfig, policy: Any, init: ModelSource) -> tuple[Any, BaseRef | None]:
    """Wrap (--peft) and freeze (--freeze) a policy freshly loaded from its base; the base reference to save."""
    if cfg.peft is None and not cfg.freeze:
        return policy, None
    location, revision = base_location(cfg, init)
    if init.layout is not fmt.LEROBOT_LAYOUT:
        raise PiperctlError(
            f"--init-from {init.description} is not a model in lerobot's layout, which a fine-tuning run needs as its base",
            hint="pass a run's pretrained_model folder, an export, or a Hub id "
            "('piperctl export CHECKPOINT OUT' makes one of a checkpoint)",
        )
    peft_dict = None
    if cfg.peft is not None:
        peft_config = _peft_config(cfg, policy)
        ref = BaseRef("hub" if revision else "local", location, revision)
        policy = wrap_peft(policy, peft_config, ref)
        peft_dict = peft_config_dict(policy.peft_config["default"])
    else:
        policy.config.pretrained_path = location
    if cfg.freeze:
        _freeze(policy, cfg.freeze)
    if not any(p.requires_grad for p in policy.parameters()):
        raise PiperctlError("nothing is left to train", hint="--freeze fewer parameters")
    return policy, describe_base(init.folder, location, revision, peft_dict)


def _peft_config(cfg: TrainConfig, policy: Any) -> Any:
    """lerobot's PEFT config of `policy` from its defaults and --peft-opt, refused in one line when it cannot be built."""
    overrides = {**cfg.peft_options, "method_type": cfg.peft}
    try:
        return policy._build_peft_config(overrides)
    except KeyError as e:
        raise PiperctlError(f"--peft {cfg.peft} is not a PEFT method", hint="e.g. --peft lora") from e
    except ValueError as e:
        if "target_modules" in str(e):
            raise PiperctlError(
                f"the {cfg.policy} policy has no default PEFT target modules: --peft needs target_modules",
                hint='name the layers to adapt, e.g. --peft-opt \'target_modules=["linear1","linear2"]\' '
                "or a regular expression",
            ) from e
        raise PiperctlError(f"--peft options are not valid ({e})") from e
    except TypeError as e:
        raise PiperctlError(f"--peft options are not valid for {cfg.peft} ({e})") from e


def _freeze(policy: Any, patterns: list[str]) -> None:
    """Freeze the parameters whose names (the policy's own, without PEFT's prefix) match a glob pattern."""
    names = {n: p for n, p in policy.named_parameters()}
    for pattern in patterns:
        hits = [p for n, p in names.items() if fnmatch.fnmatchcase(n.removeprefix(PEFT_PREFIX), pattern)]
        if not hits:
            example = next(iter(names)).removeprefix(PEFT_PREFIX)
            raise PiperctlError(
                f"--freeze {pattern!r} matches no parameter of the {policy.config.type} policy",
                hint=f"patterns are globs over parameter names, e.g. {example.rsplit('.', 1)[0]}.*",
            )
        for p in hits:
            p.requires_grad_(False)


def rebuild(cfg_policy: Any, ref: BaseRef, device: str) -> Any:
    """The model of a fine-tuning checkpoint's run before its trainable tensors are loaded: base weights, adapter."""
    from piperctl.checkpoints.adapters import require_base
    from piperctl.checkpoints.model import build_finetuned

    # The base files are hashed only when they are not the very files hashed when the run started
    # (a multi-GB base on every resume otherwise); `checkpoints verify` always hashes them.
    base = require_base(ref, mode="unchanged")
    return build_finetuned(cfg_policy, ref, base / fmt.LEROBOT_WEIGHTS).to(device)
