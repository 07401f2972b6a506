"""Minimal-mode checks 1-5: episode, frame and global indices, timestamps and metadata totals."""

from __future__ import annotations

import shlex

import polars as pl

from piperctl.leakage.layout import Layout
from piperctl.leakage.result import CheckResult, Finding, Status, ids_text, plural


def per_episode(episodes: pl.DataFrame, runs: pl.DataFrame) -> pl.DataFrame:
    """One row per episode id (nulls dropped): rows, index ranges, and fault counts over all files."""
    bulk = (
        episodes.filter(pl.col("episode_index").is_not_null())
        .group_by("episode_index")
        .agg(
            pl.col("rows", "fi_null", "idx_null", "ts_null", "ts_steps", "ts_step_sum", "ts_step_sq").sum(),
            pl.col("first_row", "fi_min", "idx_min").min(),
            pl.col("fi_max", "idx_max", "ts_max_dev", "ts_off_max").max(),
        )
    )
    counts = [c for c in runs.columns if c not in ("episode_index", "file") and not c.endswith("_at")]
    firsts = [c for c in runs.columns if c.endswith("_at")]
    events = (
        runs.filter(pl.col("episode_index").is_not_null())
        .group_by("episode_index")
        .agg(
            pl.col("file").unique().sort().alias("files"),
            *[pl.col(c).sum() for c in counts],
            pl.col(firsts).min(),
        )
    )
    return bulk.join(events, on="episode_index", how="left").sort("episode_index")


def _per_episode_finding(
    eps: pl.DataFrame, mask: pl.Expr, kind: str, what: str, status: Status = "fail", at: str | None = None
) -> Finding | None:
    """One finding for the episodes where `mask` holds; `at` names a column giving the first bad frame."""
    hit = eps.filter(mask)
    if hit.height == 0:
        return None
    ids = hit["episode_index"].to_list()
    examples = ""
    if at is not None:
        pairs = [
            f"{e} at frame {f}" for e, f in zip(ids[:3], hit[at].to_list()[:3], strict=True) if f is not None
        ]
        examples = f" (episode {', '.join(pairs)})" if pairs else ""
    details = [{"episode": e, "frame": f} for e, f in zip(ids, hit[at].to_list(), strict=True)] if at else []
    return Finding(
        kind,
        status,
        ids,
        f"{what} in {plural(len(ids), 'episode')}: {ids_text(ids)}{examples}",
        {"details": details[:1000]} if details else {},
    )


def _keep(findings: list[Finding | None]) -> list[Finding]:
    return [f for f in findings if f is not None]


def check_episode_index(layout: Layout, runs: pl.DataFrame, eps: pl.DataFrame, null_rows: int) -> CheckResult:
    """1. Each episode is one contiguous run of rows in one file, and data and metadata list the same ids."""
    res = CheckResult("episode_index", "Episode index uniqueness")
    meta = layout.episodes
    if null_rows:
        n, files = null_rows, sorted(set(runs.filter(pl.col("episode_index").is_null())["file"].to_list()))
        res.findings.append(
            Finding("null", "fail", [], f"{plural(n, 'row')} without an episode_index in {', '.join(files)}")
        )
    split = eps.filter(pl.col("runs") > 1)
    if split.height:
        ids = split["episode_index"].to_list()
        shown = [
            f"{e} ({r} runs in {', '.join(f)})"
            for e, r, f in split.select("episode_index", "runs", "files").rows()[:3]
        ]
        res.findings.append(
            Finding(
                "not_contiguous",
                "fail",
                ids,
                f"{plural(len(ids), 'episode')} not one contiguous run of rows in one file: {ids_text(ids)}"
                f" — episode {'; '.join(shown)}",
            )
        )
    known = meta.filter(pl.col("file").is_not_null()).select(
        "episode_index", pl.col("file").alias("meta_file")
    )
    wrong = (
        runs.filter(pl.col("episode_index").is_not_null())
        .select("episode_index", "file")
        .unique()
        .join(known, on="episode_index", how="inner")
        .filter(pl.col("file") != pl.col("meta_file"))
        .sort("episode_index")
    )
    if wrong.height:
        ids = wrong["episode_index"].unique(maintain_order=True).to_list()
        e, f, m = wrong.select("episode_index", "file", "meta_file").row(0)
        res.findings.append(
            Finding(
                "wrong_file",
                "fail",
                ids,
                f"{plural(len(ids), 'episode')} not in the file {layout.episodes_source} names: {ids_text(ids)}"
                f" (episode {e} found in {f}, expected {m})",
            )
        )
    dup_meta = (
        meta.group_by("episode_index").len().filter(pl.col("len") > 1)["episode_index"].sort().to_list()
    )
    if dup_meta:
        res.findings.append(
            Finding(
                "duplicate_metadata",
                "fail",
                dup_meta,
                f"{layout.episodes_source} lists episodes more than once: {ids_text(dup_meta)}",
            )
        )
    data_ids = set(eps["episode_index"].to_list())
    meta_ids = set(meta["episode_index"].drop_nulls().to_list())
    only_data, only_meta = sorted(data_ids - meta_ids), sorted(meta_ids - data_ids)
    if only_data:
        res.findings.append(
            Finding(
                "missing_from_metadata",
                "fail",
                only_data,
                f"episodes in the data but not in {layout.episodes_source}: {ids_text(only_data)}",
            )
        )
    if only_meta:
        res.findings.append(
            Finding(
                "missing_from_data",
                "fail",
                only_meta,
                f"episodes in {layout.episodes_source} but not in the data: {ids_text(only_meta)}",
            )
        )
    every = data_ids | meta_ids
    if every:
        gaps = sorted(set(range(0, max(every) + 1)) - every)
        if gaps:
            res.findings.append(
                Finding(
                    "numbering_gap",
                    "warn",
                    gaps,
                    f"episode ids missing from the numbering 0..{max(every)}: {ids_text(gaps)}",
                )
            )
    res.note = (
        f"{plural(len(data_ids), 'episode')}, each one contiguous run matching {layout.episodes_source}"
    )
    return res


def check_frame_index(layout: Layout, eps: pl.DataFrame) -> CheckResult:
    """2. Per episode, frame_index runs 0..length-1 by steps of one, and the length matches the metadata."""
    res = CheckResult("frame_index", "Frame index continuity")
    res.findings = _keep(
        [
            _per_episode_finding(eps, pl.col("fi_null") > 0, "null", "frame_index missing (null)"),
            _per_episode_finding(
                eps,
                pl.col("fi_start") > 0,
                "not_from_zero",
                "frame_index not starting at 0",
                at="fi_start_at",
            ),
            _per_episode_finding(
                eps, pl.col("fi_repeat") > 0, "repeat", "frame_index repeats", at="fi_repeat_at"
            ),
            _per_episode_finding(
                eps, pl.col("fi_back") > 0, "backwards", "frame_index going backwards", at="fi_back_at"
            ),
            _per_episode_finding(
                eps, pl.col("fi_skip") > 0, "gap", "frame_index skipping frames", at="fi_skip_at"
            ),
        ]
    )
    lengths = eps.join(layout.episodes.select("episode_index", "length"), on="episode_index", how="inner")
    bad = lengths.filter(pl.col("rows") != pl.col("length"))
    if bad.height:
        ids = bad["episode_index"].to_list()
        shown = ", ".join(
            f"{e} has {r} (metadata {m})"
            for e, r, m in bad.select("episode_index", "rows", "length").rows()[:3]
        )
        res.findings.append(
            Finding(
                "length_mismatch",
                "fail",
                ids,
                f"frame counts differ from {layout.episodes_source} in {plural(len(ids), 'episode')}: {shown}",
            )
        )
    res.note = f"{plural(int(eps['rows'].sum() or 0), 'frame')} numbered 0..length-1 in every episode"
    return res


def _overlaps(eps: pl.DataFrame) -> list[tuple[int, int]]:
    """Pairs of episodes whose [min, max] index ranges intersect (sweep over ranges sorted by start)."""
    r = eps.filter(pl.col("idx_min").is_not_null()).sort("idx_min")
    ids, lo, hi = (r[c].to_numpy() for c in ("episode_index", "idx_min", "idx_max"))
    pairs, best, best_id = [], None, None
    for i in range(len(ids)):
        if best is not None and lo[i] <= best:
            pairs.append((int(best_id), int(ids[i])))
        if best is None or hi[i] > best:
            best, best_id = hi[i], ids[i]
    return pairs


def check_global_index(layout: Layout, eps: pl.DataFrame) -> CheckResult:
    """3. `index` is unique over the dataset, consecutive inside episodes, and matches the metadata ranges."""
    res = CheckResult("global_index", "Global index overlaps")
    res.findings = _keep(
        [
            _per_episode_finding(eps, pl.col("idx_null") > 0, "null", "index missing (null)"),
            _per_episode_finding(
                eps,
                pl.col("idx_step") > 0,
                "not_consecutive",
                "index not increasing by one inside the episode",
            ),
        ]
    )
    pairs = _overlaps(eps)
    if pairs:
        ids = sorted({e for p in pairs for e in p})
        shown = ", ".join(f"{a} and {b}" for a, b in pairs[:3])
        res.findings.append(
            Finding(
                "overlap",
                "fail",
                ids,
                f"{plural(len(pairs), 'pair')} of episodes with overlapping index ranges: {shown}",
                {"pairs": [list(p) for p in pairs[:1000]]},
            )
        )
    ranges = eps.join(
        layout.episodes.select("episode_index", "dataset_from_index", "dataset_to_index"),
        on="episode_index",
        how="inner",
    ).filter(pl.col("dataset_from_index").is_not_null() & pl.col("dataset_to_index").is_not_null())
    bad = ranges.filter(
        (pl.col("idx_min") != pl.col("dataset_from_index"))
        | (pl.col("idx_max") + 1 != pl.col("dataset_to_index"))
    )
    if bad.height:
        ids = bad["episode_index"].to_list()
        e, a, b, f, t = bad.select(
            "episode_index", "idx_min", "idx_max", "dataset_from_index", "dataset_to_index"
        ).row(0)
        source = layout.episodes_source + (" lengths" if layout.version == "v2.1" else "")
        res.findings.append(
            Finding(
                "range_mismatch",
                "fail",
                ids,
                f"index ranges differ from {source} in {plural(len(ids), 'episode')}: {ids_text(ids)}"
                f" (episode {e} covers [{a}, {None if b is None else b + 1}), expected [{f}, {t}))",
            )
        )
    res.note = "index unique, consecutive per episode and equal to the metadata ranges"
    return res


def check_timestamps(layout: Layout, eps: pl.DataFrame, tolerance_s: float) -> CheckResult:
    """4. Timestamps increase inside each episode by 1/fps within the tolerance."""
    res = CheckResult("timestamps", "Timestamps")
    period = 1.0 / layout.fps
    res.findings = _keep(
        [
            _per_episode_finding(eps, pl.col("ts_null") > 0, "null", "timestamp missing (null)"),
            _per_episode_finding(
                eps,
                pl.col("ts_nonmono") > 0,
                "not_monotonic",
                "timestamps repeating or going backwards",
                at="ts_nonmono_at",
            ),
            _per_episode_finding(
                eps,
                pl.col("ts_gap") > 0,
                "gap",
                f"timestamp gaps over 1.5 frame periods ({1.5 * period:.4g} s)",
                at="ts_gap_at",
            ),
            _per_episode_finding(
                eps,
                pl.col("ts_jitter") > 0,
                "jitter",
                f"timestamp steps off 1/fps by more than {tolerance_s:g} s",
                at="ts_jitter_at",
            ),
        ]
    )
    _add_step_statistics(res, eps, period)
    _name_retime(res, eps, tolerance_s, layout)
    worst = eps["ts_max_dev"].max() if eps.height else None
    res.extra["max_step_error_s"] = None if worst is None else float(worst)  # type: ignore[arg-type]
    res.note = f"steps of 1/{layout.fps:g} s within {tolerance_s:g} s" + (
        f" (worst {float(worst):.2g} s)" if worst is not None else ""  # type: ignore[arg-type]
    )
    return res


RETIME = "piperctl dataset convert SRC OUT --retime"


def retime_command(layout: Layout) -> str:
    """The retime fix for this dataset: a copy in `<name>_retimed` beside it, the original untouched."""
    root = layout.root
    out = root.with_name(f"{root.name}_retimed")
    return f"piperctl dataset convert {shlex.quote(str(root))} {shlex.quote(str(out))} --retime"


def _name_retime(res: CheckResult, eps: pl.DataFrame, tolerance_s: float, layout: Layout) -> None:
    """When the faulty timestamps are not frame_index / fps (wall-clock times, say), name the fix."""
    steps = [f for f in res.findings if f.kind in ("not_monotonic", "gap", "jitter")]
    if not steps:
        return
    ids = sorted({e for f in steps for e in f.episodes})
    off = eps.filter(pl.col("episode_index").is_in(ids))["ts_off_max"].max()
    if off is None or float(off) <= tolerance_s:  # type: ignore[arg-type]
        return
    command = retime_command(layout)
    fix = (
        f"timestamps up to {float(off):.3g} s off frame_index / fps — if each row is one video frame, "  # type: ignore[arg-type]
        f"`{RETIME}` rewrites them as frame_index / fps: `{command}`"
    )
    steps[0].message += f"; {fix}"
    for f in steps:
        f.extra["fix"] = command
    res.extra["max_offset_s"] = float(off)  # type: ignore[arg-type]
    res.extra["fix"] = command


def _add_step_statistics(res: CheckResult, eps: pl.DataFrame, period: float) -> None:
    """Mean and spread of the steps of jittery episodes: jitter shows even when the mean step is right."""
    stats = eps.with_columns(
        mean=pl.col("ts_step_sum") / pl.col("ts_steps"),
        std=((pl.col("ts_step_sq") / pl.col("ts_steps")) - (pl.col("ts_step_sum") / pl.col("ts_steps")) ** 2)
        .clip(lower_bound=0.0)
        .sqrt(),
    )
    by_ep = {e: (m, s) for e, m, s in stats.select("episode_index", "mean", "std").rows()}
    for f in res.findings:
        if f.kind != "jitter":
            continue
        for d in f.extra.get("details", []):
            m, s = by_ep.get(d["episode"], (None, None))
            d["mean_step_s"] = None if m is None else round(float(m), 7)
            d["std_step_s"] = None if s is None else round(float(s), 7)
        e = f.episodes[0]
        m, s = by_ep.get(e, (None, None))
        if m is not None and s is not None:
            f.message += (
                f"; episode {e}: mean step {m * 1e3:.2f} ms (1/fps {period * 1e3:.2f} ms), "
                f"spread {s * 1e3:.2f} ms"
            )


def check_metadata(layout: Layout, eps: pl.DataFrame) -> CheckResult:
    """5. The totals in meta/info.json match the data, the episode metadata and the task table."""
    res = CheckResult("metadata", "Metadata consistency")
    info, meta = layout.info, layout.episodes
    data_ids = eps["episode_index"].to_list()
    meta_ids = meta["episode_index"].drop_nulls().to_list()
    differ = sorted(set(data_ids) ^ set(meta_ids))
    rows = int(eps["rows"].sum() or 0) if eps.height else 0
    lengths = eps.join(meta.select("episode_index", "length"), on="episode_index", how="inner")
    off_length = sorted(lengths.filter(pl.col("rows") != pl.col("length"))["episode_index"].to_list())

    def total(key: str, actual: int, what: str, involved: list[int]) -> None:
        value = info.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            res.findings.append(
                Finding(f"{key}_missing", "warn", [], f"meta/info.json has no integer '{key}'")
            )
        elif value != actual:
            res.findings.append(
                Finding(
                    f"{key}_mismatch",
                    "fail",
                    involved,
                    f"meta/info.json {key} is {value} but {what} {actual}",
                )
            )

    total("total_episodes", len(set(data_ids)), "the data has", differ)
    total("total_frames", rows, "the data has", off_length)
    meta_frames = int(meta["length"].sum() or 0)
    if meta_frames != rows:
        res.findings.append(
            Finding(
                "episode_lengths_mismatch",
                "fail",
                off_length or differ,
                f"{layout.episodes_source} lengths add up to {meta_frames} frames but the data has {rows}",
            )
        )
    total("total_tasks", len(layout.tasks), f"{layout.tasks_source} has", [])
    known = set(layout.tasks)
    unknown = (
        meta.filter(pl.col("tasks").is_not_null())
        .explode("tasks")
        .filter(pl.col("tasks").is_not_null() & ~pl.col("tasks").is_in(list(known)))
    )
    if unknown.height:
        ids = sorted(set(unknown["episode_index"].to_list()))
        res.findings.append(
            Finding(
                "unknown_task",
                "fail",
                ids,
                f"{plural(len(ids), 'episode')} name tasks missing from {layout.tasks_source}: {ids_text(ids)}",
            )
        )
    res.note = (
        f"totals match: {plural(len(set(data_ids)), 'episode')}, {plural(rows, 'frame')}, "
        f"{plural(len(layout.tasks), 'task')}"
    )
    return res
