"""Reading the files of an untrusted checkpoint without running its code or leaving its folder.

A checkpoint may come from anywhere (a colleague's disk, a download, an rsync of a shared drive), so
nothing in it is executed: pickles are scanned statically for the globals they would import
(`torch.serialization.get_unsafe_globals_in_checkpoint`) before torch's restricted
(`weights_only=True`) unpickler sees them, safetensors files are opened with `safetensors.safe_open`
(which refuses truncation, bad offsets and trailing bytes), and processor configs may neither import
classes by module path nor name state files outside the folder.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from piperctl.checkpoints.format import is_safe_relpath
from piperctl.errors import PiperctlError
from piperctl.fs import first_line

_MAX_PICKLE_BYTES = 256 << 20


class UntrustedFileError(PiperctlError):
    """A checkpoint file that is unsafe or malformed; `code` names the kind for reports."""

    code: str

    def __init__(self, code: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, code=code)


def check_torch_pickle(path: Path) -> None:
    """Refuse a torch.save archive whose pickle would import anything torch's safe loader does not allow."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    name = path.name
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [i for i in archive.infolist() if i.filename.endswith(".pkl")]
            if not pickles:
                raise UntrustedFileError(
                    "optimizer-invalid", f"{name} holds no pickle (not a torch.save file)"
                )
            too_big = next((i for i in pickles if i.file_size > _MAX_PICKLE_BYTES), None)
            if too_big is not None:
                raise UntrustedFileError(
                    "optimizer-invalid", f"{name}: {too_big.filename} is {too_big.file_size} bytes, too large"
                )
        bad = sorted(get_unsafe_globals_in_checkpoint(path))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise UntrustedFileError("optimizer-invalid", f"{name} is not a torch.save zip archive ({e})") from e
    except (ValueError, KeyError, IndexError, RuntimeError) as e:
        # The static pickle scan raises these on a malformed archive or opcode stream.
        raise UntrustedFileError(
            "optimizer-invalid", f"{name} holds a malformed pickle ({first_line(e, limit=240)})"
        ) from e
    if bad:
        raise UntrustedFileError(
            "unsafe-pickle",
            f"{name} holds a pickle that would call {', '.join(bad)} when loaded: refused, nothing was run",
            hint="never load this file with weights_only=False; the checkpoint is damaged or crafted",
        )


def load_torch_state(path: Path, *, mmap: bool = True) -> Any:
    """Load a torch.save file of tensors/containers only: static pickle scan, then weights_only=True.

    `mmap=True` leaves tensor data on disk until touched (checking shapes reads almost nothing);
    pass False when the tensors will be trained on.
    """
    import pickle

    import torch

    check_torch_pickle(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        first = first_line(str(e).split("WeightsUnpickler error:", 1)[-1])
        raise UntrustedFileError(
            "unsafe-pickle", f"{path.name} was refused by torch's safe loader ({first})"
        ) from e
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/ValueError/... for damaged archives
        raise UntrustedFileError(
            "optimizer-invalid", f"{path.name} cannot be loaded ({first_line(e, limit=240)})"
        ) from e


def safetensors_header(path: Path) -> dict[str, Any]:
    """Open a safetensors file without loading tensors and return {name: {dtype, shape}} of its tensors.

    `safe_open` validates the header, the data offsets and the file size; any refusal is reported
    as `safetensors-invalid`.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {
                key: {"dtype": f.get_slice(key).get_dtype(), "shape": f.get_slice(key).get_shape()}
                for key in f.keys()  # noqa: SIM118 - safe_open has no __iter__
            }
    except SafetensorError as e:
        raise UntrustedFileError(
            "safetensors-invalid", f"{path.name} is not a valid safetensors file ({first_line(e, limit=240)})"
        ) from e
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises plain exceptions for some header errors
        raise UntrustedFileError(
            "safetensors-invalid", f"{path.name} is not a valid safetensors file ({first_line(e, limit=240)})"
        ) from e


def processor_config_problems(folder: Path, filename: str) -> list[UntrustedFileError]:
    """Reasons not to hand a processor config of `folder` to lerobot (empty when it is safe to load).

    lerobot imports a step's "class" by module path and instantiates it with the saved config (a
    config could name `subprocess.Popen`), and joins "state_file" onto the folder unchecked; from an
    untrusted checkpoint only registered steps and state files inside the folder are accepted.
    """
    path = folder / filename
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [UntrustedFileError("missing-file", f"{filename} is missing")]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return [UntrustedFileError("processor-invalid", f"{filename} is not valid JSON ({e})")]
    steps = cfg.get("steps") if isinstance(cfg, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        return [UntrustedFileError("processor-invalid", f"{filename} has no list of processor steps")]
    problems: list[UntrustedFileError] = []
    for i, step in enumerate(steps):
        if not isinstance(step.get("registry_name"), str):
            if "class" in step:
                problems.append(
                    UntrustedFileError(
                        "unsafe-config",
                        f"{filename} step {i} imports {str(step['class'])!r} by module path: refused "
                        "(only registered lerobot processor steps are loaded from a checkpoint)",
                    )
                )
            else:
                problems.append(
                    UntrustedFileError("processor-invalid", f"{filename} step {i} names no processor")
                )
        state_file = step.get("state_file")
        if state_file is None:
            continue
        if not is_inside(folder, state_file):
            problems.append(
                UntrustedFileError(
                    "path-escape",
                    f"{filename} step {i} names state file {state_file!r} outside the checkpoint",
                )
            )
        elif not (folder / state_file).is_file():
            problems.append(
                UntrustedFileError("missing-file", f"{filename} step {i}: {state_file} is missing")
            )
    return problems


def is_inside(folder: Path, rel: object) -> bool:
    """True when `rel` is a safe relative name that resolves (links included) inside `folder`."""
    if not is_safe_relpath(rel):
        return False
    try:
        root = folder.resolve()
        target = (folder / str(rel)).resolve()
    except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13)
        return False
    return target == root or root in target.parents
