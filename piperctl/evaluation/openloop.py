"""Open-loop evaluation: run a policy frame by frame over recorded episodes, as it would act on the arm.

The policy is in eval mode with the run's own processors; each episode starts with `policy.reset()`
and a seeded generator (diffusion samples noise), and observations are fed one frame at a time.
The action `select_action` returns at frame t is the *executed* action, compared with the recorded
`action` at t. Each chunk the policy predicts (at the frames where it re-plans) is compared, step h
of the chunk with the recorded action at t+h, where the episode has one.

Scored frames are every frame but each episode's first (where "repeat the previous action" has no
previous action), for the policy and both baselines alike. docs/export-eval.md has the JSON contract.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from piperctl.errors import PiperctlError
from piperctl.evaluation import baselines as bl
from piperctl.evaluation.metrics import ErrorStats, error_stats


@dataclass
class PolicyRun:
    """What the policy did on one episode: executed actions and the chunks it predicted."""

    executed: np.ndarray  # (T, A) in dataset units
    chunks: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (frame t, (H, A))


def parse_episodes(spec: str, total: int, val: list[int]) -> list[int]:
    """Episodes to evaluate: 'val' (the run's held-out ones), 'all', or ids as A:B (B exclusive) and/or i,j."""
    text = spec.strip().lower()
    if text == "val":
        if not val:
            raise PiperctlError(
                "--episodes val: the model has no held-out validation episodes",
                hint="pass --episodes A:B or i,j (episodes it did not train on), or 'all'",
            )
        chosen = set(val)
    elif text == "all":
        chosen = set(range(total))
    else:
        from piperctl.training.data import parse_episode_ids

        chosen = parse_episode_ids(text, total, "--episodes", "use val, all, a range 8:10 or ids 3,7")
    if not chosen:
        raise PiperctlError(f"--episodes {spec!r} selects no episode")
    return sorted(chosen)


@functools.lru_cache(maxsize=4)
def frames_dataset(
    dataset_id: str, root: str | None, drop: tuple[str, ...] = (), revision: str | None = None
) -> Any:
    """The dataset without history or future frames: one observation per index, as the arm sees it."""
    from piperctl.training.data import open_dataset

    return open_dataset(dataset_id, root, None, drop=list(drop), revision=revision)


def _observation(item: dict, camera_keys: list[str]) -> dict:
    """The observation part of a dataset item, as the robot would hand it over (unbatched)."""
    obs = {k: v for k, v in item.items() if k.startswith("observation.")}
    for key in camera_keys:
        if key in obs and obs[key].dtype == torch.uint8:
            obs[key] = obs[key].to(torch.float32) / 255.0
    if "task" in item:
        obs["task"] = item["task"]
    return obs


def run_policy(
    policy: Any,
    preprocessor: Any,
    postprocessor: Any,
    dataset: Any,
    meta: Any,
    episodes: list[int],
    *,
    seed: int = 0,
    progress: bool = True,
    camera_keys: list[str] | None = None,
) -> dict[int, PolicyRun]:
    """Feed each episode frame by frame to the policy; executed actions and predicted chunks, unnormalised.

    `camera_keys`: the cameras under the names `dataset`'s items carry (default: `meta`'s).
    """
    from piperctl.console import progress_bar

    starts = meta.episodes["dataset_from_index"]
    ends = meta.episodes["dataset_to_index"]
    total = sum(int(ends[e]) - int(starts[e]) for e in episodes)
    cameras = list(meta.camera_keys) if camera_keys is None else camera_keys
    device = next(iter(policy.parameters())).device
    original = policy.predict_action_chunk
    captured: list[torch.Tensor] = []

    def capture(*args: Any, **kwargs: Any) -> torch.Tensor:
        chunk = original(*args, **kwargs)
        captured.append(chunk)
        return chunk

    runs: dict[int, PolicyRun] = {}
    was_training = policy.training
    policy.eval()
    # An instance attribute shadows the method for this evaluation only; select_action calls it.
    policy.predict_action_chunk = capture
    forked = [device] if device.type == "cuda" else []
    try:
        with (
            torch.random.fork_rng(devices=forked),
            torch.inference_mode(),
            progress_bar("evaluating (frames)", total) if progress else nullcontext() as bar,
        ):
            for ep in episodes:
                torch.manual_seed(seed + ep)
                policy.reset()
                executed: list[np.ndarray] = []
                run = PolicyRun(np.empty(0))
                for t, index in enumerate(range(int(starts[ep]), int(ends[ep]))):
                    obs = preprocessor(_observation(dataset[index], cameras))
                    action = postprocessor(policy.select_action(obs))
                    executed.append(action.reshape(-1).to("cpu", torch.float64).numpy())
                    for chunk in captured:
                        flat = chunk.reshape(-1, chunk.shape[-1])
                        run.chunks.append((t, postprocessor(flat).to("cpu", torch.float64).numpy()))
                    captured.clear()
                    if bar is not None:
                        bar.update(1, episode=ep)
                run.executed = np.stack(executed)
                runs[ep] = run
    finally:
        del policy.predict_action_chunk
        policy.reset()
        policy.train(was_training)
    return runs


@dataclass
class Scores:
    """Error statistics of the policy and both baselines: executed action, and chunk step by step."""

    executed: dict[str, ErrorStats | None]  # "policy" | "hold" | "repeat"
    by_horizon: list[dict[str, ErrorStats | None]]
    chunks: int


def score(
    recorded: dict[int, bl.Episode], runs: dict[int, PolicyRun] | None, pairing: bl.Pairing | None
) -> Scores:
    """Errors on the scored frames (every frame but each episode's first) for the policy (if run) and both baselines."""
    parts: dict[str, list[np.ndarray]] = {"policy": [], "hold": [], "repeat": []}
    truth: list[np.ndarray] = []
    horizon = max((len(c) for r in (runs or {}).values() for _, c in r.chunks), default=0)
    per_h: list[dict[str, list[np.ndarray]]] = [
        {"policy": [], "hold": [], "repeat": [], "truth": []} for _ in range(horizon)
    ]
    n_chunks = 0
    for ep, rec in recorded.items():
        truth.append(rec.action[1:])
        parts["repeat"].append(bl.repeat(rec)[1:])
        hold = bl.hold(rec, pairing) if pairing is not None else None
        if hold is not None:
            parts["hold"].append(hold[1:])
        if runs is None:
            continue
        run = runs[ep]
        if len(run.executed) != rec.frames:
            raise PiperctlError(
                f"episode {ep}: the policy ran {len(run.executed)} frames, the data has {rec.frames}"
            )
        parts["policy"].append(run.executed[1:])
        for t, chunk in run.chunks:
            if t < 1:
                continue
            n_chunks += 1
            for h in range(min(len(chunk), rec.frames - t)):
                slot = per_h[h]
                slot["policy"].append(chunk[h])
                slot["truth"].append(rec.action[t + h])
                slot["repeat"].append(rec.action[t - 1])
                if hold is not None:
                    slot["hold"].append(hold[t])

    def stats(pred: list[np.ndarray], rec: list[np.ndarray]) -> ErrorStats | None:
        if not pred:
            return None
        stack = np.concatenate if pred[0].ndim == 2 else np.stack
        return error_stats(stack(pred), stack(rec))

    executed = {name: stats(p, truth) for name, p in parts.items()}
    by_horizon = [
        {name: stats(slot[name], slot["truth"]) for name in ("policy", "hold", "repeat")} for slot in per_h
    ]
    return Scores(executed, by_horizon, n_chunks)


def action_scale(meta: Any, joints: int) -> np.ndarray:
    """Per-joint standard deviation of the recorded actions (dataset stats): the unit of the normalised MAE."""
    std = ((meta.stats or {}).get(bl.ACTION) or {}).get("std")
    if std is None:
        return np.ones(joints)
    return np.asarray(std, dtype=np.float64).reshape(-1)[:joints]


@dataclass
class Evaluation:
    """Everything `piperctl eval` computed: the report (JSON-ready) and the per-frame data for plots."""

    report: dict
    recorded: dict[Any, bl.Episode]  # by episode; by (dataset name, episode) over several datasets
    runs: dict[Any, PolicyRun]
    pairing: bl.Pairing | None
    joints: list[str]


def evaluate(
    model_path: str | Path,
    dataset_root: str | Path,
    *,
    dataset_id: str | None = None,
    episodes: str | None = None,
    device: str = "auto",
    seed: int = 0,
    final: bool = False,
) -> Evaluation:
    """Open-loop evaluation of the model at `model_path` (a run: its best model) on a local dataset."""
    from piperctl.checkpoints.export import weights_digest
    from piperctl.checkpoints.model import load_model
    from piperctl.checkpoints.sources import check_features_fit, resolve_model
    from piperctl.console import log
    from piperctl.evaluation.report import build_report
    from piperctl.training.config import resolve_device
    from piperctl.training.data import fingerprint, open_metadata

    source = resolve_model(model_path, final=final)
    meta = open_metadata(dataset_id or _repo_id(dataset_root), dataset_root)
    trained_on = source.dataset or {}
    same_data = trained_on.get("fingerprint") == fingerprint(meta)
    if episodes is None:
        if source.val_episodes and same_data:
            episodes = "val"
        else:
            episodes = "all"
            log(
                "evaluating on every episode: the model records no held-out episodes of this dataset, "
                "so it may have trained on them"
            )
    elif episodes.strip().lower() == "val" and trained_on and not same_data:
        raise PiperctlError(
            f"--episodes val: {dataset_root} is not the dataset the model was trained on (fingerprint differs)",
            hint="pass --episodes A:B or i,j",
        )
    chosen = parse_episodes(episodes, meta.total_episodes, source.val_episodes)
    device = resolve_device(device)
    log(f"evaluating {source.description} on {len(chosen)} episode(s) of {dataset_root} ({device})")
    model = load_model(source.folder, device, source.layout)
    check_features_fit(model.config, meta, f"the model ({source.description})")
    recorded = bl.read_episodes(meta.root, chosen, meta.features)
    pairing = bl.hold_pairing(meta.features)
    dataset = frames_dataset(dataset_id or _repo_id(dataset_root), str(dataset_root))
    runs = run_policy(model.policy, model.preprocessor, model.postprocessor, dataset, meta, chosen, seed=seed)
    scores = score(recorded, runs, pairing)
    joints = bl.joint_names(meta.features)
    report = build_report(
        source=source,
        weights_sha256=weights_digest(source.folder, source.layout),
        policy_type=model.config.type,
        meta=meta,
        dataset_root=str(dataset_root),
        fingerprint=fingerprint(meta),
        episodes_spec=episodes,
        episodes=chosen,
        recorded=recorded,
        scores=scores,
        pairing=pairing,
        hold_unavailable=bl.hold_unavailable(meta.features),
        joints=joints,
        scale=action_scale(meta, len(joints)),
        seed=seed,
        device=device,
    )
    return Evaluation(report, recorded, runs, pairing, joints)


def _repo_id(root: str | Path) -> str:
    """The repo_id a local dataset records (lerobot wants one even for a local folder)."""
    import json

    try:
        info = json.loads((Path(root) / "meta" / "info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    return str(info.get("repo_id") or f"local/{Path(root).name}")
