"""Kinematic checks: what the recording of a real arm gets wrong (spikes, frozen joints, action lag,
units and ranges, short episodes). Each works from the per-episode aggregates of the streaming scan
and reads back only the few episodes it singles out, to name their frames.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from piperctl.leakage.episodes import read_episodes
from piperctl.leakage.result import CheckResult, Finding, ids_text, plural
from piperctl.leakage.robots import normalise_name, piper_profile

if TYPE_CHECKING:
    from piperctl.leakage.context import Context

MIN_EPISODES = 3  # dataset-relative scales need this many episodes that show the quantity
FLOOR_SHARE = 0.1  # a dimension's scale is at least this share of the median scale of its feature
HIGH_Q, LOW_Q = 0.75, 0.25  # unit changes are measured against these quantiles of the episodes
LOCATE_LIMIT = 200  # episodes read back to name frames; the rest are listed without a frame
ACTION_NAMES = ("action", "actions")
STATE_NAMES = ("observation.state", "state", "observation.states")


def _label(ctx: Context, feature: str, i: int) -> str:
    names = ctx.layout.dim_names.get(feature) or []
    return f"{feature}[{names[i] if i < len(names) else i}]"


def _dims_of(ctx: Context, feature: str) -> int:
    i = 0
    while f"min|{feature}|{i}" in ctx.stats.columns:
        i += 1
    return i


# -- velocity spikes --------------------------------------------------------------------------


def _robust_scales(ctx: Context, stats: pl.DataFrame, f: str, prefix: str) -> dict[int, float]:
    """Per dimension: the median over moving episodes of the episode's largest value of `prefix`."""
    own: dict[int, float] = {}
    for i in range(_dims_of(ctx, f)):
        col = f"{prefix}|{f}|{i}"
        if col in stats.columns:
            moving = stats.filter(pl.col(col) > 0)
            if moving.height >= MIN_EPISODES:
                own[i] = float(moving[col].median())  # type: ignore[arg-type]
    if not own:
        return {}
    # A joint that barely moves (sensor noise) borrows a floor from the feature's moving joints.
    floor = FLOOR_SHARE * float(np.median(list(own.values())))
    return {i: max(v, floor) for i, v in own.items()}


def check_velocity_spikes(ctx: Context) -> CheckResult:
    """One-frame jumps: a step, or a change of step, far above the joint's robust scale in this dataset.

    The scales are the medians over episodes of each episode's largest step (velocity) and largest
    change of step (acceleration), so fast but smooth motion is not a spike, and a jump that comes
    back the next frame stands out by its acceleration even when the arm moves fast.
    """
    t = ctx.thresholds
    res = CheckResult("velocity_spikes", "Velocity spikes / one-frame jumps")
    stats = ctx.stats.filter(pl.col("rows") >= 3)
    flagged: list[tuple[str, int, float, float, list[int]]] = []
    scales: dict[str, dict[str, float]] = {}
    for f in ctx.vectors:
        vel = _robust_scales(ctx, stats, f, "dmax")
        acc = _robust_scales(ctx, stats, f, "amax")
        for i in sorted(set(vel) & set(acc)):
            scales[_label(ctx, f, i)] = {"step": vel[i], "change_of_step": acc[i]}
            lim_v, lim_a = t.spike_factor * vel[i], t.spike_factor * acc[i]
            hit = stats.filter((pl.col(f"dmax|{f}|{i}") > lim_v) | (pl.col(f"amax|{f}|{i}") > lim_a))
            if hit.height:
                flagged.append((f, i, lim_v, lim_a, sorted(hit["episode_index"].to_list())))
    located = _locate_spikes(ctx, flagged)
    for f, i, lim_v, lim_a, ids in flagged:
        details = [located.get((f, i, e), {"episode": e}) for e in ids]
        first = next((d for d in details if "frame" in d), None)
        where = (
            f" (episode {first['episode']} at frame {first['frame']}: step {first['step']:.4g})"
            if first
            else ""
        )
        res.findings.append(
            Finding(
                "spike",
                "warn",
                ids,
                f"{_label(ctx, f, i)} jumps (step or change of step over {t.spike_factor:g}x its typical "
                f"largest) in {plural(len(ids), 'episode')}: {ids_text(ids)}{where}",
                {
                    "feature": f,
                    "dimension": i,
                    "step_limit": lim_v,
                    "change_limit": lim_a,
                    "details": details[:1000],
                },
            )
        )
    res.extra["scales"] = scales
    if not scales:
        return res.skip("skipped: fewer than 3 episodes with motion")
    res.note = (
        f"no step or change of step over {t.spike_factor:g}x the typical largest, in {len(scales)} dimensions"
    )
    return res


def _locate_spikes(ctx: Context, flagged: list[tuple[str, int, float, float, list[int]]]) -> dict:
    ids = sorted({e for *_, hit in flagged for e in hit})[:LOCATE_LIMIT]
    if not ids:
        return {}
    df = read_episodes(ctx.layout, ctx.scan.runs, ids, sorted({f for f, *_ in flagged}))
    out = {}
    for (e,), part in df.group_by("episode_index", maintain_order=True):
        frames = part["frame_index"].to_numpy()
        for f, i, lim_v, lim_a, hit in flagged:
            if e not in hit:
                continue
            x = np.asarray(part[f].to_list(), dtype=np.float64)[:, i]
            step = np.diff(x)
            change = np.abs(np.diff(step))
            # The frame whose value jumped: the first step into it over the limit, else the frame
            # where the step changes most (a spike's change of step peaks at the spike itself).
            steps_over = np.nonzero(np.abs(step) > lim_v)[0]
            if len(steps_over):
                k = int(steps_over[0]) + 1
            elif len(change) and change.max() > lim_a:
                k = int(np.argmax(change)) + 1
            else:
                continue
            out[(f, i, e)] = {
                "episode": e,
                "frame": int(frames[k]),
                "step": float(step[k - 1]),
                "frames_over": int(len(steps_over) + (change > lim_a).sum()),
            }
    return out


# -- frozen joints ----------------------------------------------------------------------------


def check_frozen_joints(ctx: Context) -> CheckResult:
    """A joint that does not move during a whole episode while the others move (and it moves elsewhere)."""
    res = CheckResult("frozen_joints", "Joints frozen for a whole episode")
    stats = ctx.stats.filter(pl.col("rows") > 1)
    for f in ctx.vectors:
        n = _dims_of(ctx, f)
        if n < 2 or stats.height < MIN_EPISODES:
            continue
        const = [
            (pl.col(f"min|{f}|{i}") == pl.col(f"max|{f}|{i}")).fill_null(False).alias(f"c{i}")
            for i in range(n)
        ]
        flags = stats.select("episode_index", *const)
        for i in range(n):
            still = flags[f"c{i}"]
            if still.sum() * 2 >= flags.height:
                continue  # still in most episodes: a joint the task does not use (see constant_dimensions)
            others_move = ~pl.all_horizontal([pl.col(f"c{j}") for j in range(n) if j != i])
            ids = flags.filter(pl.col(f"c{i}") & others_move)["episode_index"].to_list()
            if ids:
                moving = flags.height - int(still.sum())
                res.findings.append(
                    Finding(
                        "frozen_joint",
                        "warn",
                        ids,
                        f"{_label(ctx, f, i)} frozen for the whole episode while the other joints move, in "
                        f"{plural(len(ids), 'episode')}: {ids_text(ids)} (it moves in {moving} of "
                        f"{flags.height} episodes)",
                        {"feature": f, "dimension": i},
                    )
                )
    res.note = "every joint that moves in most episodes moves in each of them"
    return res


# -- action vs state --------------------------------------------------------------------------


def lag_pairs(layout_features: list[str], dim_names: dict[str, list[str]]) -> tuple[list, str]:
    """(action feature, dim, state feature, dim) pairs matched by name, or ([], why skipped)."""
    action = next((f for f in ACTION_NAMES if f in layout_features), None)
    state = next((f for f in STATE_NAMES if f in layout_features), None)
    if action is None or state is None:
        return [], "skipped: no action and observation.state features to compare"
    an, sn = dim_names.get(action) or [], dim_names.get(state) or []
    if not an or not sn or all(n.isdigit() for n in an) or all(n.isdigit() for n in sn):
        return [], f"skipped: {action}/{state} declare no dimension names, so no dimension can be matched"
    by_name = {normalise_name(n): j for j, n in enumerate(sn)}
    pairs = [
        (action, i, state, by_name[normalise_name(n)])
        for i, n in enumerate(an)
        if normalise_name(n) in by_name
    ]
    if not pairs:
        return [], (
            f"skipped: {action} ({', '.join(an[:3])} …) and {state} ({', '.join(sn[:3])} …) name no "
            "dimension alike, so none can be compared"
        )
    return pairs, ""


def _lag_error(a: np.ndarray, s: np.ndarray, scale: np.ndarray, lag: int, min_overlap: int) -> float:
    """Mean scaled |action(t) - state(t+lag)| over the frames both exist."""
    n = len(a)
    if lag >= 0:
        x, y = a[: n - lag], s[lag:]
    else:
        x, y = a[-lag:], s[: n + lag]
    if len(x) < min_overlap:
        return math.inf
    return float(np.mean(np.abs(x - y) / scale))


def best_lag(a: np.ndarray, s: np.ndarray, scale: np.ndarray, max_lag: int) -> tuple[int, float, float]:
    """(lag with the smallest error, that error, the error at lag +1) for one episode."""
    n = len(a)
    window = min(max_lag, max(0, n // 2 - 1))
    overlap = max(5, n // 2)
    errors = {lag: _lag_error(a, s, scale, lag, overlap) for lag in range(-window, window + 1)}
    lag = min(errors, key=lambda k: (errors[k], abs(k - 1)))
    return lag, errors[lag], errors.get(1, math.inf)


def check_action_state(ctx: Context) -> CheckResult:
    """Per episode, how far the action leads the state; episodes off the dataset's lead, or disagreeing."""
    t = ctx.thresholds
    res = CheckResult("action_state", "Action-state lag and agreement")
    pairs = ctx.lag_pairs
    if not pairs:
        return res.skip(ctx.lag_skip)
    if "lagsum|0" not in ctx.stats.columns:
        return res.skip(f"skipped: {pairs[0][0]} and {pairs[0][2]} are not both float vectors")
    stats = ctx.stats.filter(pl.col("rows") >= max(10, 3 * t.lag_frames))
    k = range(len(pairs))
    num = pl.sum_horizontal([pl.col(f"lagsum|{j}") for j in k])
    den = pl.sum_horizontal([pl.col(f"vsum|{j}") for j in k])
    ratio = stats.select("episode_index", r=pl.when(den > 0).then(num / den)).drop_nulls()
    if ratio.height < MIN_EPISODES:
        return res.skip("skipped: fewer than 3 episodes in which the state moves")
    # |action(t) - state(t+1)| over |state step| is about |lag - 1| frames for smooth motion.
    typical = float(ratio["r"].median())  # type: ignore[arg-type]
    suspects = ratio.filter(pl.col("r") > typical + t.lag_frames / 2).sort("r", descending=True)
    sus_ids = suspects["episode_index"].to_list()[:LOCATE_LIMIT]
    others = ratio.filter(~pl.col("episode_index").is_in(sus_ids))["episode_index"].to_list()
    step = max(1, len(others) // 30)
    baseline_ids = others[::step][:30]
    action, state = pairs[0][0], pairs[0][2]
    df = read_episodes(ctx.layout, ctx.scan.runs, sorted(set(sus_ids) | set(baseline_ids)), [action, state])
    vs = stats.select([pl.col(f"vsum|{j}") for j in k]).sum().row(0)
    frames = max(1, int(stats["rows"].sum()))
    scale = np.array([max(v / frames, 1e-12) for v in vs])
    lags: dict[int, tuple[int, float, float]] = {}
    for (e,), part in df.group_by("episode_index", maintain_order=True):
        a = np.asarray(part[action].to_list(), dtype=np.float64)[:, [p[1] for p in pairs]]
        s = np.asarray(part[state].to_list(), dtype=np.float64)[:, [p[3] for p in pairs]]
        lags[int(e)] = best_lag(a, s, scale, t.max_lag_frames)  # type: ignore[arg-type]
    base = [lags[e][0] for e in baseline_ids if e in lags]
    usual = int(np.median(base)) if base else 1
    base_err = float(np.median([lags[e][1] for e in baseline_ids if e in lags])) if base else 0.0
    res.extra.update(
        {
            "pairs": [[f"{a}[{ai}]", f"{s}[{si}]"] for a, ai, s, si in pairs],
            "typical_lead_frames": usual,
            "typical_ratio": round(typical, 3),
        }
    )
    off, disagree = [], []
    for e in sus_ids:
        if e not in lags:
            continue
        lag, err, _ = lags[e]
        if abs(lag - usual) >= t.lag_frames:
            off.append({"episode": e, "lead_frames": lag, "error": round(err, 4)})
        elif (
            err > 5 * max(base_err, 1e-9)
            and ratio.filter(pl.col("episode_index") == e)["r"][0] > typical + t.lag_frames
        ):
            disagree.append({"episode": e, "lead_frames": lag, "error": round(err, 4)})
    if off:
        ids = sorted(d["episode"] for d in off)
        d0 = min(off, key=lambda d: d["episode"])
        res.findings.append(
            Finding(
                "lag",
                "warn",
                ids,
                f"action out of step with the state by {t.lag_frames}+ frames in {plural(len(ids), 'episode')}: "
                f"{ids_text(ids)} (episode {d0['episode']}: action leads by {d0['lead_frames']} frames, the "
                f"dataset's usual lead is {usual})",
                {"details": sorted(off, key=lambda d: d["episode"])[:1000]},
            )
        )
    if disagree:
        ids = sorted(d["episode"] for d in disagree)
        res.findings.append(
            Finding(
                "disagreement",
                "warn",
                ids,
                f"action does not follow the state at any lag in {plural(len(ids), 'episode')}: {ids_text(ids)}",
                {"details": sorted(disagree, key=lambda d: d["episode"])[:1000]},
            )
        )
    res.note = (
        f"action leads the state by {usual} frame(s) in every episode "
        f"({len(pairs)} dimension(s) matched by name)"
    )
    return res


# -- units and ranges -------------------------------------------------------------------------


def check_units_and_ranges(ctx: Context) -> CheckResult:
    """Values in another unit in some episodes (level and range both off by a factor); robot limits."""
    t = ctx.thresholds
    res = CheckResult("units_and_ranges", "Units and joint ranges")
    stats = ctx.stats.filter(pl.col("rows") > 1)
    F = t.unit_factor
    for f in ctx.vectors:
        per_dim = {}
        for i in range(_dims_of(ctx, f)):
            lo, hi = pl.col(f"min|{f}|{i}"), pl.col(f"max|{f}|{i}")
            d = stats.select(
                "episode_index", level=pl.max_horizontal(lo.abs(), hi.abs()), span=hi - lo
            ).drop_nulls()
            if d.height >= MIN_EPISODES:
                per_dim[i] = d
        if not per_dim:
            continue
        # Dimensions that barely move or sit near 0 borrow a floor from the feature's other dimensions.
        level_floor = FLOOR_SHARE * float(np.median([d["level"].quantile(HIGH_Q) for d in per_dim.values()]))
        span_floor = FLOOR_SHARE * float(np.median([d["span"].quantile(HIGH_Q) for d in per_dim.values()]))
        ups: dict[int, pl.DataFrame] = {}
        downs: dict[int, set[int]] = {}
        for i, d in per_dim.items():
            level = max(float(d["level"].quantile(HIGH_Q)), level_floor)  # type: ignore[arg-type]
            span = max(float(d["span"].quantile(HIGH_Q)), span_floor)  # type: ignore[arg-type]
            low_level = float(d["level"].quantile(LOW_Q))  # type: ignore[arg-type]
            low_span = float(d["span"].quantile(LOW_Q))  # type: ignore[arg-type]
            if level <= 0 or span <= 0:
                continue
            up = (pl.col("level") >= F * level) & (pl.col("span") >= F * span)
            down = (
                (pl.col("level") <= low_level / F) & (pl.col("span") <= low_span / F) & (pl.col("span") > 0)
            )
            ups[i] = d.filter(up).with_columns(usual_level=pl.lit(level), usual_span=pl.lit(span))
            downs[i] = set(d.filter(down)["episode_index"].to_list())
        # A joint that merely stays near 0 in one episode looks "smaller"; a unit change shrinks most
        # of the feature's dimensions at once, so smaller values count only then.
        counts: dict[int, int] = {}
        for ids in downs.values():
            for e in ids:
                counts[e] = counts.get(e, 0) + 1
        shrunk = {e for e, n in counts.items() if n * 2 >= max(len(per_dim), 2)}
        for i, d in per_dim.items():
            if i not in ups:
                continue
            hit = pl.concat(
                [
                    ups[i],
                    d.filter(pl.col("episode_index").is_in(sorted(downs[i] & shrunk))).with_columns(
                        usual_level=pl.lit(float(d["level"].quantile(LOW_Q))),
                        usual_span=pl.lit(float(d["span"].quantile(LOW_Q))),
                    ),
                ],
                how="vertical_relaxed",
            ).sort("episode_index")
            if hit.height:
                ids = hit["episode_index"].to_list()
                e, lv, sp, level, span = hit.row(0)
                res.findings.append(
                    Finding(
                        "unit_change",
                        "warn",
                        ids,
                        f"{_label(ctx, f, i)} on another scale in {plural(len(ids), 'episode')}: {ids_text(ids)} "
                        f"(episode {e}: values up to {lv:.4g}, range {sp:.4g}; most episodes up to "
                        f"{level:.4g} and {span:.4g}) — another unit?",
                        {"feature": f, "dimension": i, "usual_level": level, "usual_range": span},
                    )
                )
    if ctx.robot == "piper":
        summary, findings = piper_profile(ctx.stats, ctx.layout.dim_names, ctx.vectors)
        res.findings += findings
        res.extra["robot_profile"] = summary
        conv = "; ".join(
            f"{feat}: " + ", ".join(f"{k} {v}" for k, v in units.items())
            for feat, units in summary["conventions"].items()
        )
        res.note = (
            f"PiPER profile: one convention per joint, inside the PiPER's limits ({conv or 'no joint named'})"
        )
    else:
        res.extra["robot_profile"] = None
        res.note = (
            f"no episode off the others' scale by {F:g}x"
            + ("" if ctx.robot is None else f"; no profile for robot {ctx.robot!r}: limits not checked")
            + ("; no robot profile: limits not checked (use --robot piper)" if ctx.robot is None else "")
        )
    return res


# -- short episodes ---------------------------------------------------------------------------


def check_short_episodes(ctx: Context) -> CheckResult:
    """Episodes much shorter than the dataset's median, or shorter than the policy's action chunk."""
    t = ctx.thresholds
    res = CheckResult("short_episodes", "Short episodes")
    lengths = ctx.eps.select("episode_index", "rows")
    if lengths.height == 0:
        res.note = "no episodes"
        return res
    median = float(lengths["rows"].median())  # type: ignore[arg-type]
    limit = t.short_fraction * median
    short = lengths.filter(pl.col("rows") < limit).sort("episode_index")
    if short.height and lengths.height >= MIN_EPISODES:
        ids = short["episode_index"].to_list()
        e, n = short.row(0)
        res.findings.append(
            Finding(
                "short",
                "warn",
                ids,
                f"{plural(len(ids), 'episode')} under {t.short_fraction:.0%} of the median length "
                f"({median:g} frames): {ids_text(ids)} (episode {e}: {n} frames)",
                {"details": [{"episode": a, "frames": b} for a, b in short.rows()[:1000]]},
            )
        )
    if t.chunk_size is not None:
        under = lengths.filter(pl.col("rows") < t.chunk_size).sort("episode_index")
        if under.height:
            ids = under["episode_index"].to_list()
            e, n = under.row(0)
            res.findings.append(
                Finding(
                    "shorter_than_chunk",
                    "warn",
                    ids,
                    f"{plural(len(ids), 'episode')} shorter than the action chunk ({t.chunk_size} frames): "
                    f"{ids_text(ids)} (episode {e}: {n} frames; its chunks are mostly padding)",
                    {"chunk_size": t.chunk_size},
                )
            )
    res.extra["median_length"] = median
    res.note = f"every episode at least {t.short_fraction:.0%} of the median length ({median:g} frames)" + (
        f" and {t.chunk_size} frames (--chunk-size)" if t.chunk_size is not None else ""
    )
    return res
