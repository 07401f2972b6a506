"""Build a run's pieces: the dataset split, the policy with its processors and optimizer, the data loaders.

Fresh (`fresh_model`) or as a checkpoint left them (`resumed_model`: architecture, processors and
checks; the checkpoint's state itself is loaded by `training/state.py`). The trainer calls these in
`Trainer.setup` and keeps what they return.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from piperctl.checkpoints.format import DataOrder, LrSchedule, Topology, TrainingState
from piperctl.checkpoints.model import dataset_feature_shapes, feature_shapes, load_policy_config
from piperctl.console import log
from piperctl.errors import PiperctlError
from piperctl.training import data, loading, mixed_data, multi_dataset, rng
from piperctl.training.config import TrainConfig
from piperctl.training.distributed import Dist

if TYPE_CHECKING:
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.policies.pretrained import PreTrainedPolicy
    from lerobot.processor import PolicyProcessorPipeline
    from torch.optim.lr_scheduler import LRScheduler
    from torch.utils.data import DataLoader, Dataset

    from piperctl.checkpoints.adapters import BaseRef


@dataclass
class DataSplit:
    """The run's datasets (one or several, each with its train/validation episodes) and the metadata the policy is built from."""

    meta: LeRobotDatasetMetadata  # the first dataset's, features under the names the policy sees
    sources: list[multi_dataset.Source]


@dataclass
class ModelParts:
    """The policy, its processors and its optimisation (optimizer, LR scheduler, clipping)."""

    policy_cfg: PreTrainedConfig
    policy: PreTrainedPolicy
    feature_shapes: dict[str, list[int]]
    preprocessor: PolicyProcessorPipeline
    postprocessor: PolicyProcessorPipeline
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler | None
    grad_clip_norm: float
    lr_schedule: LrSchedule
    base: BaseRef | None = None  # a fine-tuning run's base: only the trainable tensors are saved


@dataclass
class Feed:
    """The training dataset, its resumable sampler and loader, and the validation loader (if any)."""

    dataset: LeRobotDataset | Dataset  # a frame-cached dataset with --frame-cache
    sampler: loading.EpochSampler
    loader: DataLoader
    val_loaders: list[tuple[str, DataLoader]]  # per dataset with held-out episodes: (name, loader)
    epoch_len: int

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the loaders' worker processes now, not whenever garbage collection gets to them."""
        for loader in [self.loader, *(vl for _, vl in self.val_loaders)]:
            loading.stop_workers(loader)


def use_determinism(deterministic: bool) -> None:
    """--deterministic: torch's deterministic algorithms (and a fixed cuBLAS workspace), or not."""
    if deterministic:
        # cuBLAS needs a fixed workspace for reproducible results (read when CUDA starts).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic)


def open_split(cfg: TrainConfig, resumed: TrainingState | None = None) -> DataSplit:
    """Check and open every dataset's metadata, keep the chosen cameras, split the episodes, check they mix.

    A `resumed` run reads each Hub dataset at the commit it trained on, unless --allow-dataset-change.
    """
    pins = multi_dataset.trained_commits(resumed) if resumed and not cfg.allow_dataset_change else None
    sources = multi_dataset.open_sources(cfg, pins)
    meta = multi_dataset.policy_meta(sources)
    data.require_inputs(meta, cfg.policy, cfg.cameras)
    return DataSplit(meta, sources)


def fresh_model(cfg: TrainConfig, device: str, split: DataSplit) -> ModelParts:
    """A new policy (seeded with --seed; --init-from weights if given), processors from the training stats."""
    from piperctl.checkpoints.model import load_weights
    from piperctl.checkpoints.sources import resolve_pretrained
    from piperctl.training import finetune
    from piperctl.training.init_from import init_policy_config
    from piperctl.training.policy import (
        build_policy,
        make_policy_config,
        new_processors,
        policy_class,
        require_policy_packages,
    )

    finetune.check_options(cfg)
    require_policy_packages(cfg.policy)
    rng.seed_everything(cfg.seed)
    options = dict(cfg.policy_options)
    if cfg.lr is not None:
        options.setdefault("optimizer_lr", cfg.lr)
    options = finetune.policy_options(cfg, policy_class(cfg.policy), options)
    init = resolve_pretrained(cfg.init_from) if cfg.init_from else None
    if init is None:
        policy_cfg = make_policy_config(cfg.policy, device, options)
    else:
        policy_cfg = init_policy_config(init, cfg.policy, device, options, split.meta)
    policy = build_policy(policy_cfg, split.meta)
    base = None
    if init is not None:
        load_weights(policy, init.folder / init.layout.weights)
        log(f"initialised weights from {init.description}")
        policy, base = finetune.apply(cfg, policy, init)
    shapes = feature_shapes(policy.config)
    policy.to(device)
    stats = multi_dataset.train_stats(split.sources)
    if cfg.imagenet_stats:
        stats = data.with_imagenet_stats(stats, split.meta)
    preprocessor, postprocessor = new_processors(policy_cfg, stats)
    return _with_optimizer(cfg, policy_cfg, policy, shapes, preprocessor, postprocessor, base)


def resumed_model(
    cfg: TrainConfig, device: str, split: DataSplit, folder: Path, state: TrainingState
) -> ModelParts:
    """The policy architecture, processors and optimizer of checkpoint `folder`, checked against the dataset.

    The weights, optimizer and the rest of the state are loaded afterwards by `RunState.restore`.
    """
    from piperctl.checkpoints.adapters import load_trainable, read_base_ref
    from piperctl.checkpoints.format import POLICY_WEIGHTS
    from piperctl.checkpoints.model import load_processors
    from piperctl.training.policy import build_policy, require_policy_packages

    if not multi_dataset.require_same_datasets(split.sources, state, folder, cfg.allow_dataset_change):
        log(
            "warning: the dataset changed since this checkpoint (--allow-dataset-change): the data order is not exact"
        )
    require_policy_packages(cfg.policy)
    policy_cfg = load_policy_config(folder, device)
    if policy_cfg.type != cfg.policy:
        raise PiperctlError(
            f"{folder}/config.json holds a {policy_cfg.type!r} policy but the run trains {cfg.policy!r}"
        )
    # Checked against the saved config before building: the policy built for this dataset would
    # take the dataset's shapes, and the weights would then fail to load with torch's message.
    shapes = feature_shapes(policy_cfg)
    dataset_shapes = dataset_feature_shapes(split.meta)
    mismatched = {k: (v, dataset_shapes.get(k)) for k, v in shapes.items() if dataset_shapes.get(k) != v}
    if mismatched:
        key, (want, got) = next(iter(mismatched.items()))
        raise PiperctlError(
            f"the dataset's features do not match the checkpoint's: {key} has shape {got}, the policy expects {want}",
            hint="resume on a dataset with the same cameras, state and action shapes",
        )
    base = read_base_ref(folder)
    if base is None:
        policy = build_policy(policy_cfg, split.meta)
    else:
        from piperctl.training.finetune import rebuild

        # Base weights and adapter as the run started, then the checkpoint's trainable tensors (which
        # decide what the optimizer holds).
        policy = rebuild(policy_cfg, base, device)
        load_trainable(policy, folder / POLICY_WEIGHTS)
    policy.to(device)
    preprocessor, postprocessor = load_processors(policy_cfg, folder, device)
    return _with_optimizer(cfg, policy_cfg, policy, shapes, preprocessor, postprocessor, base)


def _with_optimizer(
    cfg: TrainConfig,
    policy_cfg: PreTrainedConfig,
    policy: PreTrainedPolicy,
    shapes: dict[str, list[int]],
    preprocessor: PolicyProcessorPipeline,
    postprocessor: PolicyProcessorPipeline,
    base: BaseRef | None = None,
) -> ModelParts:
    """The policy's optimizer and LR scheduler presets (with --lr), as lerobot-train builds them.

    A fine-tuning run's optimizer holds only the trainable tensors (its checkpoints save only those).
    """
    from piperctl.checkpoints.adapters import trainable_param_groups

    opt_cfg = policy_cfg.get_optimizer_preset()
    if cfg.lr is not None:
        opt_cfg.lr = cfg.lr
    params = policy.get_optim_params() if base is None else trainable_param_groups(policy)
    optimizer = opt_cfg.build(params)
    sched_cfg = policy_cfg.get_scheduler_preset()
    scheduler = sched_cfg.build(optimizer, cfg.steps) if sched_cfg is not None else None
    lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    schedule = LrSchedule(
        type=sched_cfg.type if sched_cfg is not None else "constant",
        warmup_steps=int(getattr(sched_cfg, "num_warmup_steps", None) or 0),
        total_steps=cfg.steps,
        peak_lr=max(lrs),
        param_group_lrs=lrs,
        # The schedule advances once per optimizer step, whatever the number of processes.
        unit="optimizer step",
        scaled_with_world_size=False,
    )
    clip = float(getattr(opt_cfg, "grad_clip_norm", 0.0) or 0.0)
    return ModelParts(
        policy_cfg, policy, shapes, preprocessor, postprocessor, optimizer, scheduler, clip, schedule, base
    )


def open_feed(
    cfg: TrainConfig, dist: Dist, device: str, split: DataSplit, policy_cfg: PreTrainedConfig
) -> Feed:
    """The dataset (frame-cached with --frame-cache) with its training and validation loaders, for this rank."""
    from lerobot.datasets.factory import resolve_delta_timestamps

    parts = []
    for source in split.sources:
        # Each dataset's own feature names and frame rate (--mixed-fps own-rate: chunks count its frames).
        own = resolve_delta_timestamps(policy_cfg, source.meta)
        part = data.open_dataset(
            source.spec.id,
            source.spec.root,
            own,
            tolerance_s=cfg.tolerance_s,
            drop=source.dropped_cameras,
            revision=source.revision,
        )
        if cfg.frame_cache:
            from piperctl.training.frame_cache import FrameCache

            # Built here, before any DataLoader worker starts: workers only read it.
            cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None
            part = FrameCache.wrap(part, cache_dir, progress=dist.is_main)
        parts.append(part)
    dataset = mixed_data.mix(parts, split.sources)
    drop_last_frames = int(getattr(policy_cfg, "drop_n_last_frames", 0) or 0)
    inner = mixed_data.train_sampler(split.sources, seed=cfg.seed, drop_n_last_frames=drop_last_frames)
    sampler = loading.EpochSampler(inner, cfg.batch_size, dist.rank, dist.world_size)
    if dist.world_size > 1 and len(inner) < sampler.global_batch:
        raise PiperctlError(
            f"the training episodes hold {len(inner)} frames, fewer than one global batch "
            f"({cfg.batch_size} x {dist.world_size} processes)",
            hint="lower --batch-size or use fewer processes",
        )
    pin = device.startswith("cuda")
    # Augmentation touches training batches only, never validation.
    transform = loading.image_transforms(cfg.augment, cfg.augment_config)
    loader = loading.make_loader(
        dataset,
        sampler,
        cfg.batch_size,
        cfg.num_workers,
        pin,
        transform=transform,
        camera_keys=split.meta.camera_keys,
    )
    val_loaders = []
    for d, source in enumerate(split.sources):
        if not source.val_episodes:
            continue
        only = [source.val_episodes if i == d else [] for i in range(len(split.sources))]
        vs = loading.EpochSampler(
            mixed_data.episode_sampler(split.sources, only, shuffle=False, seed=cfg.seed),
            cfg.batch_size,
            dist.rank,
            dist.world_size,
            drop_incomplete=False,
        )
        vs.epoch = -1
        val_loaders.append((source.spec.name, loading.make_loader(dataset, vs, cfg.batch_size, 0, pin)))
    return Feed(dataset, sampler, loader, val_loaders, len(inner))


def describe_run(
    cfg: TrainConfig, run_id: str, dist: Dist, split: DataSplit, parts: ModelParts, versions: dict[str, str]
) -> TrainingState:
    """The fields of the run's training state that stay fixed while it runs (the rest is captured per save)."""
    effective = cfg.batch_size * dist.world_size * cfg.grad_accum
    datasets = multi_dataset.records(split.sources)
    return TrainingState(
        step=0,
        samples_seen=0,
        data=DataOrder(),
        seed=cfg.seed,
        run_id=run_id,
        config=cfg.to_json(),
        policy_type=parts.policy_cfg.type,
        feature_shapes=parts.feature_shapes,
        dataset=datasets[0],
        datasets=datasets,
        world_size=dist.world_size,
        batch_size_per_process=cfg.batch_size,
        effective_batch_size=effective,
        grad_accum=cfg.grad_accum,
        lr_schedule=parts.lr_schedule,
        topology=[Topology(0, dist.world_size, cfg.batch_size, effective)],
        versions=versions,
    )
