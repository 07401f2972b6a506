"""Full-mode checks 6-8: duplicate and frozen data, bad values, cross-episode copies, split leakage."""

from __future__ import annotations

import polars as pl

from piperctl.leakage.layout import Layout
from piperctl.leakage.result import CheckResult, Finding, ids_text, plural


def _moving(classes: pl.DataFrame) -> pl.DataFrame:
    """The classes that are not rest poses (a pose the arm held still is no copy)."""
    return classes.filter(~pl.col("rest")) if "rest" in classes.columns else classes


def rest_summary(classes: pl.DataFrame) -> dict[str, int]:
    """How many rest poses, and frames in them, the comparisons left out."""
    if "rest" not in classes.columns:
        return {"rest_poses": 0, "rest_frames": 0}
    rest = classes.filter(pl.col("rest"))
    return {"rest_poses": rest["cls"].n_unique(), "rest_frames": rest.height}


def check_duplicate_frames(classes: pl.DataFrame, rest_frames: int = 2) -> CheckResult:
    """6a. Exact duplicate frames (every low-dimensional feature equal) inside one episode, rests excepted."""
    res = CheckResult("duplicate_frames", "Duplicate frames within episodes")
    dup = (
        _moving(classes)
        .group_by("cls", "episode_index")
        .agg(pl.col("frame_index").sort())
        .filter(pl.col("frame_index").list.len() > 1)
        .group_by("episode_index")
        .agg(
            extra=(pl.col("frame_index").list.len() - 1).sum(),
            example=pl.col("frame_index").sort_by(pl.col("frame_index").list.first()).first(),
        )
        .sort("episode_index")
    )
    if dup.height:
        ids = dup["episode_index"].to_list()
        e, n, ex = dup.row(0)
        res.findings.append(
            Finding(
                "duplicate_frames",
                "warn",
                ids,
                f"{plural(int(dup['extra'].sum()), 'duplicate frame')} in {plural(len(ids), 'episode')}: "
                f"{ids_text(ids)} (episode {e}: frames {ids_text(ex, 4)} are identical)",
                {"details": [{"episode": a, "duplicates": int(b)} for a, b, _ in dup.rows()[:1000]]},
            )
        )
    rest = rest_summary(classes)
    res.extra.update(rest)
    res.note = "no frame repeated inside an episode" + (
        f" ({rest['rest_frames']} frames of {rest['rest_poses']} rest poses held {rest_frames}+ frames left out)"
        if rest["rest_frames"]
        else ""
    )
    return res


def check_frozen_streams(
    frozen: pl.DataFrame, frozen_frames: int, fps: float, vectors: list[str] | None = None
) -> CheckResult:
    """6b. Runs of at least `frozen_frames` identical values of any float vector feature."""
    res = CheckResult("frozen_streams", "Frozen state/action streams")
    vectors = vectors if vectors is not None else sorted(set(frozen["feature"].to_list()))
    res.extra["features"] = vectors
    for feature in sorted(set(frozen["feature"].to_list())):
        runs = frozen.filter(pl.col("feature") == feature).sort("length", descending=True)
        ids = sorted(set(runs["episode_index"].to_list()))
        e, _, start, length = runs.row(0)
        res.findings.append(
            Finding(
                f"frozen_{feature}",
                "warn",
                ids,
                f"{feature} frozen for {frozen_frames}+ frames in {plural(len(ids), 'episode')}: {ids_text(ids)}"
                f" (longest: episode {e}, {length} frames = {length / fps:.1f} s from frame {start})",
                {"runs": [dict(zip(runs.columns, r, strict=True)) for r in runs.rows()[:1000]]},
            )
        )
    if not vectors:
        res.note = "no float vector features to check"
    else:
        res.note = f"no run of {frozen_frames}+ identical values ({frozen_frames / fps:.1f} s) in {', '.join(vectors)}"
    return res


def check_values(stats: pl.DataFrame, features: list[str]) -> CheckResult:
    """6c. No NaN, Inf or missing values in any low-dimensional feature."""
    res = CheckResult("non_finite", "NaN / Inf values")
    for c in features:
        for prefix, what in (("nonfinite", "NaN/Inf values"), ("null", "missing (null) values")):
            col = f"{prefix}|{c}"
            if col not in stats.columns:
                continue
            hit = stats.filter(pl.col(col) > 0)
            if hit.height:
                ids = hit["episode_index"].to_list()
                n = int(hit[col].sum())
                res.findings.append(
                    Finding(
                        prefix,
                        "fail",
                        ids,
                        f"{plural(n, 'frame')} with {what} in {c}, in {plural(len(ids), 'episode')}: "
                        f"{ids_text(ids)}",
                        {"feature": c, "frames": n},
                    )
                )
    res.note = f"every value finite in {', '.join(features)}" if features else "no numeric features to check"
    return res


def check_constant_dims(stats: pl.DataFrame, layout: Layout, features: list[str]) -> CheckResult:
    """6d. Dimensions that never change during an episode (a stuck joint or a dead sensor)."""
    res = CheckResult("constant_dimensions", "Constant dimensions")
    total = stats.filter(pl.col("rows") > 1).height
    for c in features:
        names = layout.dim_names.get(c) or []
        i = 0
        while f"min|{c}|{i}" in stats.columns:
            lo, hi = pl.col(f"min|{c}|{i}"), pl.col(f"max|{c}|{i}")
            hit = stats.filter((pl.col("rows") > 1) & lo.is_not_null() & (lo == hi))
            if hit.height:
                ids = hit["episode_index"].to_list()
                label = f"{c}[{names[i] if i < len(names) else i}]"
                where = "every episode" if len(ids) == total else f"{len(ids)}/{total} episodes"
                res.findings.append(
                    Finding(
                        "constant",
                        "warn",
                        ids,
                        f"{label} constant in {where}: {ids_text(ids)}",
                        {"feature": c, "dimension": i},
                    )
                )
            i += 1
    res.note = "every dimension changes during every episode"
    return res


def shared_pairs(classes: pl.DataFrame, lengths: pl.DataFrame, min_shared: int) -> pl.DataFrame:
    """Pairs (a < b) of episodes sharing frames: frames of each found in the other, share of the shorter.

    `lengths` holds (episode_index, rows). Exact duplicate episodes have every frame equal, in order.
    """
    every = classes.select("cls", "episode_index", "frame_index").unique()
    ce = _moving(classes).select("cls", "episode_index", "frame_index").unique()
    ceps = ce.select("cls", "episode_index").unique()
    multi = ceps.group_by("cls").len().filter(pl.col("len") > 1).select("cls")
    ce = ce.join(multi, on="cls", how="semi")
    ceps = ceps.join(multi, on="cls", how="semi")
    found = (
        ce.join(ceps.rename({"episode_index": "other"}), on="cls")
        .filter(pl.col("episode_index") != pl.col("other"))
        .group_by("episode_index", "other")
        .agg(n=pl.col("frame_index").n_unique())
    )
    a = found.filter(pl.col("episode_index") < pl.col("other")).rename(
        {"episode_index": "a", "other": "b", "n": "shared_a"}
    )
    b = found.filter(pl.col("episode_index") > pl.col("other")).rename(
        {"episode_index": "b", "other": "a", "n": "shared_b"}
    )
    lens = lengths.select("episode_index", "rows")
    pairs = (
        a.join(b, on=["a", "b"], how="full", coalesce=True)
        .with_columns(pl.col("shared_a", "shared_b").fill_null(0))
        .join(lens.rename({"episode_index": "a", "rows": "len_a"}), on="a", how="left")
        .join(lens.rename({"episode_index": "b", "rows": "len_b"}), on="b", how="left")
        .filter(pl.max_horizontal("shared_a", "shared_b") >= min_shared)
        .with_columns(
            share_of_shorter=pl.when(pl.col("len_a") < pl.col("len_b"))
            .then(pl.col("shared_a") / pl.col("len_a"))
            .when(pl.col("len_a") > pl.col("len_b"))
            .then(pl.col("shared_b") / pl.col("len_b"))
            .otherwise(
                pl.max_horizontal(pl.col("shared_a") / pl.col("len_a"), pl.col("shared_b") / pl.col("len_b"))
            )
        )
    )
    # Episodes all of whose frames occur elsewhere (rest frames included) may be exact duplicates.
    counted = every.group_by("episode_index").agg(n_all=pl.len())
    full = (
        pairs.join(counted.rename({"episode_index": "a", "n_all": "all_a"}), on="a", how="left")
        .join(counted.rename({"episode_index": "b", "n_all": "all_b"}), on="b", how="left")
        .filter(
            (pl.col("len_a") == pl.col("len_b"))
            & (pl.col("all_a") == pl.col("len_a"))
            & (pl.col("all_b") == pl.col("len_b"))
        )
    )
    exact: set[tuple[int, int]] = set()
    if full.height:
        # Same frames in the same order: the class sequences sorted by frame_index are equal.
        seqs = every.sort("episode_index", "frame_index", "cls").group_by("episode_index").agg("cls")
        seq = dict(zip(seqs["episode_index"].to_list(), seqs["cls"].to_list(), strict=True))
        exact = {(x, y) for x, y in full.select("a", "b").rows() if seq.get(x) == seq.get(y)}
    flags = pl.DataFrame(
        {"a": [p[0] for p in exact], "b": [p[1] for p in exact]}, schema={"a": pl.Int64, "b": pl.Int64}
    ).with_columns(exact_duplicate=pl.lit(True))
    return (
        pairs.join(flags, on=["a", "b"], how="left")
        .with_columns(pl.col("exact_duplicate").fill_null(False))
        .sort(["share_of_shorter", "a", "b"], descending=[True, False, False])
    )


def _pair_dict(row: dict) -> dict:
    if row["exact_duplicate"]:  # every frame, rest poses too, is in the other episode in order
        row = {**row, "shared_a": row["len_a"], "shared_b": row["len_b"], "share_of_shorter": 1.0}
    return {
        "episodes": [row["a"], row["b"]],
        "shared_frames": [row["shared_a"], row["shared_b"]],
        "lengths": [row["len_a"], row["len_b"]],
        "share_of_shorter": round(float(row["share_of_shorter"]), 4),
        "exact_duplicate": bool(row["exact_duplicate"]),
    }


def check_cross_episode(
    pairs: pl.DataFrame, compared: int = 0, rest: dict[str, int] | None = None, rest_frames: int = 2
) -> CheckResult:
    """7. Moving frames of one episode found in another: partial copies and exact duplicate episodes."""
    res = CheckResult("cross_episode", "Cross-episode contamination")
    for row in pairs.iter_rows(named=True):
        a, b = row["a"], row["b"]
        if row["exact_duplicate"]:
            msg = f"episodes {a} and {b} are exact duplicates ({row['len_a']} frames)"
            kind = "duplicate_episode"
        else:
            msg = (
                f"episodes {a} and {b} share frames: {row['shared_a']} of {a}'s {row['len_a']} and "
                f"{row['shared_b']} of {b}'s {row['len_b']} ({row['share_of_shorter']:.0%} of the shorter)"
            )
            kind = "shared_frames"
        res.findings.append(Finding(kind, "fail", [a, b], msg, _pair_dict(row)))
    res.extra["pairs_total"] = pairs.height
    res.extra["frames_compared"] = compared  # frames whose hash repeated, compared value by value
    rest = rest or {"rest_poses": 0, "rest_frames": 0}
    res.extra.update(rest)
    res.note = "no moving frame of one episode appears in another" + (
        f" ({rest['rest_frames']} frames of {rest['rest_poses']} rest poses held {rest_frames}+ frames left out)"
        if rest["rest_frames"]
        else ""
    )
    return res


def check_split_leakage(
    splits: dict[str, list[int]], source: str, pairs: pl.DataFrame, data_ids: set[int]
) -> CheckResult:
    """8. No episode id and no frame content shared between splits."""
    res = CheckResult("split_leakage", "Split leakage")
    res.extra["splits"] = {k: len(set(v)) for k, v in splits.items()}
    res.extra["splits_source"] = source
    owner: dict[int, list[str]] = {}
    for name, ids in splits.items():
        for e in sorted(set(ids)):
            owner.setdefault(e, []).append(name)
    both = {e: names for e, names in owner.items() if len(names) > 1}
    if both:
        ids = sorted(both)
        e = ids[0]
        res.findings.append(
            Finding(
                "shared_episode_id",
                "fail",
                ids,
                f"{plural(len(ids), 'episode')} in more than one split: {ids_text(ids)} (episode {e} in {', '.join(both[e])})",
            )
        )
    for row in pairs.iter_rows(named=True):
        a, b = row["a"], row["b"]
        sa, sb = set(owner.get(a, [])), set(owner.get(b, []))
        if sa and sb and (sa - sb or sb - sa):
            res.findings.append(
                Finding(
                    "shared_frames",
                    "fail",
                    [a, b],
                    f"episode {a} ({', '.join(sorted(sa))}) and episode {b} ({', '.join(sorted(sb))}) share "
                    f"{max(row['shared_a'], row['shared_b'])} frames",
                    _pair_dict(row),
                )
            )
    unknown = sorted(set(owner) - data_ids)
    if unknown:
        res.findings.append(
            Finding(
                "unknown_episode",
                "warn",
                unknown,
                f"splits name episodes missing from the data: {ids_text(unknown)}",
            )
        )
    if len(splits) < 2:
        only = next(iter(splits), None)
        res.note = f"one split ({only}): nothing can leak between splits" if only else "no splits declared"
    else:
        res.note = f"{', '.join(sorted(splits))} ({source}) share no episode and no frame"
    return res
