"""Deep checks of one checkpoint: load every part the way resume and deployment would, and compare them.

`DEEP_CHECKS` is the registry `checkpoints verify` runs, in order: each entry is a name (part of the
`verify --json` contract), the kinds of folder it applies to, and a function that adds problems to
the shared context. A new check is one decorated function.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piperctl.checkpoints import format as fmt
from piperctl.checkpoints.atomic import read_json
from piperctl.checkpoints.integrity import QuickCheck
from piperctl.checkpoints.untrusted import (
    UntrustedFileError,
    load_torch_state,
    processor_config_problems,
    safetensors_header,
)
from piperctl.errors import PiperctlError
from piperctl.fs import first_line

CHECKPOINT, MODEL = "checkpoint", "model"


@dataclass
class PolicyCache:
    """Untrained policies by config.json bytes: a run's checkpoints share one architecture, built once."""

    policies: dict[bytes, Any] = field(default_factory=dict)

    def get(self, config_bytes: bytes, cfg: Any) -> Any:
        """The policy for this config, built on first use."""
        from piperctl.checkpoints.model import policy_from_config

        if config_bytes not in self.policies:
            self.policies[config_bytes] = policy_from_config(cfg)
        return self.policies[config_bytes]


@dataclass
class Context:
    """What the checks of one folder share: its scan result, what ran, and what earlier checks loaded."""

    folder: Path
    result: QuickCheck
    cache: PolicyCache
    ran: set[str] = field(default_factory=set)
    escaped: set[str | None] = field(default_factory=set)
    layout: fmt.ModelLayout = fmt.CHECKPOINT_LAYOUT  # file names of the model half (checkpoint or lerobot)
    cfg: Any = None  # the policy config, once the policy check loaded it
    config_bytes: bytes = b""
    policy: Any = None  # the untrained policy built from cfg (weights loaded when they fit)

    def add(self, check: str, code: str, message: str, file: str | None) -> None:
        # A damaged file tends to fail several loaders the same way: name it once per kind.
        if any(i.code == code and i.file == file for i in self.result.issues):
            return
        self.result.add(check, code, message, file)

    def present(self, name: str) -> bool:
        # A name already reported as leading out of the folder is never opened.
        return name not in self.escaped and (self.folder / name).is_file()


def preload() -> None:
    """Import what the deep checks need (torch, lerobot's policies and processors): the slow part of a start."""
    from piperctl.quiet import quiet_third_party

    quiet_third_party()
    import lerobot.policies  # noqa: F401
    import lerobot.processor  # noqa: F401
    import torch  # noqa: F401

    import piperctl.checkpoints.model  # noqa: F401


@dataclass(frozen=True)
class DeepCheck:
    """One named deep check and the kinds of folder (checkpoint, model) it applies to."""

    name: str
    kinds: frozenset[str]
    run: Callable[[Context], None]


DEEP_CHECKS: list[DeepCheck] = []


def deep_check(name: str, kinds: tuple[str, ...] = (CHECKPOINT, MODEL)) -> Callable:
    """Register the decorated function as the deep check `name` (run in registration order)."""

    def register(fn: Callable[[Context], None]) -> Callable[[Context], None]:
        DEEP_CHECKS.append(DeepCheck(name, frozenset(kinds), fn))
        return fn

    return register


def run_deep_checks(result: QuickCheck, kind: str, cache: PolicyCache) -> set[str]:
    """Run every deep check for a folder of `kind` on `result.path`, adding problems; the checks that ran."""
    from piperctl.quiet import quiet_third_party

    quiet_third_party()
    if not result.path.is_dir():
        return set()  # nothing to load: the layout check already said the folder is missing
    ctx = Context(
        result.path, result, cache, escaped={i.file for i in result.issues if i.code == "path-escape"}
    )
    if kind == MODEL:
        ctx.layout = fmt.model_layout(result.path, (result.manifest or {}).get("files"))
    for check in DEEP_CHECKS:
        if kind in check.kinds:
            check.run(ctx)
    return ctx.ran


@deep_check("safetensors")
def _check_safetensors(ctx: Context) -> None:
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


@deep_check("policy")
def _check_policy(ctx: Context) -> None:
    from piperctl.checkpoints.model import load_policy_config, load_weights

    if not ctx.present(fmt.POLICY_CONFIG):
        return
    ctx.ran.add("policy")
    try:
        ctx.config_bytes = (ctx.folder / fmt.POLICY_CONFIG).read_bytes()
        ctx.cfg = load_policy_config(ctx.folder, "cpu")
    except (PiperctlError, OSError) as e:
        ctx.add("policy", "config-invalid", first_line(e, limit=240), fmt.POLICY_CONFIG)
        return
    try:
        ctx.policy = ctx.cache.get(ctx.config_bytes, ctx.cfg)
    except Exception as e:  # noqa: BLE001 - any failure to build means config.json describes no usable policy
        ctx.add(
            "policy",
            "config-invalid",
            f"{fmt.POLICY_CONFIG} does not build a policy ({first_line(e, limit=240)})",
            fmt.POLICY_CONFIG,
        )
        return
    weights = ctx.layout.weights
    if not ctx.present(weights):
        return
    try:
        if ctx.present(fmt.BASE_REF):
            ctx.policy = _finetuned_structure(ctx)
        else:
            load_weights(ctx.policy, ctx.folder / weights)
    except PiperctlError as e:
        ctx.add(
            "policy",
            e.code or "weights-mismatch",
            e.message.replace(str(ctx.folder / weights), weights),
            weights,
        )


def _finetuned_structure(ctx: Context) -> Any:
    """A fine-tuning checkpoint's or PEFT model's architecture (base + adapter) with its saved tensors loaded.

    The base's own weights are not needed to check that these fit (the `base` check proves the base).
    """
    from piperctl.checkpoints.adapters import load_adapter, load_trainable, read_base_ref
    from piperctl.checkpoints.model import build_finetuned

    ref = read_base_ref(ctx.folder)
    assert ref is not None  # present: checked by the caller
    policy = build_finetuned(ctx.cfg, ref, None)
    if ctx.layout.weights == fmt.ADAPTER_WEIGHTS:
        load_adapter(policy, ctx.folder / fmt.ADAPTER_WEIGHTS)
    else:
        load_trainable(policy, ctx.folder / ctx.layout.weights)
    return policy


def _param_groups(policy: Any, trainable_only: bool = False) -> list[list[Any]] | None:
    """The parameter groups the training loop built its optimizer from (None when not a flat list)."""
    from piperctl.checkpoints.adapters import trainable_param_groups

    params = trainable_param_groups(policy) if trainable_only else policy.get_optim_params()
    if isinstance(params, dict):
        return None  # several named optimizers: not the single state dict we save
    params = list(params)
    if params and isinstance(params[0], dict):
        return [list(g["params"]) for g in params]
    return [params]


@deep_check("optimizer", kinds=(CHECKPOINT,))
def _check_optimizer(ctx: Context) -> None:
    import torch

    policy = ctx.policy
    name = fmt.OPTIMIZER_STATE
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
    expected = _param_groups(policy, ctx.present(fmt.BASE_REF)) if policy is not None else None
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


@deep_check("training_state", kinds=(CHECKPOINT,))
def _check_training_state(ctx: Context) -> None:
    from piperctl.checkpoints.model import feature_shapes

    name = fmt.TRAINING_STATE
    if not ctx.present(name):
        return
    ctx.ran.add("training_state")
    try:
        data = read_json(ctx.folder / name, "training state")
    except PiperctlError as e:
        ctx.add(
            "training_state", "training-state-invalid", e.message.replace(str(ctx.folder / name), name), name
        )
        return
    state, problems = fmt.TrainingState.parse(data, ctx.folder)
    for p in problems:
        ctx.add("training_state", p.code, p.message, None if p.code == "bad-name" else name)
    if state is None:
        return
    cfg = ctx.cfg
    if cfg is not None:
        if state.policy_type not in (None, cfg.type):
            ctx.add(
                "training_state",
                "config-mismatch",
                f"{name} is for a {state.policy_type!r} policy but config.json holds {cfg.type!r}",
                name,
            )
        elif state.feature_shapes and state.feature_shapes != feature_shapes(cfg):
            ctx.add(
                "training_state",
                "config-mismatch",
                f"{name} feature shapes {state.feature_shapes} differ from config.json's {feature_shapes(cfg)}",
                name,
            )
    run_file = ctx.folder.parent / fmt.RUN_FILE
    if run_file.is_file():
        try:
            run_id = fmt.RunInfo.from_json(read_json(run_file, "run file")).run_id
        except PiperctlError:
            run_id = None
        if run_id and state.run_id != run_id:
            ctx.add(
                "training_state",
                "run-mismatch",
                f"{name} belongs to run {state.run_id}, not to the run in {ctx.folder.parent} ({run_id})",
                name,
            )


@deep_check("rng_state", kinds=(CHECKPOINT,))
def _check_rng_state(ctx: Context) -> None:
    ctx.ran.add("rng_state")
    if ctx.present(fmt.RNG_STATE_JSON):
        try:
            data = json.loads((ctx.folder / fmt.RNG_STATE_JSON).read_text(encoding="utf-8"))
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
                f"{fmt.RNG_STATE_JSON} does not hold python and numpy generator states",
                fmt.RNG_STATE_JSON,
            )
    if ctx.present(fmt.RNG_STATE_TENSORS):
        try:
            header = safetensors_header(ctx.folder / fmt.RNG_STATE_TENSORS)
        except (UntrustedFileError, OSError):
            return  # reported by the safetensors check
        if "torch_cpu" not in header:
            ctx.add(
                "rng_state",
                "rng-state-invalid",
                f"{fmt.RNG_STATE_TENSORS} has no torch_cpu generator state",
                fmt.RNG_STATE_TENSORS,
            )


@deep_check("processors")
def _check_processors(ctx: Context) -> None:
    from piperctl.checkpoints.model import load_processors

    cfg = ctx.cfg
    unsafe = False
    pre, post = ctx.layout.preprocessor, ctx.layout.postprocessor
    for name in (pre, post):
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
    if not (ctx.present(pre) and ctx.present(post)):
        return
    ctx.ran.add("processors")
    try:
        load_processors(cfg, ctx.folder, device="cpu", layout=ctx.layout)
    except Exception as e:  # noqa: BLE001 - lerobot raises many types for a processor that does not load
        ctx.add(
            "processors",
            "processor-invalid",
            f"the processors do not load ({first_line(e, limit=240)})",
            None,
        )


@deep_check("base")
def _check_base(ctx: Context) -> None:
    """A fine-tuning model's base is where base_model.json says, with the same files (passes when it needs none)."""
    _base(ctx, "full")


def check_base_sizes(result: QuickCheck) -> set[str]:
    """`verify --quick`'s base check: the base is there and its files have their sizes (nothing hashed)."""
    if not result.path.is_dir():
        return set()
    escaped = {i.file for i in result.issues if i.code == "path-escape"}
    ctx = Context(result.path, result, PolicyCache(), escaped=escaped)
    _base(ctx, "size")
    return ctx.ran


def _base(ctx: Context, mode: str) -> None:
    from piperctl.checkpoints.adapters import base_problems, read_base_ref

    ctx.ran.add("base")
    if fmt.BASE_REF in ctx.escaped or not (ctx.folder / fmt.BASE_REF).exists():
        return
    try:
        ref = read_base_ref(ctx.folder)
    except PiperctlError as e:
        ctx.add("base", e.code or "base-invalid", e.message, fmt.BASE_REF)
        return
    if ref is not None:
        for p in base_problems(ref, mode):
            ctx.add("base", p.code, p.message, fmt.BASE_REF)
