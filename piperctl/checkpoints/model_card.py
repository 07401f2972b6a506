"""The model card (README.md) of a final model or an export, with the Markdown of an eval report.

`piperctl eval` writes the report (evaluation/report.py); an export embeds it here. This module reads
only the report's JSON contract (docs/export-eval.md), so that checkpoints never import evaluation.
"""

from __future__ import annotations

from typing import Any

from piperctl import __version__


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(info: dict[str, Any], eval_report: dict | None = None) -> str:
    """README.md for an export: Hub metadata, what the policy is, how it was trained and scored, how to load it."""
    import lerobot
    from huggingface_hub import ModelCardData

    dataset = info.get("dataset") or {}
    policy = info.get("policy_type") or "policy"
    ds_id = dataset.get("id")
    data = ModelCardData(
        library_name="lerobot",
        pipeline_tag="robotics",
        license="apache-2.0",
        tags=sorted({"robotics", "lerobot", "piperctl", str(policy)}),
        datasets=[ds_id] if ds_id and "/" in ds_id and not ds_id.startswith("local/") else None,
    )
    versions = info.get("versions") or {}
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {policy} policy trained with piperctl",
        "",
        f"A [lerobot](https://github.com/huggingface/lerobot) `{policy}` policy, exported by piperctl in lerobot's "
        "`pretrained_model` layout.",
        "",
        "| | |",
        "|---|---|",
        f"| policy type | `{policy}` |",
        f"| dataset | `{_fmt(ds_id)}` |",
        f"| dataset fingerprint | `{_fmt(dataset.get('fingerprint'))}` |",
        f"| episodes (train / validation) | {len(dataset.get('train_episodes') or [])} / {len(dataset.get('val_episodes') or [])} |",
        f"| optimizer steps | {_fmt(info.get('step'))} |",
        f"| train loss | {_fmt(info.get('train_loss'))} |",
        f"| validation loss | {_fmt(info.get('val_loss'))} |",
    ]
    best = info.get("best")
    if isinstance(best, dict):
        lines.append(
            f"| best checkpoint | step {best.get('step')} ({best.get('metric')} {_fmt(best.get('value'))}) |"
        )
    lines += [
        f"| piperctl | {versions.get('piperctl') or __version__} |",
        f"| lerobot | {versions.get('lerobot') or lerobot.__version__} |",
        "",
    ]
    if eval_report is not None:
        lines += ["## Open-loop evaluation", "", eval_markdown(eval_report), ""]
    lines += [
        "## How to load it",
        "",
        "```python",
        "from lerobot.configs.policies import PreTrainedConfig",
        "from lerobot.policies.factory import get_policy_class, make_pre_post_processors",
        "",
        'path = "THIS_FOLDER_OR_REPO_ID"',
        "cfg = PreTrainedConfig.from_pretrained(path)",
        "policy = get_policy_class(cfg.type).from_pretrained(path)",
        "preprocessor, postprocessor = make_pre_post_processors(cfg, pretrained_path=path)",
        "action = postprocessor(policy.select_action(preprocessor(observation)))",
        "```",
        "",
        "On the arm: `lerobot-rollout --policy.path=THIS_FOLDER_OR_REPO_ID ...`; to fine-tune: "
        "`piperctl train --init-from THIS_FOLDER_OR_REPO_ID ...` or `lerobot-train --policy.path=...`.",
        "",
        "`manifest.json` lists the sha256 of every file: `piperctl checkpoints verify FOLDER` proves the copy intact.",
        "",
    ]
    return "\n".join(lines)


def num(value: float | None) -> str:
    """A figure of an eval report as the tables show it ('-' when unknown)."""
    return "-" if value is None else f"{value:.4g}"


def cell(report: dict, name: str, stat: str, joint: str) -> str:
    """One joint's `stat` of `name` (policy, hold, repeat) in an eval report ('n/a' without that block)."""
    block = report["executed"].get(name)
    return "n/a" if block is None else num(block[stat][joint])


def verdict(report: dict) -> str:
    """One sentence: does the policy beat the baselines?"""
    s = report["summary"]
    if s["policy"] is None:
        return "no frames were scored"
    parts = []
    for name in ("hold", "repeat"):
        if name == "hold" and report.get("hold_unavailable"):
            parts.append(f"'hold' n/a: {report['hold_unavailable']}")
        elif s[name] is None:
            parts.append(f"'{name}' n/a")
        else:
            ratio = s["policy"] / s[name] if s[name] else float("inf")
            parts.append(f"{ratio:.2f}x the error of '{name}'")
    good = s["beats_hold"] is not False and s["beats_repeat"] is not False
    return ("policy beats both baselines: " if good else "policy does NOT beat the baselines: ") + ", ".join(
        parts
    )


def episode_count(report: dict) -> str:
    """'N episode(s)' of an eval report, 'of K datasets' when it covers several (their `count`, not `ids`)."""
    eps = report["episodes"]
    if "datasets" in report:
        return f"{eps['count']} episode(s) of {len(report['datasets'])} datasets"
    return f"{len(eps['ids'])} episode(s)"


def eval_markdown(report: dict) -> str:
    """The per-joint table as Markdown (for the model card)."""
    eps = report["episodes"]
    lines = [
        f"Executed action vs recorded action on {episode_count(report)} ({eps['spec']}), "
        f"{eps['scored_frames']} frames; mean absolute error in the dataset's units. "
        "Baselines: *hold* = command the current state, *repeat* = the previous recorded action.",
        "",
        "| joint | policy | hold | repeat |",
        "|---|---:|---:|---:|",
    ]
    for joint in report["joints"]:
        lines.append(
            f"| {joint} | {cell(report, 'policy', 'mae', joint)} | {cell(report, 'hold', 'mae', joint)} | "
            f"{cell(report, 'repeat', 'mae', joint)} |"
        )
    s = report["summary"]
    lines.append(f"| **normalised MAE** | {num(s['policy'])} | {num(s['hold'])} | {num(s['repeat'])} |")
    lines += ["", verdict(report) + "."]
    return "\n".join(lines)
