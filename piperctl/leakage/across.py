"""Leakage across datasets: episodes, or runs of moving frames, that occur in two datasets of a collection.

Each dataset is scanned on its own first (its frame hashes are kept); here the hash arrays of all
datasets are compared bucket by bucket, as `scan.repeated_hashes` does within one dataset, and only
the frames whose hash occurs in two datasets are read back and grouped by their actual values. Rest
poses follow the single-dataset rule (`scan.mark_rest_poses`), and pairs are counted by the same
`content_checks.shared_pairs`, so a copy across datasets is what a copy between episodes is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from piperctl.leakage.content_checks import rest_summary, shared_pairs
from piperctl.leakage.layout import Layout
from piperctl.leakage.reader import concat_parts
from piperctl.leakage.result import AcrossCheckResult, Finding
from piperctl.leakage.scan import HASH_SORT, ScanResult, list_widths, mark_rest_poses, read_candidates

KEY_BITS = 40  # a frame's episode across datasets is (dataset << KEY_BITS) | episode_index


@dataclass
class Member:
    """One dataset of the collection, as the checks across datasets see it."""

    label: str  # how messages name it: LABEL:EPISODE
    layout: Layout
    scan: ScanResult
    lengths: pl.DataFrame  # episode_index, rows
    splits: dict[str, list[int]] = field(default_factory=dict)
    splits_source: str = ""


def signature(layout: Layout, features: list[str]) -> tuple[tuple[str, str, int], ...]:
    """What two datasets must share for their frames to be compared: feature names, value types, widths."""
    f = layout.files[0] if layout.files else None
    sig = []
    for c in sorted(features):
        t = f.schema.field(c).type if f is not None else pa.null()
        if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
            sig.append((c, str(t.value_type), len(layout.dim_names.get(c, []))))
        else:
            sig.append((c, str(t), 0))
    return tuple(sig)


def shared_hashes(datasets: list[list[np.ndarray]]) -> np.ndarray:
    """The hash values that occur in at least two of `datasets` (each a list of hash arrays), sorted.

    Bucketed by the hashes' top bits exactly like `scan.repeated_hashes`, so memory holds the hashes
    once plus one bucket whatever the collection's size.
    """
    total = sum(len(p) for parts in datasets for p in parts)
    bits = max(0, math.ceil(math.log2(max(total, 1) / HASH_SORT)))
    found = []
    for bucket in range(2**bits):
        uniques = []
        for parts in datasets:
            if bits:
                top = np.uint64(64 - bits)
                values = np.concatenate([p[(p >> top) == bucket] for p in parts] or [np.zeros(0, np.uint64)])
            else:
                values = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
            uniques.append(np.unique(values))  # each dataset counts once per value
        values = np.concatenate(uniques)
        values.sort()
        found.append(np.unique(values[1:][values[1:] == values[:-1]]))
    return np.concatenate(found) if found else np.zeros(0, np.uint64)


def across_pairs(
    members: list[Member],
    group: list[int],
    rest_frames: int,
    min_shared: int,
    progress: Callable[[int], None] = lambda n: None,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Pairs of episodes of different datasets of `group` (positions in `members`, one `signature`)
    sharing moving frames, as keys (see KEY_BITS), and the rest poses left out.

    A frame is compared in each dataset's own values.
    """
    features = members[group[0]].scan.features
    shared = shared_hashes([[p.hashes for p in members[k].scan.hashes] for k in group])
    parts, lengths = [], []
    for k in group:
        m = members[k]
        lengths.append(m.lengths.select(episode_index=pl.col("episode_index") + (k << KEY_BITS), rows="rows"))
        hit = [p.candidates(shared) for p in m.scan.hashes] if len(shared) else []
        candidates = pl.concat(hit) if hit else None
        if candidates is not None and candidates.height:
            picked = read_candidates(m.layout, candidates, features, list_widths(m.layout, features))
            parts.append(picked.with_columns(pl.col("episode_index") + (k << KEY_BITS)).drop("_row"))
        progress(1)
    if not parts:
        return _no_pairs(), {"rest_poses": 0, "rest_frames": 0}
    classes = (
        concat_parts(parts)
        .group_by(sorted(features))
        .agg("episode_index", "frame_index", "_still")
        .with_row_index("cls")
        .select("cls", "episode_index", "frame_index", "_still")
        .explode("episode_index", "frame_index", "_still")
    )
    classes = mark_rest_poses(classes, rest_frames)
    pairs = shared_pairs(classes, pl.concat(lengths), min_shared)
    # Pairs inside one dataset are that dataset's own cross_episode findings.
    pairs = pairs.filter((pl.col("a") // (1 << KEY_BITS)) != (pl.col("b") // (1 << KEY_BITS)))
    return pairs, rest_summary(classes)


def _no_pairs() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "a": pl.Int64,
            "b": pl.Int64,
            "shared_a": pl.UInt32,
            "shared_b": pl.UInt32,
            "len_a": pl.UInt32,
            "len_b": pl.UInt32,
            "share_of_shorter": pl.Float64,
            "exact_duplicate": pl.Boolean,
        }
    )


def _ref(members: list[Member], key: int) -> tuple[str, int, str]:
    m, e = members[key >> KEY_BITS], key & ((1 << KEY_BITS) - 1)
    return m.label, e, f"{m.label}:{e}"


def _pair_fields(members: list[Member], row: dict) -> dict:
    la, ea, ra = _ref(members, row["a"])
    lb, eb, rb = _ref(members, row["b"])
    exact = bool(row["exact_duplicate"])
    shared = [row["len_a"], row["len_b"]] if exact else [row["shared_a"], row["shared_b"]]
    return {
        "refs": [ra, rb],
        "datasets": [la, lb],
        "episode_ids": [ea, eb],
        "shared_frames": [int(s) for s in shared],
        "lengths": [int(row["len_a"]), int(row["len_b"])],
        "share_of_shorter": 1.0 if exact else round(float(row["share_of_shorter"]), 4),
        "exact_duplicate": exact,
    }


def check_copies(
    members: list[Member], pairs: pl.DataFrame, rest: dict[str, int], rest_frames: int, note: str
) -> AcrossCheckResult:
    """Episodes of one dataset found, whole or in runs of moving frames, in another dataset."""
    res = AcrossCheckResult(
        "copies_across", "Episodes shared between datasets", order=[m.label for m in members]
    )
    for row in pairs.iter_rows(named=True):
        d = _pair_fields(members, row)
        ra, rb = d.pop("refs")
        if d["exact_duplicate"]:
            kind, msg = "duplicate_episode", f"{ra} and {rb} are the same episode ({row['len_a']} frames)"
        else:
            kind = "shared_frames"
            msg = (
                f"{ra} and {rb} share frames: {row['shared_a']} of {ra}'s {row['len_a']} and "
                f"{row['shared_b']} of {rb}'s {row['len_b']} ({row['share_of_shorter']:.0%} of the shorter)"
            )
        res.findings.append(Finding(kind, "fail", [ra, rb], msg, d))  # type: ignore[list-item]
    res.extra["pairs_total"] = pairs.height
    res.extra.update(rest)
    left_out = (
        f" ({rest['rest_frames']} frames of {rest['rest_poses']} rest poses held {rest_frames}+ frames left out)"
        if rest["rest_frames"]
        else ""
    )
    res.note = f"no moving frame of one dataset appears in another{left_out}{note}"
    return res


def _owners(splits: dict[str, list[int]]) -> dict[int, set[str]]:
    owner: dict[int, set[str]] = {}
    for name, ids in splits.items():
        for e in ids:
            owner.setdefault(e, set()).add(name)
    return owner


def check_split_across(members: list[Member], pairs: pl.DataFrame) -> AcrossCheckResult:
    """A pair shared between datasets whose episodes sit in different splits (train in one, val in another)."""
    res = AcrossCheckResult(
        "split_leakage_across", "Split leakage across datasets", order=[m.label for m in members]
    )
    owners = [_owners(m.splits) for m in members]
    res.extra["splits"] = {m.label: {k: len(set(v)) for k, v in m.splits.items()} for m in members}
    res.extra["splits_source"] = {m.label: m.splits_source for m in members}
    for row in pairs.iter_rows(named=True):
        d = _pair_fields(members, row)
        ra, rb = d.pop("refs")
        sa = owners[row["a"] >> KEY_BITS].get(d["episode_ids"][0], set())
        sb = owners[row["b"] >> KEY_BITS].get(d["episode_ids"][1], set())
        if sa and sb and sa != sb:
            msg = (
                f"{ra} ({', '.join(sorted(sa))}) and {rb} ({', '.join(sorted(sb))}) share "
                f"{max(d['shared_frames'])} frames"
            )
            res.findings.append(Finding("shared_frames", "fail", [ra, rb], msg, d))  # type: ignore[list-item]
    names = sorted({n for m in members for n in m.splits})
    if not names:
        res.note = "no splits declared"
    elif len(names) == 1:
        res.note = f"every dataset has one split ({names[0]}): nothing can leak between splits"
    else:
        res.note = f"no frame is shared between splits ({', '.join(names)}) of different datasets"
    return res


def run_across(
    members: list[Member], rest_frames: int, min_shared: int, progress: Callable[[int], None] = lambda n: None
) -> list[AcrossCheckResult]:
    """The checks across the datasets of a full scan: copies, then split leakage; `progress(1)` per dataset."""
    sigs = [signature(m.layout, m.scan.features) for m in members]
    groups: dict[tuple, list[int]] = {}
    for k, sig in enumerate(sigs):
        groups.setdefault(sig, []).append(k)
    all_pairs, rest = [], {"rest_poses": 0, "rest_frames": 0}
    for sig, group in groups.items():
        if len(group) < 2 or not sig:
            progress(len(group))
            continue
        pairs, r = across_pairs(members, group, rest_frames, min_shared, progress)
        all_pairs.append(pairs)
        rest = {k: rest[k] + r[k] for k in rest}
    pairs = pl.concat(all_pairs, how="vertical_relaxed") if all_pairs else _no_pairs()
    pairs = pairs.sort(
        ["exact_duplicate", "share_of_shorter", "a", "b"], descending=[True, True, False, False]
    )
    apart = [
        [members[a].label, members[b].label]
        for a in range(len(members))
        for b in range(a + 1, len(members))
        if sigs[a] != sigs[b] or not sigs[a]
    ]
    note = (
        f"; not compared (other features or types): {', '.join(' and '.join(p) for p in apart)}"
        if apart
        else ""
    )
    copies = check_copies(members, pairs, rest, rest_frames, note)
    copies.extra["not_compared"] = apart
    if not all_pairs and len(apart) == len(members) * (len(members) - 1) // 2:
        copies.skip(
            "skipped: no two datasets have the same low-dimensional features and types, so no frame can be equal"
        )
    split = check_split_across(members, pairs)
    if copies.skipped:
        split.skip(copies.skipped)
    return [copies, split]
