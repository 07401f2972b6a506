"""Training on several datasets as one: which ones (`--dataset SPEC ...`), their features under the names
the policy sees (`--rename-map`), their joint units (`--convert-units`), held-out episodes and combined
normalization statistics.

One dataset (`--dataset-root`/`--dataset-id`, or one `--dataset`) is the case N=1 of the same code:
`open_sources` returns a list of one `Source`. How their frames are served and ordered is
training/mixed_data.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from piperctl.checkpoints.format import DatasetInfo, TrainingState
from piperctl.errors import PiperctlError
from piperctl.training import data
from piperctl.training.config import TrainConfig

# lerobot's bookkeeping columns: every dataset has them, the policy never sees them.
BOOKKEEPING = frozenset({"timestamp", "frame_index", "episode_index", "index", "task_index"})
# Vector features whose dimensions may be PiPER joints (converted by --convert-units).
JOINT_FEATURES = ("observation.state", "action")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset as named on the command line: a local folder, or a Hub id with an optional revision."""

    spec: str
    id: str
    root: str | None
    revision: str | None
    name: str  # short, unique within a run: messages, --val-episodes NAME:..., metrics


def spec_of(text: str) -> DatasetSpec:
    """A `--dataset` SPEC: an existing folder (or a path-like one) is local; `owner/name[@revision]` a Hub id."""
    from piperctl.hub import dataset_source

    dataset_id, root, revision = dataset_source(text)
    name = root.name if root is not None else dataset_id.split("/")[-1]
    return DatasetSpec(text, dataset_id, str(root) if root is not None else None, revision, name)


def parse_specs(cfg: TrainConfig) -> list[DatasetSpec]:
    """The run's datasets: every --dataset, or the one of --dataset-id/--dataset-root."""
    if not cfg.dataset:
        root = cfg.dataset_root
        name = Path(root).name if root else str(cfg.dataset_id).split("/")[-1]
        return [DatasetSpec(root or str(cfg.dataset_id), str(cfg.dataset_id), root, None, name)]
    specs = [spec_of(s) for s in cfg.dataset]
    seen: dict[str, str] = {}
    for s in specs:
        where = str(Path(s.root).resolve()) if s.root else f"{s.id}@{s.revision}"
        if where in seen:
            raise PiperctlError(
                f"--dataset {s.spec} names the same dataset as --dataset {seen[where]}",
                hint="name each dataset once (use --dataset-weights to draw one more often)",
            )
        seen[where] = s.spec
    names = [s.name for s in specs]
    return [
        dataclasses.replace(s, name=f"{s.name}#{i + 1}") if names.count(s.name) > 1 else s
        for i, s in enumerate(specs)
    ]


@dataclass
class Source:
    """One opened dataset of a run: its metadata as recorded, its split, and how its frames reach the policy."""

    spec: DatasetSpec
    meta: Any  # LeRobotDatasetMetadata, features under the recorded names (cameras left out removed)
    fingerprint: str
    dropped_cameras: list[str]
    train_episodes: list[int]
    val_episodes: list[int]
    rename: dict[str, str]  # recorded name -> policy name, for the features this dataset has
    units: dict[str, str] = field(default_factory=dict)  # "joints"/"gripper" -> robots' unit code
    unsure: dict[str, list[str]] = field(default_factory=dict)  # groups whose ranges fit several units
    # policy feature -> (scale, offset) per dimension, to the first dataset's units (--convert-units)
    convert: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    weight: float | None = None
    revision: str | None = None  # the Hub revision read: the spec's, or on resume the commit trained on

    @property
    def policy_features(self) -> dict[str, dict]:
        """The features the policy sees from this dataset, under the names it sees them."""
        return {self.rename.get(k, k): ft for k, ft in self.meta.features.items() if k not in BOOKKEEPING}

    def recorded_name(self, policy_name: str) -> str:
        """The name this dataset records a policy feature under."""
        return next((k for k, v in self.rename.items() if v == policy_name), policy_name)


def open_sources(cfg: TrainConfig, pins: dict[str, str] | None = None) -> list[Source]:
    """Check and open every dataset, keep the chosen cameras, split episodes; refuse datasets that do not mix.

    `pins` (dataset name -> Hub commit) reads those Hub datasets at that commit, whatever their
    revision names now: a resume reads the data its run trained on.
    """
    specs = parse_specs(cfg)
    weights = cfg.weights()
    renames = cfg.renames()
    sources = [_open_source(cfg, spec, renames, (pins or {}).get(spec.name)) for spec in specs]
    val = parse_val_episodes(cfg.val_episodes, sources)
    for s, held_out, w in zip(sources, val, weights or [None] * len(sources), strict=True):
        s.val_episodes = held_out
        s.train_episodes = [e for e in range(s.meta.total_episodes) if e not in set(held_out)]
        s.weight = w
    require_compatible(sources, renames, cfg.mixed_fps)
    set_units(sources, cfg.convert_units)
    return sources


def _open_source(cfg: TrainConfig, spec: DatasetSpec, renames: dict[str, str], pin: str | None) -> Source:
    from piperctl.datasets import inspect

    root = Path(spec.root) if spec.root else None
    if root is not None:
        data.require_dataset_folder(root)
        inspect.require_v30(root)
    revision = pin if pin and root is None else spec.revision
    meta = data.open_metadata(spec.id, root, revision=revision)
    rename = {k: v for k, v in renames.items() if k in meta.features}
    clash = [v for v in rename.values() if v in meta.features and v not in rename]
    if clash or len(set(rename.values())) < len(rename):
        raise PiperctlError(
            f"--rename-map gives dataset {spec.name} two features named {(clash or list(rename.values()))[0]}",
            hint="map each feature to a name the dataset does not already use",
        )
    cameras = inspect.select_cameras(meta.root, _recorded_cameras(meta, rename, cfg.cameras))
    if root is not None:
        # Everything lerobot would otherwise fetch from the Hub, or reject at the first step.
        inspect.require_files(root, cameras=[k for k in cameras if k in meta.video_keys])
        data.check_data_files(root)
        inspect.require_consistent_timestamps(root, fps=meta.fps, tolerance_s=cfg.tolerance_s)
    dropped = data.drop_cameras(meta, cameras)
    rename = {k: v for k, v in rename.items() if k in meta.features}
    episodes = list(range(meta.total_episodes))
    return Source(spec, meta, data.fingerprint(meta), dropped, episodes, [], rename, revision=revision)


def _recorded_cameras(meta: Any, rename: dict[str, str], cameras: str | None) -> Any:
    """--cameras names the cameras the policy sees: the keys this dataset records them under."""
    from piperctl.datasets.inspect import camera_name

    if cameras is None or cameras == "all" or not rename:
        return cameras
    by_policy_name: dict[str, str] = {}
    for key in meta.camera_keys:
        seen_as = rename.get(key, key)
        by_policy_name[seen_as] = by_policy_name[camera_name(seen_as)] = key
    return [by_policy_name.get(n.strip(), n.strip()) for n in cameras.split(",") if n.strip()]


def parse_val_episodes(spec: str | None, sources: list[Source]) -> list[list[int]]:
    """Held-out episodes per dataset: `NAME:SPEC;NAME:SPEC` names them per dataset, any other SPEC applies to each."""
    if spec in (None, "", "0"):
        return [[] for _ in sources]
    texts = per_dataset_specs(str(spec), sources, "--val-episodes")
    return [
        [] if text is None else _val_of(text, s, len(sources) > 1)
        for text, s in zip(texts, sources, strict=True)
    ]


def per_dataset_specs(spec: str, sources: list[Source], flag: str) -> list[str | None]:
    """Each dataset's part of an episode option: `NAME:SPEC;NAME:SPEC` (None for a dataset not named), or SPEC for all."""
    names = {s.spec.name: i for i, s in enumerate(sources)}
    parts = [p.strip() for p in spec.split(";") if p.strip()]
    named = [p.partition(":") for p in parts]
    if len(sources) > 1 and named and all(name in names for name, _, _ in named):
        out: list[str | None] = [None for _ in sources]
        for name, _, rest in named:
            out[names[name]] = rest
        return out
    if len(parts) > 1 or (len(sources) > 1 and any(name in names for name, _, _ in named)):
        raise PiperctlError(
            f"{flag} {spec!r} mixes per-dataset entries with others",
            hint=f"write NAME:SPEC;NAME:SPEC with names from {', '.join(names)}, or one SPEC for every dataset",
        )
    return [spec for _ in sources]


def _val_of(text: str, source: Source, many: bool) -> list[int]:
    try:
        return data.parse_val_episodes(text, source.meta.total_episodes)
    except PiperctlError as e:
        if not many:
            raise
        raise PiperctlError(f"{e.message} (dataset {source.spec.name})", hint=e.hint) from e


def require_compatible(sources: list[Source], renames: dict[str, str], mixed_fps: str = "refuse") -> None:
    """Refuse, in one line, datasets whose features (after --rename-map), or fps unless `mixed_fps`, differ from the first's."""
    first = sources[0]
    want = first.policy_features
    for s in sources[1:]:
        who = f"dataset {s.spec.name}"
        if s.meta.fps != first.meta.fps and mixed_fps == "refuse":
            raise PiperctlError(
                f"{who} is recorded at {s.meta.fps} fps and dataset {first.spec.name} at {first.meta.fps} fps",
                hint="pass --mixed-fps own-rate to sample each at its own rate (an action chunk then spans "
                "another duration in each; piperctl does not resample), or train on datasets of one frame rate",
            )
        have = s.policy_features
        missing = [k for k in want if k not in have]
        extra = [k for k in have if k not in want]
        if missing:
            key = missing[0]
            fits = [k for k in extra if _kind(have[k]) == _kind(want[key])]
            hint = (
                f"map it with --rename-map '{json.dumps({**renames, s.recorded_name(fits[0]): key})}'"
                if fits
                else "train on datasets with the same features"
                + (", or leave the camera out with --cameras" if _kind(want[key]) == "camera" else "")
            )
            others = f" (it has {', '.join(extra)})" if extra else ""
            raise PiperctlError(f"{who} has no {key}, which dataset {first.spec.name} has{others}", hint=hint)
        if extra:
            key = extra[0]
            raise PiperctlError(
                f"{who} has {s.recorded_name(key)}, which dataset {first.spec.name} does not have",
                hint="map it to a feature of the first dataset with --rename-map, or leave a camera out with --cameras",
            )
        for key, ft in want.items():
            other = have[key]
            if tuple(other["shape"]) != tuple(ft["shape"]):
                raise PiperctlError(
                    f"{who}'s {key} has shape {tuple(other['shape'])}, dataset {first.spec.name}'s {tuple(ft['shape'])}",
                    hint="train on datasets of the same shapes (image size, number of joints)",
                )
            if _kind(ft) == "vector" and not _same_names(ft.get("names"), other.get("names")):
                order = sorted(map(str, _flat(ft.get("names")))) == sorted(
                    map(str, _flat(other.get("names")))
                )
                what = "in another order" if order else "with other names"
                raise PiperctlError(
                    f"{who}'s {key} lists its dimensions {what} ({', '.join(map(str, _flat(other.get('names'))))}) "
                    f"than dataset {first.spec.name}'s ({', '.join(map(str, _flat(ft.get('names'))))})",
                    hint="train on datasets recorded with the same joints in the same order",
                )


def _kind(ft: dict) -> str:
    return "camera" if ft.get("dtype") in ("video", "image") else "vector"


def _flat(names: Any) -> list:
    if isinstance(names, dict):  # lerobot's older {"motors": [...]} form
        return [n for v in names.values() for n in (v if isinstance(v, list) else [v])]
    return list(names or [])


def _same_names(a: Any, b: Any) -> bool:
    """Same dimensions in the same order; `joint_1` and `joint_1.pos` name the same joint."""
    from piperctl.leakage.robots import normalise_name

    return [normalise_name(str(n)) for n in _flat(a)] == [normalise_name(str(n)) for n in _flat(b)]


def set_units(sources: list[Source], convert: bool) -> None:
    """Each dataset's joint units; refuse mixed units, or (`convert`) set the conversion to the first's."""
    from piperctl.leakage.robots import UNIT_TEXT, feature_units, piper_dims, unit_affine

    for s in sources:
        stats = s.meta.stats or {}
        state = stats.get("observation.state")
        names = _flat(s.meta.features.get("observation.state", {}).get("names"))
        if "piper" in str(s.meta.robot_type or "").lower() and state is not None and names:
            found = feature_units([str(n) for n in names], list(state["min"]), list(state["max"]))
            s.units = {g: u[0] for g, u in found.items() if len(u) == 1}
            s.unsure = {g: u for g, u in found.items() if len(u) > 1}
    first = sources[0]
    for s in sources[1:]:
        for a, b in ((s, first), (first, s)):
            g = next((g for g, u in a.unsure.items() if g in b.units and b.units[g] not in u), None)
            if g is not None:
                fits = " or ".join(UNIT_TEXT[u] for u in a.unsure[g])
                raise PiperctlError(
                    f"dataset {a.spec.name}'s {g} values fit {fits}, dataset {b.spec.name}'s "
                    f"{UNIT_TEXT[b.units[g]]}: they differ, and which unit to convert from is not clear",
                    hint="train on datasets recorded in one unit (the leakage scan's --robot piper profile shows them)",
                )
        differ = [
            g
            for g in ("joints", "gripper")
            if g in s.units and g in first.units and s.units[g] != first.units[g]
        ]
        if not differ:
            continue
        g = differ[0]
        if not convert:
            raise PiperctlError(
                f"dataset {s.spec.name} records its {g} in {UNIT_TEXT[s.units[g]]}, dataset "
                f"{first.spec.name} in {UNIT_TEXT[first.units[g]]}",
                hint=f"pass --convert-units to train on both in {UNIT_TEXT[first.units[g]]} (state, action and stats)",
            )
        for key in JOINT_FEATURES:
            ft = s.meta.features.get(s.recorded_name(key))
            if ft is None:
                continue
            scale, offset = [], []
            dims = piper_dims([str(n) for n in _flat(ft.get("names"))])
            for i in range(int(np.prod(ft["shape"]))):
                group = "gripper" if dims.get(i) == "gripper" else "joints"
                if i not in dims or group not in differ:
                    scale.append(1.0)
                    offset.append(0.0)
                    continue
                a_from, b_from = unit_affine(dims[i], s.units[group])
                a_to, b_to = unit_affine(dims[i], first.units[group])
                scale.append(a_to / a_from)
                offset.append(b_to - a_to * b_from / a_from)
            s.convert[key] = (scale, offset)


def policy_meta(sources: list[Source]) -> Any:
    """The metadata the policy is built from: the first dataset's, its features under the policy's names."""
    first = sources[0]
    if not first.rename:
        return first.meta
    view = copy.copy(first.meta)
    view.info = dataclasses.replace(
        first.meta.info, features={first.rename.get(k, k): v for k, v in first.meta.features.items()}
    )
    if first.meta.stats is not None:
        view.stats = {first.rename.get(k, k): v for k, v in first.meta.stats.items()}
    return view


def train_stats(sources: list[Source]) -> dict:
    """Normalization stats of the training episodes of every dataset, combined with lerobot's `aggregate_stats`.

    Each dataset's own stats first (renamed, converted to the first dataset's units), then weighted
    by frames as lerobot does; one dataset's are its own.
    """
    from lerobot.datasets.compute_stats import aggregate_stats

    per: list[dict] = []
    for s in sources:
        stats = data.train_stats(s.meta, s.train_episodes)
        stats = {s.rename.get(k, k): v for k, v in stats.items()}
        for key, (scale, offset) in s.convert.items():
            stats[key] = converted_stats(stats[key], np.asarray(scale), np.asarray(offset))
        per.append(stats)
    if len(per) == 1:
        return per[0]
    keep = set(sources[0].policy_features) | BOOKKEEPING
    return aggregate_stats([{k: v for k, v in st.items() if k in keep} for st in per])


def converted_stats(stats: dict, scale: np.ndarray, offset: np.ndarray) -> dict:
    """A feature's stats in other units (value * scale + offset): std scales, counts stay, the rest maps."""
    out = {}
    for name, value in stats.items():
        v = np.asarray(value, dtype=np.float64)
        if name == "count":
            out[name] = value
        elif name == "std":
            out[name] = (v * np.abs(scale)).astype(np.asarray(value).dtype)
        else:
            out[name] = (v * scale + offset).astype(np.asarray(value).dtype)
    return out


def records(sources: list[Source]) -> list[DatasetInfo]:
    """What a checkpoint records of each dataset: spec, revision or fingerprint, split, weight, renames, units."""
    from piperctl.leakage.robots import UNIT_TEXT

    first = sources[0]
    return [
        DatasetInfo(
            id=s.spec.id,
            root=s.spec.root,
            fingerprint=s.fingerprint,
            total_episodes=s.meta.total_episodes,
            total_frames=s.meta.total_frames,
            train_episodes=s.train_episodes,
            val_episodes=s.val_episodes,
            spec=s.spec.spec,
            name=s.spec.name,
            revision=s.spec.revision,
            commit=data.hub_commit(s.meta),
            weight=s.weight,
            rename_map=dict(s.rename),
            units={g: UNIT_TEXT[u] for g, u in s.units.items()},
            fps=s.meta.fps,
            converted_to={
                g: UNIT_TEXT[first.units[g]]
                for g in s.units
                if s.convert and g in first.units and s.units[g] != first.units[g]
            },
        )
        for s in sources
    ]


def trained_commits(state: TrainingState) -> dict[str, str]:
    """Dataset name -> the Hub commit a checkpoint's run read it at (Hub datasets only)."""
    return {
        d.name or d.id.split("/")[-1]: d.commit for d in state.all_datasets if d.commit and d.root is None
    }


def require_same_datasets(sources: list[Source], state: TrainingState, folder: Path, allow: bool) -> bool:
    """Refuse to resume on other datasets than checkpoint `folder` was trained on, unless `allow`; True when exact."""
    saved = state.all_datasets
    changed = [
        s.spec.name for i, s in enumerate(sources) if i >= len(saved) or saved[i].fingerprint != s.fingerprint
    ]
    if len(saved) != len(sources):
        what = f"{len(sources)} dataset(s), checkpoint {folder.name} was trained on {len(saved)}"
    elif changed:
        what = f"dataset {changed[0]} differs from the one checkpoint {folder.name} was trained on (fingerprint mismatch)"
    else:
        return True
    if not allow:
        raise PiperctlError(
            f"the run now has {what}" if len(saved) != len(sources) else f"the {what}",
            hint="pass --allow-dataset-change to resume on the changed dataset anyway",
        )
    return False


def describe(sources: list[Source]) -> list[str]:
    """One line per dataset for the start of a run: episodes, frames, fps, units, renames, conversion, weight."""
    from piperctl.leakage.robots import UNIT_TEXT

    lines = []
    for i, s in enumerate(sources):
        known = [f"{g} in {UNIT_TEXT[u]}" for g, u in s.units.items()]
        known += [f"{g} in {' or '.join(UNIT_TEXT[u] for u in us)}" for g, us in s.unsure.items()]
        units = ", ".join(known) or "units unknown"
        extra = "".join(f", renamed {k} -> {v}" for k, v in s.rename.items())
        if s.convert:
            first = sources[0].units
            extra += ", converted: " + ", ".join(
                f"{g} to {UNIT_TEXT[first[g]]}" for g in s.units if g in first and s.units[g] != first[g]
            )
        if s.weight is not None:
            extra += f", weight {s.weight:g}"
        lines.append(
            f"dataset {i + 1}/{len(sources)} {s.spec.name}: {s.meta.total_episodes} episodes "
            f"({len(s.train_episodes)} train / {len(s.val_episodes)} val), {s.meta.total_frames} frames, "
            f"{s.meta.fps} fps{' (its own rate: --mixed-fps own-rate)' if s.meta.fps != sources[0].meta.fps else ''}"
            f", {units}{extra}"
        )
    return lines
