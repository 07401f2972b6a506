"""Mixed precision: which one a run uses (lerobot-train's rule), autocast, loss scaling and its state.

With several processes this goes through accelerate (`Accelerator(mixed_precision=...)`: its
`autocast`, `backward`, `clip_grad_norm_` and `scaler`); alone, through the same torch calls
accelerate makes (`torch.autocast`, `torch.amp.GradScaler`), without accelerate's process-wide state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import torch

from piperctl.errors import PiperctlError

CHOICES = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ACCELERATE_NAMES = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def resolve_precision(explicit: str | None, policy_type: str, options: dict[str, Any], device: str) -> str:
    """--precision if given, else what lerobot-train derives from the policy config (`dtype`, then `use_amp`)."""
    if explicit is not None:
        if explicit not in CHOICES:
            raise PiperctlError(
                f"--precision {explicit!r} is not valid", hint=f"use one of: {', '.join(CHOICES)}"
            )
        return explicit
    import lerobot.policies  # noqa: F401  (registers every policy type)
    from lerobot.configs.policies import PreTrainedConfig

    try:
        cls = PreTrainedConfig.get_choice_class(policy_type)
    except KeyError:
        return "fp32"  # an unknown type is refused with its own message when the config is built
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    if "dtype" in defaults or "dtype" in options:
        dtype = options.get("dtype", defaults.get("dtype"))
        return {"bfloat16": "bf16", "float16": "fp16"}.get(str(dtype), "fp32")
    if options.get("use_amp", defaults.get("use_amp", False)):
        device_type = torch.device(device).type
        return "bf16" if torch.get_autocast_dtype(device_type) == torch.bfloat16 else "fp16"
    return "fp32"


class Precision:
    """Autocast, backward with loss scaling (fp16), gradient clipping and the optimizer step of one run."""

    def __init__(self, name: str, device: str, accelerator: Any = None) -> None:
        self.name = name
        self.device_type = torch.device(device).type
        self.accelerator = accelerator
        self.scaler: Any = None
        if accelerator is not None:
            self.scaler = accelerator.scaler
        elif name == "fp16":
            self.scaler = torch.amp.GradScaler(self.device_type)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward pass's precision (nothing changes in fp32)."""
        if self.accelerator is not None:
            with self.accelerator.autocast():
                yield
        elif self.name == "fp32":
            yield
        else:
            with torch.autocast(device_type=self.device_type, dtype=_DTYPES[self.name]):
                yield

    def backward(self, loss: torch.Tensor) -> None:
        """Backward pass, scaling the loss first in fp16."""
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def clip_and_step(self, optimizer: Any, params: Any, max_norm: float) -> float:
        """Clip the gradients and take the optimizer step (skipped by the scaler on inf/nan in fp16)."""
        limit = max_norm if max_norm > 0 else math.inf
        if self.accelerator is not None:
            norm = self.accelerator.clip_grad_norm_(params, limit)  # unscales first in fp16
            optimizer.step()  # the prepared optimizer steps through accelerate's scaler itself
        elif self.scaler is not None:
            self.scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, limit, error_if_nonfinite=False)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, limit, error_if_nonfinite=False)
            optimizer.step()
        return float(norm)

    def state_dict(self) -> dict | None:
        """The loss scaler's state (fp16), for exact resumption; None otherwise."""
        if self.scaler is None:
            return None
        return {k: float(v) if isinstance(v, float) else v for k, v in self.scaler.state_dict().items()}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore the loss scaler's state saved by `state_dict`."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
