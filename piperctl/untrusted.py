"""Reading the files of an untrusted checkpoint without running its code or leaving its folder.

A checkpoint may come from anywhere (a colleague's disk, a download, an rsync of a shared drive), so
nothing in it is executed: pickles are scanned for the globals they would import before torch's
restricted (`weights_only=True`) unpickler sees them, safetensors headers are parsed by hand, and
processor configs may neither import classes by module path nor name state files outside the folder.
Importing this module costs nothing heavy; torch is imported only to load a pickle that passed.
"""

from __future__ import annotations

import json
import math
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

from piperctl.checkpoint import is_safe_relpath
from piperctl.errors import PiperctlError

# The globals `torch.save(optimizer.state_dict())` writes: containers, tensor rebuilders, storage
# classes and dtypes. Anything else (builtins.open, os.system, subprocess.Popen, ...) is refused.
_ALLOWED_GLOBALS = {
    "collections.OrderedDict",
    "torch.Size",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor",
}
_STORAGE_RE = re.compile(r"^torch\.(cuda\.)?[A-Z][A-Za-z0-9]*Storage$")
_DTYPE_RE = re.compile(
    r"^torch\.(u?int(8|16|32|64)|float(8_\w+|16|32|64)?|bfloat16|half|double|long|int|short|bool|complex(32|64|128))$"
)
_STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "SHORT_BINSTRING",
    "BINSTRING",
    "STRING",
}
_MAX_PICKLE_BYTES = 256 << 20

_SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_MAX_SAFETENSORS_HEADER = 100 << 20


class UntrustedFileError(PiperctlError):
    """A checkpoint file that is unsafe or malformed; `code` names the kind for reports."""

    def __init__(self, code: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


def _allowed(name: str) -> bool:
    return name in _ALLOWED_GLOBALS or bool(_STORAGE_RE.match(name) or _DTYPE_RE.match(name))


def _pickle_globals(data: bytes) -> list[str]:
    """Every global a pickle would import, read statically from its opcodes (nothing is executed)."""
    names: list[str] = []
    pushed: list[object] = []  # recent pushed values, only strings are tracked precisely
    memo: dict[int, object] = {}
    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            names.append(f"{module}.{attr}")
        elif name == "STACK_GLOBAL":
            module, attr = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
            if isinstance(module, str) and isinstance(attr, str):
                names.append(f"{module}.{attr}")
            else:
                names.append("<a global computed at load time>")
        elif name in ("EXT1", "EXT2", "EXT4"):
            names.append(f"<copyreg extension {arg}>")
        if name in _STRING_OPS:
            pushed.append(arg)
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(int(arg)))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = pushed[-1] if pushed else None
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        else:
            pushed.append(None)
        del pushed[:-4]
    return names


def check_torch_pickle(path: Path) -> None:
    """Refuse a torch.save archive whose pickle would import anything a plain state dict never needs."""
    name = path.name
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [i for i in archive.infolist() if i.filename.endswith(".pkl")]
            if not pickles:
                raise UntrustedFileError(
                    "optimizer-invalid", f"{name} holds no pickle (not a torch.save file)"
                )
            found: list[str] = []
            for info in pickles:
                if info.file_size > _MAX_PICKLE_BYTES:
                    raise UntrustedFileError(
                        "optimizer-invalid", f"{name}: {info.filename} is {info.file_size} bytes, too large"
                    )
                found += _pickle_globals(archive.read(info))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise UntrustedFileError("optimizer-invalid", f"{name} is not a torch.save zip archive ({e})") from e
    except (ValueError, KeyError, IndexError) as e:
        # pickletools raises these on a malformed opcode stream.
        raise UntrustedFileError("optimizer-invalid", f"{name} holds a malformed pickle ({e})") from e
    bad = sorted({g for g in found if not _allowed(g)})
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
        first = str(e).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0]
        raise UntrustedFileError(
            "unsafe-pickle", f"{path.name} was refused by torch's safe loader ({first})"
        ) from e
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/ValueError/... for damaged archives
        raise UntrustedFileError(
            "optimizer-invalid", f"{path.name} cannot be loaded ({_first_line(e)})"
        ) from e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and sanity-check a safetensors header without loading tensors (offsets, sizes, dtypes)."""
    name = path.name
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        head = f.read(8)
        if len(head) < 8:
            raise UntrustedFileError(
                "safetensors-invalid", f"{name} is {size} bytes, too short for safetensors"
            )
        n = int.from_bytes(head, "little")
        if n > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise UntrustedFileError(
                "safetensors-invalid", f"{name} header claims {n} bytes but the file has {size} (truncated?)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UntrustedFileError("safetensors-invalid", f"{name} header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise UntrustedFileError("safetensors-invalid", f"{name} header is not a JSON object")
    data_len = size - 8 - n
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, stop) = info["dtype"], info["shape"], info["data_offsets"]
            if not (all(isinstance(d, int) and d >= 0 for d in shape) and 0 <= start <= stop):
                raise ValueError
        except (TypeError, KeyError, ValueError) as e:
            raise UntrustedFileError(
                "safetensors-invalid", f"{name}: tensor {key!r} has a malformed entry"
            ) from e
        if stop > data_len:
            raise UntrustedFileError(
                "safetensors-invalid", f"{name}: tensor {key!r} lies past the end of the file (truncated?)"
            )
        width = _SAFETENSORS_DTYPE_BYTES.get(dtype)
        if width is not None and (stop - start) != math.prod(shape) * width:
            raise UntrustedFileError(
                "safetensors-invalid", f"{name}: tensor {key!r} size does not match its {dtype} shape {shape}"
            )
        end = max(end, stop)
    if end != data_len:
        raise UntrustedFileError(
            "safetensors-invalid",
            f"{name} has {data_len - end} bytes after its last tensor (not a clean save)",
        )
    return header


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
    root = folder.resolve()
    target = (folder / str(rel)).resolve()
    return target == root or root in target.parents
