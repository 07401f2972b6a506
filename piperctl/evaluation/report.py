"""The `piperctl eval` report: one JSON document (docs/export-eval.md) and a Rich table.

Its Markdown for model cards, and the verdict sentence both share, live one floor down in
`checkpoints/model_card.py`, so that export never imports evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from piperctl.checkpoints.model_card import cell as _cell
from piperctl.checkpoints.model_card import episode_count, verdict
from piperctl.checkpoints.model_card import num as _num
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
        **scores_json(scores, joints, scale),
    }


def scores_json(scores: Any, joints: list[str], scale: np.ndarray) -> dict:
    """A report's `executed`, `chunk` and `summary` of one set of scores."""
    executed = {name: _stats_json(scores.executed.get(name), joints, scale) for name in NAMES}
    horizon = [
        {"step": h, **{name: _stats_json(slot.get(name), joints, scale) for name in NAMES}}
        for h, slot in enumerate(scores.by_horizon)
    ]
    summary = {name: (executed[name] or {}).get("nmae") for name in NAMES}
    return {
        "executed": executed,
        "chunk": {"chunks": scores.chunks, "horizon": len(horizon), "by_step": horizon},
        "summary": {
            "metric": "nmae",
            **summary,
            "beats_hold": _beats(summary["policy"], summary["hold"]),
            "beats_repeat": _beats(summary["policy"], summary["repeat"]),
        },
    }


def combine_reports(parts: list[tuple[str, dict]], overall: Any) -> dict:
    """The report over several datasets: every scored frame pooled (`weighting` "frames"), and each dataset's own.

    The overall `executed`, `chunk` and `summary` have the one-dataset report's shape; `datasets`
    lists each dataset's `name`, `dataset`, `episodes`, `executed`, `chunk` and `summary`.
    """
    first = parts[0][1]
    scale = np.asarray(first["action_scale"], dtype=np.float64)
    keep = ("dataset", "episodes", "executed", "chunk", "summary")
    return {
        **{k: first[k] for k in ("format", "version", "model")},
        "weighting": "frames",
        "episodes": {
            "spec": first["episodes"]["spec"],
            "count": sum(len(r["episodes"]["ids"]) for _, r in parts),
            "frames": sum(r["episodes"]["frames"] for _, r in parts),
            "scored_frames": sum(r["episodes"]["scored_frames"] for _, r in parts),
        },
        **{
            k: first[k]
            for k in ("joints", "action_scale", "hold_pairing", "hold_unavailable", "seed", "device")
        },
        **scores_json(overall, first["joints"], scale),
        "datasets": [{"name": name, **{k: r[k] for k in keep}} for name, r in parts],
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
        f"open-loop action error of {escape(report['model']['description'])} on {episode_count(report)} "
        f"({eps['scored_frames']} scored frames), in the {'first ' if 'datasets' in report else ''}dataset's units"
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
    if "datasets" in report:
        per = Table(
            title="normalised MAE per dataset; overall: every scored frame of every dataset alike (frame-weighted)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
        )
        per.add_column("dataset")
        for head in ("episodes", "scored frames", "policy", "hold", "repeat"):
            per.add_column(head, justify="right")
        for d in report["datasets"]:
            e, ds = d["episodes"], d["summary"]
            row = (len(e["ids"]), e["scored_frames"], ds["policy"], ds["hold"], ds["repeat"])
            per.add_row(escape(d["name"]), str(row[0]), str(row[1]), *map(_num, row[2:]))
        per.add_row("[bold]overall[/]", str(eps["count"]), str(eps["scored_frames"]), _num(s["policy"]),
                    _num(s["hold"]), _num(s["repeat"]))  # fmt: skip
        out.print(per)
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
