"""Deep checks of one checkpoint: load every part the way resume and deployment would, and compare them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piperctl import checkpoint as ckpt
from piperctl.errors import PiperctlError
from piperctl.untrusted import (
    UntrustedFileError,
    load_torch_state,
    processor_config_problems,
    safetensors_header,
)


@dataclass
class PolicyCache:
    """Untrained policies by config.json bytes: a run's checkpoints share one architecture, built once."""

    policies: dict[bytes, Any] = field(default_factory=dict)

    def get(self, config_bytes: bytes, cfg: Any) -> Any:
        """The policy for this config, built on first use."""
        from piperctl.policy import policy_from_config

        if config_bytes not in self.policies:
            self.policies[config_bytes] = policy_from_config(cfg)
        return self.policies[config_bytes]


@dataclass
class _Ctx:
    folder: Path
    result: ckpt.QuickCheck
    ran: set[str]
    escaped: set[str | None]

    def add(self, check: str, code: str, message: str, file: str | None) -> None:
        # A damaged file tends to fail several loaders the same way: name it once per kind.
        if any(i.code == code and i.file == file for i in self.result.issues):
            return
        self.result.add(check, code, message, file)

    def present(self, name: str) -> bool:
        # A name already reported as leading out of the folder is never opened.
        return name not in self.escaped and (self.folder / name).is_file()


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def preload() -> None:
    """Import what the deep checks need (torch, lerobot's policies and processors): the slow part of a start."""
    from piperctl.quiet import quiet_third_party

    quiet_third_party()
    import lerobot.policies  # noqa: F401
    import lerobot.processor  # noqa: F401
    import torch  # noqa: F401

    import piperctl.policy  # noqa: F401
    import piperctl.training  # noqa: F401


def deep_check(result: ckpt.QuickCheck, kind: str, cache: PolicyCache) -> set[str]:
    """Run every deep check on `result.path`, adding problems to `result`; returns the checks that ran.

    `kind` is "checkpoint" (resumable: optimizer, training and RNG state too) or "model" (final model files).
    """
    from piperctl.quiet import quiet_third_party

    quiet_third_party()
    escaped = {i.file for i in result.issues if i.code == "path-escape"}
    ctx = _Ctx(result.path, result, set(), escaped)
    _check_safetensors(ctx)
    cfg, config_bytes = _load_config(ctx)
    policy = _check_policy(ctx, cfg, config_bytes, cache) if cfg is not None else None
    if kind == "checkpoint":
        _check_optimizer(ctx, policy)
        _check_training_state(ctx, cfg)
        _check_rng_state(ctx)
    _check_processors(ctx, cfg)
    return ctx.ran


def _check_safetensors(ctx: _Ctx) -> None:
    ctx.ran.add("safetensors")
    manifest = ctx.result.manifest
    names = (
        sorted(manifest["files"]) if manifest is not None else sorted(p.name for p in ctx.folder.iterdir())
    )
    for path in (ctx.folder / n for n in names if n.endswith(".safetensors") and ctx.present(n)):
        try:
            safetensors_header(path)
        except UntrustedFileError as e:
            ctx.add("safetensors", e.code, e.message, path.name)
        except OSError as e:
            ctx.add("safetensors", "unreadable", f"{path.name} cannot be read ({e.strerror or e})", path.name)


def _load_config(ctx: _Ctx) -> tuple[Any, bytes]:
    from piperctl.policy import load_policy_config

    if not ctx.present(ckpt.POLICY_CONFIG):
        return None, b""
    ctx.ran.add("policy")
    try:
        config_bytes = (ctx.folder / ckpt.POLICY_CONFIG).read_bytes()
        return load_policy_config(ctx.folder, "cpu"), config_bytes
    except (PiperctlError, OSError) as e:
        ctx.add("policy", "config-invalid", _first_line(e), ckpt.POLICY_CONFIG)
        return None, b""


def _check_policy(ctx: _Ctx, cfg: Any, config_bytes: bytes, cache: PolicyCache) -> Any:
    from piperctl.policy import load_weights

    try:
        policy = cache.get(config_bytes, cfg)
    except Exception as e:  # noqa: BLE001 - any failure to build means config.json describes no usable policy
        ctx.add(
            "policy",
            "config-invalid",
            f"{ckpt.POLICY_CONFIG} does not build a policy ({_first_line(e)})",
            ckpt.POLICY_CONFIG,
        )
        return None
    if not ctx.present(ckpt.POLICY_WEIGHTS):
        return policy
    try:
        load_weights(policy, ctx.folder / ckpt.POLICY_WEIGHTS)
    except PiperctlError as e:
        code = "safetensors-invalid" if "not a readable safetensors" in e.message else "weights-mismatch"
        ctx.add(
            "policy",
            code,
            e.message.replace(str(ctx.folder / ckpt.POLICY_WEIGHTS), ckpt.POLICY_WEIGHTS),
            ckpt.POLICY_WEIGHTS,
        )
    return policy


def _param_groups(policy: Any) -> list[list[Any]] | None:
    """The parameter groups the training loop built its optimizer from (None when not a flat list)."""
    params = policy.get_optim_params()
    if isinstance(params, dict):
        return None  # several named optimizers: not the single state dict we save
    params = list(params)
    if params and isinstance(params[0], dict):
        return [list(g["params"]) for g in params]
    return [params]


def _check_optimizer(ctx: _Ctx, policy: Any) -> None:
    import torch

    name = ckpt.OPTIMIZER_STATE
    if not ctx.present(name):
        return
    try:
        state = load_torch_state(ctx.folder / name)
    except UntrustedFileError as e:
        ctx.add("optimizer", e.code, e.message, name)
        return
    groups = state.get("param_groups") if isinstance(state, dict) else None
    per_param = state.get("state") if isinstance(state, dict) else None
    if (
        not isinstance(groups, list)
        or not isinstance(per_param, dict)
        or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
    ):
        ctx.add("optimizer", "optimizer-invalid", f"{name} is not an optimizer state dict", name)
        return
    expected = _param_groups(policy) if policy is not None else None
    if expected is None:
        return  # nothing to compare with: the check stays "skipped" unless it failed above
    ctx.ran.add("optimizer")
    mismatch = "optimizer-mismatch"
    if [len(g["params"]) for g in groups] != [len(g) for g in expected]:
        ctx.add(
            "optimizer",
            mismatch,
            f"{name} has parameter groups of {[len(g['params']) for g in groups]} tensors but the policy's "
            f"optimizer has {[len(g) for g in expected]} (state of another model?)",
            name,
        )
        return
    names = {id(p): n for n, p in policy.named_parameters()}
    by_index = dict(
        zip((i for g in groups for i in g["params"]), (p for g in expected for p in g), strict=True)
    )
    wrong: list[str] = []
    for index, slots in per_param.items():
        param = by_index.get(index)
        if param is None or not isinstance(slots, dict):
            wrong.append(f"state for unknown parameter {index!r}")
            continue
        for slot, value in slots.items():
            if (
                isinstance(value, torch.Tensor)
                and value.dim() > 0
                and tuple(value.shape) != tuple(param.shape)
            ):
                wrong.append(
                    f"{names.get(id(param), index)} {slot} is {list(value.shape)}, the parameter is {list(param.shape)}"
                )
    if wrong:
        ctx.add(
            "optimizer",
            mismatch,
            f"{name} does not fit the policy's parameters ({len(wrong)} tensors, e.g. {wrong[0]}): state of another model?",
            name,
        )


def _check_training_state(ctx: _Ctx, cfg: Any) -> None:
    from piperctl.policy import feature_shapes
    from piperctl.training import TRAINING_STATE_FORMAT

    name = ckpt.TRAINING_STATE
    if not ctx.present(name):
        return
    ctx.ran.add("training_state")
    try:
        state = ckpt.read_json(ctx.folder / name, "training state")
    except PiperctlError as e:
        ctx.add(
            "training_state", "training-state-invalid", e.message.replace(str(ctx.folder / name), name), name
        )
        return
    if state.get("format") != TRAINING_STATE_FORMAT:
        ctx.add("training_state", "training-state-invalid", f"{name} is not a piperctl training state", name)
        return
    step = ckpt.step_of(ctx.folder)
    if step is None:
        ctx.add(
            "training_state",
            "bad-name",
            f"folder {ctx.folder.name!r} is not named checkpoint-N: resume reads the step from the folder name",
            None,
        )
    elif state.get("step") != step:
        ctx.add(
            "training_state",
            "step-mismatch",
            f"folder is named for step {step} but {name} says step {state.get('step')} (renamed or mixed up?)",
            name,
        )
    data = state.get("data")
    lacking = [k for k in ("samples_seen", "seed", "run_id", "config") if k not in state]
    if not isinstance(data, dict) or not all(isinstance(data.get(k), int) for k in ("epoch", "offset")):
        lacking.append("data.epoch/offset")
    if lacking:
        ctx.add("training_state", "training-state-invalid", f"{name} lacks {', '.join(lacking)}", name)
    if cfg is not None:
        if state.get("policy_type") not in (None, cfg.type):
            ctx.add(
                "training_state",
                "config-mismatch",
                f"{name} is for a {state.get('policy_type')!r} policy but config.json holds {cfg.type!r}",
                name,
            )
        elif state.get("feature_shapes") and state["feature_shapes"] != feature_shapes(cfg):
            ctx.add(
                "training_state",
                "config-mismatch",
                f"{name} feature shapes {state['feature_shapes']} differ from config.json's {feature_shapes(cfg)}",
                name,
            )
    run_file = ctx.folder.parent / ckpt.RUN_FILE
    if run_file.is_file():
        try:
            run_id = json.loads(run_file.read_text(encoding="utf-8")).get("run_id")
        except (OSError, ValueError, AttributeError):
            run_id = None
        if run_id and state.get("run_id") != run_id:
            ctx.add(
                "training_state",
                "run-mismatch",
                f"{name} belongs to run {state.get('run_id')}, not to the run in {ctx.folder.parent} ({run_id})",
                name,
            )


def _check_rng_state(ctx: _Ctx) -> None:
    ctx.ran.add("rng_state")
    if ctx.present(ckpt.RNG_STATE_JSON):
        try:
            data = json.loads((ctx.folder / ckpt.RNG_STATE_JSON).read_text(encoding="utf-8"))
            ok = (
                isinstance(data, dict)
                and all(isinstance(data.get(k), dict) for k in ("python", "numpy"))
                and isinstance(data["python"].get("state"), list)
                and isinstance(data["numpy"].get("keys"), list)
            )
        except (OSError, UnicodeDecodeError, ValueError):
            ok = False
        if not ok:
            ctx.add(
                "rng_state",
                "rng-state-invalid",
                f"{ckpt.RNG_STATE_JSON} does not hold python and numpy generator states",
                ckpt.RNG_STATE_JSON,
            )
    if ctx.present(ckpt.RNG_STATE_TENSORS):
        try:
            header = safetensors_header(ctx.folder / ckpt.RNG_STATE_TENSORS)
        except (UntrustedFileError, OSError):
            return  # reported by the safetensors check
        if "torch_cpu" not in header:
            ctx.add(
                "rng_state",
                "rng-state-invalid",
                f"{ckpt.RNG_STATE_TENSORS} has no torch_cpu generator state",
                ckpt.RNG_STATE_TENSORS,
            )


def _check_processors(ctx: _Ctx, cfg: Any) -> None:
    from piperctl.policy import make_processors

    unsafe = False
    for name in (ckpt.PREPROCESSOR_CONFIG, ckpt.POSTPROCESSOR_CONFIG):
        if name in ctx.escaped:
            unsafe = True
            continue
        for e in processor_config_problems(ctx.folder, name):
            if e.code == "missing-file" and not ctx.present(name):
                continue  # the layout check already named the missing config
            unsafe = True
            ctx.add("processors", e.code, e.message, name)
    if unsafe or cfg is None:
        return
    if not (ctx.present(ckpt.PREPROCESSOR_CONFIG) and ctx.present(ckpt.POSTPROCESSOR_CONFIG)):
        return
    ctx.ran.add("processors")
    try:
        make_processors(cfg, pretrained=ctx.folder, device="cpu")
    except Exception as e:  # noqa: BLE001 - lerobot raises many types for a processor that does not load
        ctx.add("processors", "processor-invalid", f"the processors do not load ({_first_line(e)})", None)
