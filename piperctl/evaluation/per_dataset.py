"""Open-loop evaluation over several datasets (`train --dataset A --dataset B`): per dataset and overall.

Each dataset's frames reach the policy as they did in training (features renamed with the run's
`--rename-map`, joints converted with `--convert-units`), and its recorded actions and states are
converted alike, so every error is in the units the policy was trained in (the first dataset's).

One scale for all: `nmae` divides each joint's MAE by the action's standard deviation over every
evaluated dataset (their `meta/stats.json` combined with lerobot's `aggregate_stats`, weighted by
frames; one dataset's own). The overall figures pool every scored frame of every dataset, so the
overall `nmae` is the frame-weighted mean of the per-dataset ones (weighting "frames").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from piperctl.evaluation import baselines as bl
from piperctl.evaluation.openloop import Evaluation, PolicyRun, Scores, frames_dataset, run_policy, score
from piperctl.training.mixed_data import ItemMap
from piperctl.training.multi_dataset import Source, converted_stats

WEIGHTING = "frames"  # the overall figures pool every scored frame of every dataset alike


class _Mapped:
    """A dataset whose items reach the policy renamed and converted, as in training."""

    def __init__(self, dataset: Any, item_map: ItemMap) -> None:
        self.dataset, self.item_map = dataset, item_map

    def __getitem__(self, index: int) -> dict:
        return self.item_map(self.dataset[index])


def recorded_episodes(source: Source, episodes: list[int]) -> dict[int, bl.Episode]:
    """A dataset's recorded actions and states of `episodes`, in the policy's units (--convert-units)."""
    recorded = bl.read_episodes(source.meta.root, episodes, source.meta.features)
    for key, (scale, offset) in source.convert.items():
        a, b = np.asarray(scale, dtype=np.float64), np.asarray(offset, dtype=np.float64)
        for ep in recorded.values():
            if key == bl.ACTION:
                ep.action = ep.action * a + b
            elif key == bl.STATE and ep.state is not None:
                ep.state = ep.state * a + b
    return recorded


def run_source(
    policy: Any,
    preprocessor: Any,
    postprocessor: Any,
    source: Source,
    episodes: list[int],
    *,
    seed: int,
    progress: bool,
) -> dict[int, PolicyRun]:
    """Run the policy over `episodes` of one dataset, fed as in training (renamed, converted)."""
    dataset = frames_dataset(source.spec.id, source.spec.root, tuple(source.dropped_cameras), source.revision)
    item_map = ItemMap(source)
    cameras = [source.rename.get(k, k) for k in source.meta.camera_keys]
    return run_policy(
        policy, preprocessor, postprocessor, dataset if item_map.identity else _Mapped(dataset, item_map),
        source.meta, episodes, seed=seed, progress=progress, camera_keys=cameras,
    )  # fmt: skip


def action_scale(sources: list[Source], joints: int) -> np.ndarray:
    """Per-joint action standard deviation over every dataset (stats combined, in the policy's units)."""
    from lerobot.datasets.compute_stats import aggregate_stats

    per = []
    for s in sources:
        stats = dict((s.meta.stats or {}).get(s.recorded_name(bl.ACTION)) or {})
        if "std" not in stats:
            return np.ones(joints)
        stats.setdefault("count", np.array([s.meta.total_frames]))
        if bl.ACTION in s.convert:
            scale, offset = s.convert[bl.ACTION]
            stats = converted_stats(stats, np.asarray(scale), np.asarray(offset))
        per.append({bl.ACTION: stats})
    std = per[0][bl.ACTION]["std"] if len(per) == 1 else aggregate_stats(per)[bl.ACTION]["std"]
    return np.asarray(std, dtype=np.float64).reshape(-1)[:joints]


@dataclass
class DatasetScores:
    """One dataset's evaluated episodes, recorded (policy units) and as the policy ran them, and their errors."""

    source: Source
    episodes: list[int]
    recorded: dict[int, bl.Episode]
    runs: dict[int, PolicyRun]
    scores: Scores

    @property
    def scored_frames(self) -> int:
        """Frames scored: every frame but each episode's first."""
        return sum(max(r.frames - 1, 0) for r in self.recorded.values())


def evaluate_sources(
    policy: Any,
    preprocessor: Any,
    postprocessor: Any,
    sources: list[Source],
    episodes: list[list[int]],
    *,
    seed: int,
    pairing: bl.Pairing | None,
    progress: bool,
) -> tuple[list[DatasetScores], Scores]:
    """Score `episodes[d]` of every dataset d (skipping those with none): per dataset, and every frame pooled."""
    parts: list[DatasetScores] = []
    for source, eps in zip(sources, episodes, strict=True):
        if not eps:
            continue
        # Run first: a Hub dataset's data files are downloaded then, and read back for the recording.
        runs = run_source(policy, preprocessor, postprocessor, source, eps, seed=seed, progress=progress)
        recorded = recorded_episodes(source, eps)
        parts.append(DatasetScores(source, eps, recorded, runs, score(recorded, runs, pairing)))
    # Keys (dataset, episode): the episode numbers of two datasets overlap.
    pooled_recorded = {(p.source.spec.name, e): r for p in parts for e, r in p.recorded.items()}
    pooled_runs = {(p.source.spec.name, e): r for p in parts for e, r in p.runs.items()}
    overall = parts[0].scores if len(parts) == 1 else score(pooled_recorded, pooled_runs, pairing)
    return parts, overall


def score_during_training(
    policy: Any, preprocessor: Any, postprocessor: Any, sources: list[Source], *, seed: int
) -> dict[str, float]:
    """`val_action_nmae` on every dataset's held-out episodes (and `val_action_nmae/NAME` of each when several).

    Fits `piperctl.training.scoring.OpenLoopScorer`: `piperctl.train` hands it to the trainer. A
    dataset, or the whole, with nothing scored gives inf.
    """
    held = [s for s in sources if s.val_episodes]
    if not held:
        return {"val_action_nmae": float("inf")}
    parts, overall = evaluate_sources(
        policy, preprocessor, postprocessor, held, [s.val_episodes for s in held],
        seed=seed, pairing=None, progress=False,
    )  # fmt: skip
    joints = int(np.prod(sources[0].policy_features[bl.ACTION]["shape"]))
    scale = action_scale(held, joints)

    def nmae(scores: Scores) -> float:
        stats = scores.executed["policy"]
        value = stats.nmae(scale) if stats is not None else None
        return float("inf") if value is None else value

    out = {"val_action_nmae": nmae(overall)}
    if len(sources) > 1:
        out |= {f"val_action_nmae/{p.source.spec.name}": nmae(p.scores) for p in parts}
    return out


def _episodes_of(sources: list[Source], spec: str | None, model: Any) -> tuple[str, list[list[int]]]:
    """Each dataset's episodes: SPEC for every dataset, NAME:SPEC;... per dataset, or the run's held-out ones."""
    from piperctl.console import log
    from piperctl.errors import PiperctlError
    from piperctl.evaluation.openloop import parse_episodes
    from piperctl.training.multi_dataset import per_dataset_specs

    trained = {d.get("fingerprint"): d for d in model.datasets}
    texts = [None for _ in sources] if spec is None else per_dataset_specs(spec, sources, "--episodes")
    chosen = []
    for s, text in zip(sources, texts, strict=True):
        held = [int(e) for e in (trained.get(s.fingerprint) or {}).get("val_episodes") or []]
        if spec is not None and text is None:  # NAME:SPEC entries that leave this dataset out
            chosen.append([])
            continue
        if text is None:
            text = "val" if held else "all"
            if not held:
                log(
                    f"dataset {s.spec.name}: evaluating on every episode: the model records no held-out "
                    "episodes of this dataset, so it may have trained on them"
                )
        elif text.strip().lower() == "val" and s.fingerprint not in trained:
            raise PiperctlError(
                f"--episodes val: dataset {s.spec.name} is not one the model was trained on (fingerprint differs)",
                hint="pass --episodes A:B or i,j",
            )
        try:
            chosen.append(parse_episodes(text, s.meta.total_episodes, held))
        except PiperctlError as e:
            raise PiperctlError(f"{e.message} (dataset {s.spec.name})", hint=e.hint) from e
    return spec or "val", chosen


def trained_on(model: Any) -> tuple[list[str], str | None, bool]:
    """The datasets a model records it trained on, as `--dataset` specs (a Hub one at its commit),
    with the run's rename map and unit conversion; refused in one line when unknown or gone."""
    import json

    from piperctl.errors import PiperctlError

    records = model.datasets
    if not records:
        raise PiperctlError(
            f"{model.description} records no dataset it was trained on",
            hint="name the data with --dataset-root DIR (one dataset) or --dataset DIR (repeatable)",
        )
    specs = []
    for d in records:
        if d.get("root"):
            if not (Path(d["root"]) / "meta" / "info.json").is_file():
                raise PiperctlError(
                    f"the model was trained on {d['root']}, which is no longer a dataset folder",
                    hint="name where it is now with --dataset-root DIR (or --dataset DIR for each dataset)",
                )
            specs.append(str(d["root"]))
        else:
            at = d.get("commit") or d.get("revision")
            specs.append(f"{d['id']}@{at}" if at else str(d["id"]))
    renames = {k: v for d in records for k, v in (d.get("rename_map") or {}).items()}
    convert = any(d.get("converted_to") for d in records)
    return specs, json.dumps(renames) if renames else None, convert


def evaluate_datasets(
    model_path: str | Path,
    datasets: list[str] | None,
    *,
    rename_map: str | None = None,
    convert_units: bool = False,
    episodes: str | None = None,
    device: str = "auto",
    seed: int = 0,
    final: bool = False,
) -> Evaluation:
    """Open-loop evaluation of the model at `model_path` on several local datasets, as `train --dataset` mixes them.

    One dataset gives the one-dataset report; several give each one's and every frame pooled
    (`report.combine_reports`). No `datasets`: those the model trained on, as it was trained on them.
    """
    from piperctl.checkpoints.export import weights_digest
    from piperctl.checkpoints.model import load_model
    from piperctl.checkpoints.sources import check_features_fit, resolve_model
    from piperctl.console import log
    from piperctl.datasets.inspect import camera_name
    from piperctl.evaluation.report import build_report, combine_reports
    from piperctl.training.config import TrainConfig, resolve_device
    from piperctl.training.multi_dataset import open_sources, policy_meta

    model = resolve_model(model_path, final=final)
    if datasets is None:
        datasets, rename_map, convert_units = trained_on(model)
        log(f"evaluating on the data the model was trained on: {', '.join(datasets)}")
    device = resolve_device(device)
    loaded = load_model(model.folder, device, model.layout)
    options = {
        "dataset": [str(d) for d in datasets],
        "rename_map": rename_map,
        "convert_units": convert_units,
        # The cameras the policy sees, by its names: one a run left out is neither required nor decoded.
        "cameras": ",".join(camera_name(k) for k in loaded.config.image_features) or None,
    }
    sources = open_sources(TrainConfig.from_options("", None, options))
    spec, chosen = _episodes_of(sources, episodes, model)
    n = sum(map(len, chosen))
    log(f"evaluating {model.description} on {n} episode(s) of {len(sources)} dataset(s) ({device})")
    features = policy_meta(sources).features
    check_features_fit(loaded.config, policy_meta(sources), f"the model ({model.description})")
    pairing = bl.hold_pairing(features)
    joints = bl.joint_names(features)
    parts, overall = evaluate_sources(
        loaded.policy, loaded.preprocessor, loaded.postprocessor, sources, chosen,
        seed=seed, pairing=pairing, progress=True,
    )  # fmt: skip
    scale = action_scale([p.source for p in parts], len(joints))
    digest = weights_digest(model.folder, model.layout)
    reports = [
        (
            p.source.spec.name,
            build_report(
                source=model,
                weights_sha256=digest,
                policy_type=loaded.config.type,
                meta=p.source.meta,
                dataset_root=str(p.source.spec.root),
                fingerprint=p.source.fingerprint,
                episodes_spec=spec,
                episodes=p.episodes,
                recorded=p.recorded,
                scores=p.scores,
                pairing=pairing,
                hold_unavailable=bl.hold_unavailable(features),
                joints=joints,
                scale=scale,
                seed=seed,
                device=device,
            ),  # fmt: skip
        )
        for p in parts
    ]
    report = reports[0][1] if len(reports) == 1 else combine_reports(reports, overall)
    many = len(parts) > 1
    recorded = {(p.source.spec.name, e) if many else e: r for p in parts for e, r in p.recorded.items()}
    runs = {(p.source.spec.name, e) if many else e: r for p in parts for e, r in p.runs.items()}
    return Evaluation(report, recorded, runs, pairing, joints)
