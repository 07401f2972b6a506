"""The open-loop scorer a run is handed for `--best-metric val_action_nmae`.

Evaluation sits above training (it imports the training data code), so the trainer never imports it:
the caller that wires a run (`piperctl.train` / `piperctl.resume`) passes
`piperctl.evaluation.per_dataset.score_during_training`, which fits this protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lerobot.policies.pretrained import PreTrainedPolicy
    from lerobot.processor import PolicyProcessorPipeline

    from piperctl.training.multi_dataset import Source


class OpenLoopScorer(Protocol):
    """`val_action_nmae` of a policy on every dataset's held-out episodes; `piperctl.evaluation.per_dataset.score_during_training`.

    Evaluation sits above training, so the caller that wires a run (`piperctl.train`) hands it in.
    """

    def __call__(
        self,
        policy: PreTrainedPolicy,
        preprocessor: PolicyProcessorPipeline,
        postprocessor: PolicyProcessorPipeline,
        sources: list[Source],
        *,
        seed: int,
    ) -> dict[str, float]:
        """`val_action_nmae` (every held-out frame, inf when none was scored) and, with several datasets,
        `val_action_nmae/NAME` of each."""
        ...
