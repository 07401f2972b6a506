"""Robot profiles: the PiPER's joint limits and the unit conventions its plugins record in.

A policy trained on one convention (radians, degrees, -100..100 percent) drives an arm set to another
into its limits, so the profile infers each joint group's convention from the per-episode value
ranges, checks the values against the limits in that unit, and fails a dataset that mixes them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import polars as pl

from piperctl.leakage.result import Finding, ids_text, plural

# piper_sdk's joint limits (rad) and gripper range: 0..0.07 m in the SDK, up to 0.08 m in some plugins.
PIPER_JOINT_LIMITS_RAD: dict[int, tuple[float, float]] = {
    1: (-2.6179, 2.6179),
    2: (0.0, 3.14),
    3: (-2.967, 0.0),
    4: (-1.745, 1.745),
    5: (-1.22, 1.22),
    6: (-2.09439, 2.09439),
}
PIPER_GRIPPER_M = (0.0, 0.08)
JOINT_UNITS = ("rad", "deg", "percent")
GRIPPER_UNITS = ("m", "mm", "0..100")
UNIT_TEXT = {
    "rad": "radians",
    "deg": "degrees",
    "percent": "-100..100 percent",
    "m": "metres",
    "mm": "millimetres",
    "0..100": "0..100 percent",
}
LIMIT_MARGIN = 0.05  # values may pass a limit by this share of the joint's span (calibration offsets)
KNOWN_ROBOTS = ("piper",)
_SUFFIX = re.compile(r"[._](pos|position|angle|rad|deg)$")
_JOINT = re.compile(r"(?:joint|j)[ _-]?(\d+)$")


def normalise_name(name: str) -> str:
    """A dimension name without its unit-ish suffix: `joint_1.pos` -> `joint_1`."""
    return _SUFFIX.sub("", name.strip().lower())


def robot_of(info: dict, requested: str | None) -> str | None:
    """The profile to apply: `requested` ("none" disables), else a known name inside `robot_type`."""
    if requested is not None:
        return None if requested.lower() == "none" else requested.lower()
    robot_type = str(info.get("robot_type") or "").lower()
    return next((r for r in KNOWN_ROBOTS if r in robot_type), None)


def piper_dims(names: list[str]) -> dict[int, int | str]:
    """Dimension index -> PiPER joint number (1..6) or "gripper", for names that say which."""
    found: dict[int, int | str] = {}
    numbers = {}
    for i, n in enumerate(names):
        base = normalise_name(n)
        if "gripper" in base:
            found[i] = "gripper"
        elif m := _JOINT.search(base):
            numbers[i] = int(m.group(1))
    offset = 1 if numbers and min(numbers.values()) == 0 else 0  # joint_0..joint_5
    for i, k in numbers.items():
        if 1 <= k + offset <= 6:
            found[i] = k + offset
    return found


def joint_limits(joint: int, unit: str) -> tuple[float, float]:
    """The PiPER joint's limits in `unit`."""
    lo, hi = PIPER_JOINT_LIMITS_RAD[joint]
    if unit == "deg":
        return math.degrees(lo), math.degrees(hi)
    if unit == "percent":
        return -100.0, 100.0
    return lo, hi


def gripper_limits(unit: str) -> tuple[float, float]:
    """The PiPER gripper's range in `unit`."""
    lo, hi = PIPER_GRIPPER_M
    return {"m": (lo, hi), "mm": (lo * 1000, hi * 1000), "0..100": (0.0, 100.0)}[unit]


def _joint_units(ranges: dict[int, tuple[float, float]]) -> set[str]:
    """Conventions one episode's joint ranges fit; empty when the joints did not move away from 0."""
    values = [abs(v) for lo, hi in ranges.values() for v in (lo, hi)]
    peak = max(values, default=0.0)
    if peak == 0:
        return set()
    if peak <= math.pi + 0.35:
        return {"rad"}
    if peak > 110:
        return {"deg"}
    # Between: degrees or percent. Degrees must respect the PiPER's (one-sided) degree limits.
    fits_deg = all(
        lo >= joint_limits(k, "deg")[0] - 10 and hi <= joint_limits(k, "deg")[1] + 10
        for k, (lo, hi) in ranges.items()
    )
    return {"deg", "percent"} if fits_deg else {"percent"}


def _gripper_units(lo: float, hi: float) -> set[str]:
    if hi <= 0.002:
        return set()  # closed all along: no evidence
    if hi <= 0.1:
        return {"m"}
    if hi > 85:
        return {"0..100"}
    if hi > 1:
        return {"mm", "0..100"}
    return set()


@dataclass
class GroupResult:
    """The convention of one group (a feature's joints, or its gripper) and its odd episodes."""

    feature: str
    group: str  # "joints" or "gripper"
    dims: dict[int, int | str]
    unit: str | None  # the dataset's convention, None when no episode told
    candidates: list[str]
    per_episode: dict[int, set[str]] = field(default_factory=dict)


def _decide(per_episode: dict[int, set[str]]) -> tuple[str | None, list[str]]:
    counts: Counter[str] = Counter()
    for units in per_episode.values():
        if len(units) == 1:
            counts[next(iter(units))] += 1
    if counts:
        return counts.most_common(1)[0][0], sorted(counts, key=(*JOINT_UNITS, *GRIPPER_UNITS).index)
    # Only ambiguous evidence: keep what every episode allows.
    sets = [u for u in per_episode.values() if u]
    common = set.intersection(*sets) if sets else set()
    order = (*JOINT_UNITS, *GRIPPER_UNITS)
    return (next(iter(common)) if len(common) == 1 else None), sorted(common, key=order.index)


def piper_profile(
    stats: pl.DataFrame, dim_names: dict[str, list[str]], vectors: list[str]
) -> tuple[dict, list[Finding]]:
    """Infer each joint's convention, check the values against the PiPER's limits; (summary, findings)."""
    summary: dict = {"robot": "piper", "conventions": {}, "skipped": {}}
    findings: list[Finding] = []
    eps = stats.filter(pl.col("rows") > 0)
    ids = eps["episode_index"].to_list()
    for feature in vectors:
        names = dim_names.get(feature) or []
        dims = piper_dims(names)
        unknown = [n for i, n in enumerate(names) if i not in dims]
        if unknown:
            summary["skipped"][feature] = f"not PiPER joint names: {', '.join(unknown[:4])}" + (
                " …" if len(unknown) > 4 else ""
            )
        if not dims:
            continue

        def rng(i: int, _f: str = feature) -> list[tuple[float | None, float | None]]:
            return list(zip(eps[f"min|{_f}|{i}"].to_list(), eps[f"max|{_f}|{i}"].to_list(), strict=True))

        ranges = {i: rng(i) for i in dims if f"min|{feature}|{i}" in eps.columns}
        joints = {i: k for i, k in dims.items() if k != "gripper" and i in ranges}
        grippers = [i for i, k in dims.items() if k == "gripper" and i in ranges]
        groups: list[GroupResult] = []
        if joints:
            per = {}
            for row, e in enumerate(ids):
                r = {k: ranges[i][row] for i, k in joints.items()}
                if all(lo is not None and hi is not None for lo, hi in r.values()):
                    per[e] = _joint_units(r)  # type: ignore[arg-type]
            unit, cands = _decide(per)
            groups.append(GroupResult(feature, "joints", joints, unit, cands, per))  # type: ignore[arg-type]
        for gi in grippers:
            per = {}
            for row, e in enumerate(ids):
                lo, hi = ranges[gi][row]
                if lo is not None and hi is not None:
                    per[e] = _gripper_units(lo, hi)
            unit, cands = _decide(per)
            groups.append(GroupResult(feature, "gripper", {gi: "gripper"}, unit, cands, per))
        conv = summary["conventions"].setdefault(feature, {})
        for g in groups:
            label = g.unit or (" or ".join(g.candidates) if g.candidates else "unknown")
            for i in g.dims:
                conv[names[i]] = label
            findings += _mixed(g, names)
            if g.unit is not None:
                findings += _limits(g, names, ranges, ids)
    return summary, findings


def _mixed(g: GroupResult, names: list[str]) -> list[Finding]:
    if g.unit is None:
        return []
    odd: dict[str, list[int]] = {}
    for e, units in g.per_episode.items():
        if units and g.unit not in units:
            odd.setdefault(" or ".join(sorted(units)), []).append(e)
    out = []
    what = f"{g.feature} {'joints' if g.group == 'joints' else names[next(iter(g.dims))]}"
    for units, ids in sorted(odd.items()):
        ids = sorted(ids)
        out.append(
            Finding(
                "mixed_units",
                "fail",
                ids,
                f"{what} recorded in {units} in {plural(len(ids), 'episode')} ({ids_text(ids)}) but in "
                f"{g.unit} ({UNIT_TEXT.get(g.unit, g.unit)}) elsewhere: a policy trained on both drives "
                "the arm to wrong targets",
                {"feature": g.feature, "group": g.group, "unit": units, "dataset_unit": g.unit},
            )
        )
    return out


def _limits(
    g: GroupResult, names: list[str], ranges: dict[int, list[tuple]], ids: list[int]
) -> list[Finding]:
    out = []
    for i, k in g.dims.items():
        if k == "gripper":
            lo_lim, hi_lim = gripper_limits(g.unit)  # type: ignore[arg-type]
        else:
            lo_lim, hi_lim = joint_limits(int(k), g.unit)  # type: ignore[arg-type]
        margin = LIMIT_MARGIN * (hi_lim - lo_lim)
        bad, worst = [], None
        for row, e in enumerate(ids):
            lo, hi = ranges[i][row]
            if lo is None or hi is None:
                continue
            units = g.per_episode.get(e, set())
            if units and g.unit not in units:
                continue  # reported as mixed units already
            if lo < lo_lim - margin or hi > hi_lim + margin:
                bad.append(e)
                if worst is None:
                    worst = (e, lo, hi)
        if bad:
            e, lo, hi = worst  # type: ignore[misc]
            out.append(
                Finding(
                    "out_of_range",
                    "fail",
                    bad,
                    f"{g.feature}[{names[i]}] outside the PiPER's limits [{lo_lim:.4g}, {hi_lim:.4g}] "
                    f"{g.unit} in {plural(len(bad), 'episode')}: {ids_text(bad)} (episode {e}: "
                    f"{lo:.4g}..{hi:.4g})",
                    {"feature": g.feature, "dimension": i, "unit": g.unit, "limits": [lo_lim, hi_lim]},
                )
            )
    return out


def feature_units(names: list[str], mins: list[float], maxs: list[float]) -> dict[str, list[str]]:
    """The joint and gripper conventions a PiPER vector's overall value ranges fit: {"joints": ["rad"], "gripper": ["m"]}.

    Several candidates when the ranges fit several; a group is left out when its names are not
    PiPER joints or its values tell nothing (all zero).
    """
    dims = piper_dims(names)
    order = (*JOINT_UNITS, *GRIPPER_UNITS)
    out: dict[str, list[str]] = {}
    joints = {k: (float(mins[i]), float(maxs[i])) for i, k in dims.items() if k != "gripper"}
    if joints and (found := _joint_units(joints)):  # type: ignore[arg-type]
        out["joints"] = sorted(found, key=order.index)
    grippers = [i for i, k in dims.items() if k == "gripper"]
    found = _gripper_units(float(mins[grippers[0]]), float(maxs[grippers[0]])) if grippers else set()
    # A plugin records its gripper in the convention of its joints: that settles "mm or 0..100".
    joint = out.get("joints", [])
    paired = {"rad": "m", "deg": "mm", "percent": "0..100"}.get(joint[0]) if len(joint) == 1 else None
    if found:
        out["gripper"] = [paired] if paired in found else sorted(found, key=order.index)
    return out


def unit_affine(dim: int | str, unit: str) -> tuple[float, float]:
    """(a, b) with value_in_unit = a * value_in_rad_or_m + b, for PiPER joint `dim` (1..6 or "gripper")."""
    if dim == "gripper":
        return {"m": 1.0, "mm": 1000.0, "0..100": 100.0 / PIPER_GRIPPER_M[1]}[unit], 0.0
    if unit == "deg":
        return 180.0 / math.pi, 0.0
    if unit == "percent":
        lo, hi = PIPER_JOINT_LIMITS_RAD[int(dim)]
        a = 200.0 / (hi - lo)
        return a, -100.0 - lo * a
    return 1.0, 0.0
