"""The `piperctl eval` report: one JSON document (docs/export-eval.md) and a Rich table.

Its Markdown for model cards, and the verdict sentence both share, live one floor down in
`checkpoints/model_card.py`, so that export never imports evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from piperctl.checkpoints.model_card import cell as _cell
from piperctl.checkpoints.model_card import num as _num
from piperctl.checkpoints.model_card import verdict
from piperctl.evaluation import baselines as bl
from piperctl.evaluation.metrics import ErrorStats

FORMAT = "piperctl-eval"
VERSION = 1
NAMES = ("policy", "hold", "repeat")


def _stats_json(stats: ErrorStats | None, joints: list[str], scale: np.ndarray) -> dict | None:
    return None if stats is None else stats.to_json(joints, scale)


def build_report(
    *,
    source: Any,
    weights_sha256: str,
    policy_type: str,
    meta: Any,
    dataset_root: str,
    fingerprint: str,
    episodes_spec: str,
    episodes: list[int],
    recorded: dict[int, bl.Episode],
    scores: Any,
    pairing: bl.Pairing | None,
    hold_unavailable: str | None,
    joints: list[str],
    scale: np.ndarray,
    seed: int,
    device: str,
) -> dict:
    """The JSON report of one evaluation."""
    executed = {name: _stats_json(scores.executed.get(name), joints, scale) for name in NAMES}
    horizon = [
        {"step": h, **{name: _stats_json(slot.get(name), joints, scale) for name in NAMES}}
        for h, slot in enumerate(scores.by_horizon)
    ]
    summary = {name: (executed[name] or {}).get("nmae") for name in NAMES}
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {
            "path": str(source.folder),
            "description": source.description,
            "kind": source.kind,
            "policy_type": policy_type,
            "step": source.step,
            "weights_sha256": weights_sha256,
        },
        "dataset": {"root": dataset_root, "fingerprint": fingerprint, "fps": meta.fps},
        "episodes": {
            "spec": episodes_spec,
            "ids": episodes,
            "frames": sum(r.frames for r in recorded.values()),
            "scored_frames": sum(max(r.frames - 1, 0) for r in recorded.values()),
        },
        "joints": joints,
        "action_scale": [float(x) for x in scale],
        "hold_pairing": pairing.mode if pairing is not None else None,
        "hold_unavailable": hold_unavailable,
        "seed": seed,
        "device": device,
        "executed": executed,
        "chunk": {"chunks": scores.chunks, "horizon": len(horizon), "by_step": horizon},
        "summary": {
            "metric": "nmae",
            **summary,
            "beats_hold": _beats(summary["policy"], summary["hold"]),
            "beats_repeat": _beats(summary["policy"], summary["repeat"]),
        },
    }


def _beats(policy: float | None, baseline: float | None) -> bool | None:
    return None if policy is None or baseline is None else policy < baseline


def _horizon_mae(block: dict | None) -> str:
    if block is None or not block["frames"]:
        return "n/a"
    return _num(float(np.mean([v for v in block["mae"].values() if v is not None])))


def print_report(report: dict) -> None:
    """Rich tables on stdout: per joint (policy beside both baselines), chunk error by step, and a verdict."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from piperctl.console import out

    eps = report["episodes"]
    title = (
        f"open-loop action error of {escape(report['model']['description'])} on {len(eps['ids'])} episode(s) "
        f"({eps['scored_frames']} scored frames), in the dataset's units"
    )
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    if report.get("hold_unavailable"):
        table.caption = f"hold n/a: {escape(report['hold_unavailable'])}"
        table.caption_justify = "left"
    table.add_column("joint")
    for head in ("policy MAE", "hold MAE", "repeat MAE", "policy RMSE", "policy max"):
        table.add_column(head, justify="right")
    for joint in report["joints"]:
        table.add_row(
            escape(joint),
            _cell(report, "policy", "mae", joint),
            _cell(report, "hold", "mae", joint),
            _cell(report, "repeat", "mae", joint),
            _cell(report, "policy", "rmse", joint),
            _cell(report, "policy", "max", joint),
        )
    s = report["summary"]
    table.add_row("[bold]normalised MAE[/]", _num(s["policy"]), _num(s["hold"]), _num(s["repeat"]), "", "")
    out.print(table)
    if report["chunk"]["by_step"]:
        chunk = Table(
            title=f"predicted chunk: mean MAE over joints by step ({report['chunk']['chunks']} chunks)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
        )
        for head in ("step", "policy", "hold", "repeat"):
            chunk.add_column(head, justify="right")
        for row in report["chunk"]["by_step"]:
            chunk.add_row(str(row["step"]), *(_horizon_mae(row[n]) for n in NAMES))
        out.print(chunk)
    out.print(verdict(report), highlight=False)
