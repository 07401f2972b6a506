"""Exports: a model in lerobot's own `pretrained_model` layout, with a model card, sealed, and pushed to the Hub.

Checkpoints keep piperctl's file names (docs/checkpoint-format.md); an export renames the model half
to lerobot's (`model.safetensors`, `policy_preprocessor.json`, ...) so that
`PreTrainedPolicy.from_pretrained` and `make_pre_post_processors(pretrained_path=...)` load it
unchanged. Files are copied byte for byte (the weights are the checkpoint's, bit for bit), then the
folder is published through `publish` like every other folder piperctl writes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from piperctl import __version__, hub
from piperctl.checkpoints import format as fmt
from piperctl.checkpoints.integrity import publish, sha256_file
from piperctl.checkpoints.model_card import model_card
from piperctl.checkpoints.sources import ModelSource, resolve_model
from piperctl.checkpoints.untrusted import processor_config_problems
from piperctl.console import keeps_on_interrupt, log
from piperctl.errors import PiperctlError
from piperctl.fs import first_line

MODEL_INFO_FORMAT = "piperctl-model"
EVAL_REPORT = "eval.json"


@dataclass
class ExportResult:
    """What `export_model` wrote (and pushed)."""

    out: Path | None
    source: ModelSource
    repo_url: str | None = None


# ---------------------------------------------------------------------------------------------
# what the model is: piperctl.json


def _loss_at(run_dir: Path | None, step: int | None, key: str) -> float | None:
    """The last `key` in the run's metrics.jsonl at or before `step` (None when unknown)."""
    if run_dir is None or step is None:
        return None
    value = None
    for row in fmt.read_metrics(run_dir / fmt.METRICS_FILE):
        if row["step"] <= step and isinstance(row.get(key), int | float):
            value = float(row[key])
    return value


def model_info(
    state: fmt.TrainingState, run_dir: Path | None, source: str, best: fmt.BestCheckpoint | None = None
) -> dict[str, Any]:
    """piperctl.json for a model saved from training state `state` (losses read from the run's metrics)."""
    return {
        "format": MODEL_INFO_FORMAT,
        "version": 1,
        "source": source,
        "step": state.step,
        "run_id": state.run_id,
        "policy_type": state.policy_type,
        "feature_shapes": state.feature_shapes,
        "dataset": asdict(state.dataset) if state.dataset is not None else None,
        "datasets": [asdict(d) for d in state.datasets],
        "train_loss": _loss_at(run_dir, state.step, "loss"),
        "val_loss": _loss_at(run_dir, state.step, "val_loss"),
        "best": asdict(best or state.best) if (best or state.best) is not None else None,
        "versions": state.versions,
        "created": fmt.utc_now(),
    }


def write_model_info(folder: Path, info: dict[str, Any]) -> None:
    """Write piperctl.json into a folder being published."""
    (folder / fmt.MODEL_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _info_for(source: ModelSource) -> dict[str, Any]:
    if source.state is not None:
        name = "best" if source.kind == "best" else source.folder.name
        return model_info(source.state, source.run_dir, name, source.best)
    if source.info is not None:
        return dict(source.info)
    from piperctl.checkpoints.model import load_policy_config

    cfg = load_policy_config(source.folder, "cpu")
    return {
        "format": MODEL_INFO_FORMAT,
        "version": 1,
        "source": str(source.folder),
        "step": None,
        "policy_type": cfg.type,
        "dataset": None,
        "created": fmt.utc_now(),
    }


# ---------------------------------------------------------------------------------------------
# the folder


def _copy(src: Path, dst: Path) -> None:
    # Plain bytes: the export's weights are the checkpoint's, bit for bit (no re-serialisation).
    shutil.copyfile(src, dst)


def _copy_processor(source: ModelSource, name: str, new_name: str, tmp: Path) -> None:
    """Copy a processor config under lerobot's name, with the state files it names (checked first)."""
    problems = processor_config_problems(source.folder, name)
    if problems:
        raise PiperctlError(
            f"{source.folder}: {problems[0].message}", hint="the model's processors are unsafe or damaged"
        )
    config = json.loads((source.folder / name).read_text(encoding="utf-8"))
    _copy(source.folder / name, tmp / new_name)
    for step in config["steps"]:
        state_file = step.get("state_file")
        if state_file and not (tmp / state_file).exists():
            _copy(source.folder / state_file, tmp / state_file)


def lerobot_writer(
    source: ModelSource, info: dict[str, Any], eval_report: dict | None = None, merge: bool = False
):
    """A `publish` writer that fills a folder with `source`'s model in lerobot's layout, card and info.

    A fine-tuning checkpoint (trainable tensors over a base) is rebuilt over its base and written
    whole, or as a PEFT adapter folder that lerobot's make_policy loads over the same base;
    `merge` writes a PEFT model as a plain one with the adapter merged in.
    """

    def write(tmp: Path) -> None:
        layout = source.layout
        if (source.folder / fmt.BASE_REF).is_file():
            _write_finetuned(source, tmp, merge)
        else:
            _copy(source.folder / layout.weights, tmp / fmt.LEROBOT_WEIGHTS)
            _copy(source.folder / fmt.POLICY_CONFIG, tmp / fmt.POLICY_CONFIG)
        _copy_processor(source, layout.preprocessor, fmt.LEROBOT_PREPROCESSOR, tmp)
        _copy_processor(source, layout.postprocessor, fmt.LEROBOT_POSTPROCESSOR, tmp)
        write_model_info(tmp, info)
        if eval_report is not None:
            (tmp / EVAL_REPORT).write_text(json.dumps(eval_report, indent=2) + "\n", encoding="utf-8")
        (tmp / fmt.MODEL_CARD).write_text(model_card(info, eval_report), encoding="utf-8")

    return write


def _write_finetuned(source: ModelSource, tmp: Path, merge: bool) -> None:
    """The model files of a fine-tuning model: rebuilt over its checked base, then saved as lerobot loads them."""
    from piperctl.checkpoints import adapters
    from piperctl.checkpoints.model import load_finetuned, load_peft_model, load_policy_config

    cfg = load_policy_config(source.folder, "cpu")
    if source.layout is fmt.PEFT_LAYOUT:
        policy = load_peft_model(source.folder, cfg, "cpu")
    else:
        policy = load_finetuned(source.folder, cfg, "cpu")
    ref = adapters.read_base_ref(source.folder)
    if ref is not None and ref.peft is not None and not merge:
        policy.save_pretrained(tmp)  # PEFT: adapter_model.safetensors, adapter_config.json
        policy.config.save_pretrained(tmp)
        adapters.write_base_ref(tmp, ref)
        return
    if ref is not None and ref.peft is not None:
        policy = policy.merge_and_unload()
        policy.config.use_peft = False
    policy.config.pretrained_path = None
    policy.save_pretrained(tmp)  # the whole model: model.safetensors, config.json


def load_eval_report(path: Path, source: ModelSource) -> dict:
    """An `eval --json` report for `source`'s weights (a report about other weights is refused)."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise PiperctlError(f"--eval-report {path} does not exist") from e
    except (OSError, ValueError) as e:
        raise PiperctlError(f"--eval-report {path} is not valid JSON ({e})") from e
    if not isinstance(report, dict) or report.get("format") != "piperctl-eval":
        raise PiperctlError(f"--eval-report {path} is not a 'piperctl eval --json' report")
    digest = (report.get("model") or {}).get("weights_sha256")
    if digest != weights_digest(source.folder, source.layout):
        raise PiperctlError(
            f"--eval-report {path} evaluated other weights than {source.description}",
            hint=f"run 'piperctl eval {source.folder} --json' for this model",
        )
    return report


def export_model(
    path: str | Path,
    out: str | Path | None,
    *,
    force: bool = False,
    final: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    eval_report: str | Path | None = None,
    merge: bool = False,
) -> ExportResult:
    """Export the model at `path` (a run: its best checkpoint by default) to folder `out`, and optionally push it."""
    source = resolve_model(path, final=final)
    if push_to_hub is not None:
        hub_preflight(push_to_hub)  # before anything is written: offline or logged out fails cleanly
    if out is None:
        if push_to_hub is None:
            raise PiperctlError(
                "no OUT folder given", hint="pass OUT, or --push-to-hub REPO_ID for an exported model"
            )
        if source.kind != "model" or source.layout not in (fmt.LEROBOT_LAYOUT, fmt.PEFT_LAYOUT):
            raise PiperctlError(
                f"{path} is not an exported model",
                hint="pass an OUT folder to export it first (it is pushed from there)",
            )
        log(f"pushing {source.description}")
        return ExportResult(None, source, push_folder(source.folder, push_to_hub, private))
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise PiperctlError(f"{out} is a file", hint="choose a folder to export into")
        if any(out.iterdir()) and not force:
            raise PiperctlError(f"{out} already exists and is not empty", hint="pass --force to replace it")
        if out.resolve() == source.folder.resolve() or out.resolve() in source.folder.resolve().parents:
            raise PiperctlError(f"{out} holds the model being exported", hint="choose another OUT folder")
    report = load_eval_report(Path(eval_report), source) if eval_report is not None else None
    info = _info_for(source)
    log(f"exporting {source.description}")
    try:
        publish(out, lerobot_writer(source, info, report, merge), source.step)
    except OSError as e:
        raise PiperctlError(
            f"cannot write {out} ({e.strerror or e})", hint="check the path, permissions and free space"
        ) from e
    url = None
    if push_to_hub is not None:
        # One Hub commit: an interrupted upload leaves the repo as it was, and OUT as written.
        with keeps_on_interrupt(
            f"{out} was written; nothing was pushed to {push_to_hub} (push it with "
            f"'piperctl export {out} --push-to-hub {push_to_hub}')"
        ):
            url = push_folder(out, push_to_hub, private)
    return ExportResult(out, source, url)


# ---------------------------------------------------------------------------------------------
# the Hub


def hub_preflight(repo_id: str) -> None:
    """Refuse a push that cannot work (bad id, offline, not logged in) before anything is written."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except Exception as e:  # noqa: BLE001 - HFValidationError
        raise PiperctlError(
            f"--push-to-hub {repo_id!r} is not a valid repo id ({e})", hint="use OWNER/NAME"
        ) from e
    if "/" not in repo_id:
        raise PiperctlError(
            f"--push-to-hub {repo_id!r} is not OWNER/NAME", hint="e.g. --push-to-hub me/piper_act"
        )
    if hub.offline():
        raise PiperctlError(
            f"cannot push to {repo_id}: HF_HUB_OFFLINE is set, nothing was pushed",
            hint="unset HF_HUB_OFFLINE and retry when online",
        )
    if get_token() is None:
        raise PiperctlError(
            f"cannot push to {repo_id}: not logged in to the Hugging Face Hub, nothing was pushed",
            hint="run 'hf auth login' or set HF_TOKEN",
        )


def push_folder(folder: Path, repo_id: str, private: bool) -> str:
    """Create the Hub repo (if needed) and upload the folder in one commit; the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        # One commit: the Hub shows either the whole export or none of it.
        api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=f"Upload policy exported by piperctl {__version__}",
        )
    except Exception as e:  # noqa: BLE001 - network, auth and Hub errors come in many types
        status = getattr(getattr(e, "response", None), "status_code", None)
        why = "not authorised (check your token's write access)" if status in (401, 403) else first_line(e)
        raise PiperctlError(
            f"push to {repo_id} failed: {why}; nothing was committed",
            hint=f"the export in {folder} is complete: retry with 'piperctl export {folder} --push-to-hub {repo_id}'",
        ) from e
    url = str(getattr(repo, "url", f"https://huggingface.co/{repo_id}"))
    log(f"pushed to {url}")
    return url


def weights_digest(folder: Path, layout: fmt.ModelLayout) -> str:
    """sha256 of a model folder's weights file (what an eval report names its model by)."""
    return sha256_file(folder / layout.weights)
