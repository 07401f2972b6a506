"""Fine-tuned models that hold only what they train: the base reference, trainable-only weights, PEFT adapters.

A run with `--peft` or `--freeze` saves only its trainable tensors (adapter weights, or the parameters
not frozen) in `policy.safetensors`, plus `base_model.json`: where its base model lives (a local
folder, or a Hub id at a commit) and the size and sha256 of the base's model files, so that resume,
verify and export can find the base and prove it is the one the run started from. With PEFT it
also holds the adapter's PEFT config. Everything is rebuilt the same way: the base architecture from
config.json, the base weights, the adapter (if any), then the trainable tensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from piperctl.checkpoints import format as fmt
from piperctl.errors import PiperctlError, require_extra
from piperctl.fs import first_line

BASE_FORMAT = "piperctl-base"
# The base's files that fix its weights and architecture (processors are rebuilt from the dataset).
BASE_FILES = (fmt.POLICY_CONFIG, fmt.LEROBOT_WEIGHTS)


@dataclass
class BaseRef:
    """base_model.json: where a fine-tuning run's base model lives and what its files were."""

    source: str  # "local" (a folder) or "hub" (a repo id at a commit)
    location: str  # the folder's absolute path, or the repo id
    revision: str | None = None  # the Hub commit
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {size, sha256}
    peft: dict[str, Any] | None = None  # the PEFT config (PeftConfig.to_dict()), None for --freeze only

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to base_model.json."""
        return {"format": BASE_FORMAT, "version": 1, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: object) -> BaseRef:
        """Parse base_model.json (raises PiperctlError code base-invalid)."""
        ok = (
            isinstance(data, dict)
            and data.get("format") == BASE_FORMAT
            and data.get("source") in ("local", "hub")
            and isinstance(data.get("location"), str)
            and isinstance(data.get("files"), dict)
            and all(isinstance(v, dict) and fmt.is_safe_relpath(k) for k, v in data["files"].items())
            and isinstance(data.get("peft"), dict | None)
        )
        if not ok:
            raise PiperctlError(f"{fmt.BASE_REF} is not a piperctl base reference", code="base-invalid")
        return cls(data["source"], data["location"], data.get("revision"), data["files"], data.get("peft"))

    @property
    def description(self) -> str:
        """The base for people: a folder, or repo@commit."""
        return f"{self.location}@{self.revision[:12]}" if self.revision else self.location


def read_base_ref(folder: Path) -> BaseRef | None:
    """The base reference of a model folder, or None when it holds a whole model."""
    path = folder / fmt.BASE_REF
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PiperctlError(f"{fmt.BASE_REF} cannot be read ({first_line(e)})", code="base-invalid") from e
    return BaseRef.from_json(data)


def write_base_ref(folder: Path, ref: BaseRef) -> None:
    """Write base_model.json into a folder being published."""
    text = json.dumps(ref.to_json(), indent=2, sort_keys=True) + "\n"
    (folder / fmt.BASE_REF).write_text(text, encoding="utf-8")


def describe_base(folder: Path, location: str, revision: str | None, peft: dict | None) -> BaseRef:
    """The reference to base model `folder` (a Hub snapshot when `revision` is given), its files hashed.

    Each file's `mtime_ns` and `inode` are recorded too: `resume` skips hashing a base file that is
    still the very same, untouched file (`base_problems(..., mode="unchanged")`).
    """
    files = {}
    for name in BASE_FILES:
        path = folder / name
        st = path.stat()
        files[name] = {"size": st.st_size, "sha256": _sha256(path), **_identity(st)}
    source = "hub" if revision else "local"
    where = location if revision else str(folder.resolve())
    return BaseRef(source, where, revision, files, peft)


def peft_config_dict(peft_config: Any) -> dict[str, Any]:
    """A PEFT config as the JSON object base_model.json keeps (sets as sorted lists)."""

    def plain(value: Any) -> Any:
        return sorted(value) if isinstance(value, set | frozenset) else str(value)

    return json.loads(json.dumps(peft_config.to_dict(), default=plain))


def locate_base(ref: BaseRef) -> Path:
    """The base model's folder on this machine (a Hub one from the local cache, else downloaded)."""
    if ref.source == "local":
        folder = Path(ref.location)
        if not folder.is_dir():
            raise PiperctlError(
                f"the base model {ref.location} is missing",
                hint="put the base model back at that path (the checkpoint holds only what training changed)",
                code="base-missing",
            )
        return folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref.location, revision=ref.revision, allow_patterns=list(ref.files)))
    except Exception as e:  # noqa: BLE001 - offline, gone, unauthorized: huggingface_hub has many error types
        from piperctl import hub

        why = "not in the local Hub cache and HF_HUB_OFFLINE is set" if hub.offline() else first_line(e)
        raise PiperctlError(
            f"the base model {ref.description} is not available ({why})",
            hint="go online once (or unset HF_HUB_OFFLINE) so that it is downloaded into the Hub cache",
            code="base-missing",
        ) from e


# sha256 of base files already hashed by this process, by (path, size, mtime_ns, ctime_ns, inode): a
# `verify` of a run with many checkpoints hashes a multi-GB base once, not once per checkpoint.
_HASHED: dict[tuple[str, int, int, int, int], str] = {}


def _identity(st: os.stat_result) -> dict[str, int]:
    """What tells that a file is the very one that was hashed: its inode, modification and change times.

    Any write, `touch`, `utime` or copy changes one of them (ctime cannot be set back from user space).
    """
    return {"mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _sha256(path: Path) -> str:
    """The file's sha256, hashed once per process while the file stays untouched."""
    from piperctl.checkpoints.integrity import sha256_file

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _HASHED:
        _HASHED[key] = sha256_file(path)
    return _HASHED[key]


def base_problems(ref: BaseRef, mode: str = "full") -> list[fmt.Problem]:
    """Every way the base on this machine differs from the one the run started from (empty when none).

    `mode` says what is hashed: "full" every file (verify, export); "unchanged" only the files that are
    not the very files hashed when the run started (resume); "size" none (verify --quick). A missing
    file or another size is a change in every mode.
    """
    try:
        folder = locate_base(ref)
    except PiperctlError as e:
        return [fmt.Problem(e.code or "base-missing", e.message)]
    found = []
    for name, want in ref.files.items():
        path = folder / name
        if not path.is_file():
            found.append(fmt.Problem("base-missing", f"the base model {ref.description} lacks {name}"))
            continue
        st = path.stat()
        untouched = mode == "unchanged" and _identity(st) == {k: want.get(k) for k in _identity(st)}
        if st.st_size != want.get("size") or not (
            mode == "size" or untouched or _sha256(path) == want.get("sha256")
        ):
            found.append(
                fmt.Problem(
                    "base-changed",
                    f"the base model's {name} in {ref.description} changed since the run started "
                    "(the checkpoint's weights only fit the original base)",
                )
            )
    return found


def require_base(ref: BaseRef, mode: str = "full") -> Path:
    """The base's folder, refusing a missing or changed base in one line (`mode`: see `base_problems`)."""
    problems = base_problems(ref, mode)
    if problems:
        raise PiperctlError(
            problems[0].message,
            hint="restore the original base model (see base_model.json), or start a new run from this base",
            code=problems[0].code,
        )
    return locate_base(ref)


# ---------------------------------------------------------------------------------------------
# the model: base architecture + adapter + trainable tensors


def peft_config_from(data: dict[str, Any]) -> Any:
    """A PEFT config object from its saved dict (PeftConfig.to_dict())."""
    require_extra("peft", "a PEFT model")
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PeftType

    try:
        cls = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(data["peft_type"])]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
    except (KeyError, TypeError, ValueError) as e:
        raise PiperctlError(
            f"the saved PEFT config is not valid ({first_line(e)})", code="base-invalid"
        ) from e


def wrap_peft(policy: Any, peft_config: Any, ref: BaseRef) -> Any:
    """`policy` with PEFT adapters through lerobot's own `wrap_with_peft` (base parameters frozen).

    The adapter's config names the base (`base_model_name_or_path` from the policy config's
    `pretrained_path`, and the Hub `revision`) as lerobot's make_policy needs it to load the adapter.
    """
    from piperctl.quiet import quiet_third_party

    quiet_third_party()
    policy.config.pretrained_path = ref.location
    peft_config.revision = ref.revision
    model = policy.wrap_with_peft(peft_config=peft_config)
    model.config.use_peft = True
    return model


def load_adapter(policy: Any, path: Path) -> None:
    """Load PEFT's adapter_model.safetensors into a PEFT-wrapped `policy`, refusing tensors that do not fit."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        result = set_peft_model_state_dict(policy, load_file(str(path)))
    except (RuntimeError, ValueError) as e:
        raise PiperctlError(
            f"weights in {path} do not fit this model ({first_line(e)})", code="weights-mismatch"
        ) from e
    missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    if result.unexpected_keys or missing:
        example = (list(result.unexpected_keys) + missing)[0]
        raise PiperctlError(
            f"adapter weights in {path} do not fit this model: {len(result.unexpected_keys)} unexpected, "
            f"{len(missing)} missing tensors (e.g. {example})",
            code="weights-mismatch",
        )


def trainable_param_groups(policy: Any) -> Any:
    """The policy's optimizer parameter groups (lerobot's `get_optim_params`) holding only trainable tensors."""
    params = policy.get_optim_params()
    if isinstance(params, dict):
        return params  # several named optimizers: not supported by the loop anyway
    params = list(params)
    if params and isinstance(params[0], dict):
        return [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
    return [p for p in params if p.requires_grad]


def trainable_tensors(policy: Any) -> dict[str, Any]:
    """The parameters a fine-tuning run trains (and saves), by their names in `policy`."""
    return {n: p for n, p in policy.named_parameters() if p.requires_grad}


def save_trainable(tensors: dict[str, Any], path: Path) -> None:
    """Write trainable tensors (CPU or not) as safetensors."""
    from safetensors.torch import save_file

    save_file({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}, str(path))


def load_trainable(policy: Any, path: Path) -> None:
    """Load a fine-tuning checkpoint's tensors into `policy` (built the same way), marking exactly them trainable."""
    from safetensors.torch import load_file

    from piperctl.checkpoints.untrusted import UntrustedFileError, safetensors_header

    try:
        safetensors_header(path)
        saved = load_file(str(path))
    except UntrustedFileError as e:
        raise PiperctlError(f"{path}: {e.message}", code=e.code) from e
    except OSError as e:
        raise PiperctlError(f"{path} cannot be read ({e.strerror or e})", code="unreadable") from e
    params = dict(policy.named_parameters())
    unexpected = [n for n in saved if n not in params]
    # A PEFT model's adapter tensors must all be there; with --freeze only, the file says what is trained.
    is_peft = hasattr(policy, "peft_config")
    adapters = [n for n, p in params.items() if is_peft and p.requires_grad and n not in saved]
    shapes = [n for n in saved if n in params and tuple(params[n].shape) != tuple(saved[n].shape)]
    if unexpected or adapters or shapes:
        example = (unexpected or adapters or shapes)[0]
        raise PiperctlError(
            f"weights in {path} do not fit this model: {len(unexpected)} unexpected, {len(adapters)} missing "
            f"trainable, {len(shapes)} mis-shaped tensors (e.g. {example})",
            code="weights-mismatch",
        )
    import torch

    with torch.no_grad():
        for name, p in params.items():
            p.requires_grad_(name in saved)
            if name in saved:
                p.copy_(saved[name])


def save_finetuned_files(
    folder: Path,
    policy_config: Any,
    tensors: dict[str, Any],
    ref: BaseRef,
    preprocessor: Any,
    postprocessor: Any,
) -> None:
    """A fine-tuning checkpoint's model half: config, trainable tensors only, the base reference, processors."""
    policy_config.save_pretrained(folder)
    save_trainable(tensors, folder / fmt.POLICY_WEIGHTS)
    write_base_ref(folder, ref)
    preprocessor.save_pretrained(folder, config_filename=fmt.PREPROCESSOR_CONFIG)
    postprocessor.save_pretrained(folder, config_filename=fmt.POSTPROCESSOR_CONFIG)


def save_peft_model(folder: Path, policy: Any, ref: BaseRef, preprocessor: Any, postprocessor: Any) -> None:
    """A PEFT model in lerobot's layout, as lerobot-train saves one: PEFT's adapter files, config.json
    (use_peft), processors; plus base_model.json. lerobot's make_policy loads it over its base."""
    policy.save_pretrained(folder)  # PEFT: adapter_model.safetensors, adapter_config.json (and a card)
    policy.config.save_pretrained(folder)
    write_base_ref(folder, ref)
    preprocessor.save_pretrained(folder, config_filename=fmt.LEROBOT_PREPROCESSOR)
    postprocessor.save_pretrained(folder, config_filename=fmt.LEROBOT_POSTPROCESSOR)
