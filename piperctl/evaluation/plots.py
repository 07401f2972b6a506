"""PNG plots of predicted versus recorded trajectories, one figure per episode, one panel per joint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from piperctl.errors import PiperctlError
from piperctl.fs import atomic_replace


def plot_episodes(evaluation, out_dir: Path, limit: int = 3) -> list[Path]:
    """Draw the first `limit` evaluated episodes into `out_dir`; the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from piperctl.evaluation import baselines as bl

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PiperctlError(f"cannot create --plots folder {out_dir} ({e.strerror or e})") from e
    written: list[Path] = []
    for ep in sorted(evaluation.recorded)[:limit]:
        rec = evaluation.recorded[ep]
        run = evaluation.runs.get(ep)
        joints = evaluation.joints
        t = np.arange(rec.frames)
        fig, axes = plt.subplots(
            len(joints), 1, figsize=(8, 1.6 * len(joints) + 0.8), sharex=True, squeeze=False
        )
        for j, name in enumerate(joints):
            ax = axes[j][0]
            ax.plot(t, rec.action[:, j], color="black", linewidth=1.5, label="recorded action")
            if run is not None:
                ax.plot(t, run.executed[:, j], color="tab:blue", linewidth=1.2, label="policy (executed)")
            if evaluation.pairing is not None:
                ax.plot(
                    t, bl.hold(rec, evaluation.pairing)[:, j], ":", color="tab:gray", label="hold baseline"
                )
            ax.set_ylabel(name, rotation=0, ha="right", fontsize=8)
            ax.grid(True, alpha=0.3)
        axes[0][0].legend(loc="upper right", fontsize=7, ncol=3)
        axes[-1][0].set_xlabel("frame")
        # Several datasets key their episodes (dataset name, episode).
        name, number = ep if isinstance(ep, tuple) else ("", ep)
        fig.suptitle(f"{name + ' ' if name else ''}episode {number}: predicted vs recorded action")
        fig.tight_layout()
        path = out_dir / f"{name + '_' if name else ''}episode_{number:04d}.png"
        try:
            atomic_replace(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=90))
        finally:
            plt.close(fig)
        written.append(path)
    return written
