"""The open-loop scorer a run is handed for `--best-metric val_action_nmae`.

Evaluation sits above training (it imports the training data code), so the trainer never imports it:
the caller that wires a run (`piperctl.train` / `piperctl.resume`) passes
`piperctl.evaluation.openloop.score_during_training`, which fits this protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.pretrained import PreTrainedPolicy
    from lerobot.processor import PolicyProcessorPipeline


class OpenLoopScorer(Protocol):
    """`val_action_nmae` of a policy on held-out episodes; `piperctl.evaluation.openloop.score_during_training`.

    Evaluation sits above training, so the caller that wires a run (`piperctl.train`) hands it in.
    """

    def __call__(
        self,
        policy: PreTrainedPolicy,
        preprocessor: PolicyProcessorPipeline,
        postprocessor: PolicyProcessorPipeline,
        meta: LeRobotDatasetMetadata,
        episodes: list[int],
        *,
        dataset_id: str,
        dataset_root: str | None,
        seed: int,
    ) -> float:
        """The mean normalised MAE of the executed action (inf when nothing was scored)."""
        ...
