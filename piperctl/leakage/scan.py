"""Polars queries over the data, batch by batch: per-episode aggregates, frame hashes, frozen runs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from piperctl.errors import PiperctlError
from piperctl.leakage.layout import STRUCT_COLUMNS, DataFile, Layout, one_line
from piperctl.leakage.reader import Batch, concat_parts, fixed_lists, iter_batches, read_rows

STATE_FEATURES = ("observation.state", "state", "observation.states")
BATCH_ROWS = 1_000_000  # rows per batch: big enough to amortise planning, small enough to bound memory
HASH_SORT = 16_000_000  # frame hashes sorted at once when looking for repeated content (128 MB)
_FROZEN_SCHEMA = {
    "episode_index": pl.Int64,
    "feature": pl.String,
    "start_frame": pl.Int64,
    "length": pl.UInt32,
}
_CLASSES_SCHEMA = {
    "cls": pl.UInt32,
    "episode_index": pl.Int64,
    "frame_index": pl.Int64,
    "rest": pl.Boolean,  # the class is a rest pose: held for rest_frames consecutive frames somewhere
}

ep, fi, idx = pl.col("episode_index"), pl.col("frame_index"), pl.col("index")
# A run boundary: the episode changes, or a new file starts (an episode never continues across files).
_new_run = ((ep != ep.shift(1)) | (pl.col("_file") != pl.col("_file").shift(1))).fill_null(True)


def _collect(batch: Batch, queries: list[pl.LazyFrame]) -> list[pl.DataFrame]:
    try:
        return pl.collect_all(queries)
    except (pl.exceptions.PolarsError, pa.ArrowException) as e:
        # The data was read; a query failing on it is about the values of these files.
        names = ", ".join(f.rel for f in batch.files[:3]) + (" …" if len(batch.files) > 3 else "")
        raise PiperctlError(f"{names}: cannot scan the data ({one_line(e)})", exit_code=2) from e


def structure_query(lf: pl.LazyFrame, fps: float, tolerance_s: float) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Per-episode ranges and per (episode, file) fault counts, from the four bookkeeping columns."""
    ts = pl.col("timestamp").cast(pl.Float64)
    period = 1.0 / fps
    if lf.collect_schema()["timestamp"] == pl.Float32:
        # float32 timestamps of long episodes cannot be closer to k/fps than their own rounding
        # (2.4e-4 s at one hour); two roundings per step are allowed on top of the tolerance.
        tolerance = tolerance_s + ts.abs() * 2.0**-22
    else:
        tolerance = pl.lit(tolerance_s)
    new = pl.col("_new")
    cont = ~new
    dfi = fi - fi.shift(1)
    didx = idx - idx.shift(1)
    dts = ts - ts.shift(1)
    dev = (dts - period).abs()
    # Row flags first, plain sums/mins after: aggregations with a filter inside are many times slower.
    flags = {
        "fi_start": new & (fi != 0),
        "fi_repeat": cont & (dfi == 0),
        "fi_back": cont & (dfi < 0),
        "fi_skip": cont & (dfi > 1),
        "idx_step": cont & (didx != 1),
        "ts_nonmono": cont & (dts <= 0),
        "ts_gap": cont & (dts > 1.5 * period),
        "ts_jitter": cont & (dts > 0) & (dts <= 1.5 * period) & (dev > tolerance),
    }
    rows = lf.select("episode_index", "frame_index", "index", "timestamp", "_file", "_row").with_columns(
        _new=_new_run
    )
    rows = rows.with_columns(
        **{k: v.fill_null(False) for k, v in flags.items()},
        _dev=pl.when(cont).then(dev),
        _dts=pl.when(cont).then(dts),
    )
    # The first frame of each kind of fault, so that an example names a frame of that kind.
    at = {f"{k}_at": pl.col(k) for k in flags}
    rows = rows.with_columns(**{k: pl.when(v).then(fi) for k, v in at.items()})
    # Grouping by episode alone is cheap; the per-file view only needs the rare rows that start a
    # run or carry a fault, so those are grouped by (episode, file) separately.
    bulk = rows.group_by("episode_index").agg(
        rows=pl.len(),
        first_row=pl.col("_row").min(),
        fi_min=fi.min(),
        fi_max=fi.max(),
        fi_null=fi.null_count(),
        idx_min=idx.min(),
        idx_max=idx.max(),
        idx_null=idx.null_count(),
        ts_null=pl.col("timestamp").null_count(),
        ts_max_dev=pl.col("_dev").max(),
        ts_off_max=(ts - fi.cast(pl.Float64) * period).abs().max(),
        ts_steps=pl.col("_dts").count(),
        ts_step_sum=pl.col("_dts").sum(),
        ts_step_sq=(pl.col("_dts") * pl.col("_dts")).sum(),
    )
    events = (
        rows.filter(pl.any_horizontal("_new", *flags))
        .group_by("episode_index", "_file")
        .agg(
            runs=new.sum(),
            **{k: pl.col(k).sum() for k in flags},
            **{k: pl.col(k).min() for k in at},
        )
    )
    return bulk, events


def _is_float(dtype: pl.DataType) -> bool:
    inner = dtype.inner if isinstance(dtype, pl.Array | pl.List) else dtype  # type: ignore[union-attr]
    return inner.is_float()


def _dims(col: str, dtype: pl.DataType, width: int) -> list[pl.Expr]:
    if isinstance(dtype, pl.Array):
        return [pl.col(col).arr.get(i) for i in range(dtype.size)]
    if isinstance(dtype, pl.List):
        # Variable-length lists (older writers): the declared shape says how many values to look at.
        return [pl.col(col).list.get(i, null_on_oob=True) for i in range(max(width, 1))]
    return [pl.col(col)]


def _row_sum(col: str, dtype: pl.DataType) -> pl.Expr:
    """Sum of a frame's values in float64: NaN or Inf anywhere makes it non-finite.

    One row-wise sum is several times cheaper than a finiteness test per dimension; float64 keeps
    large but finite float32 values (up to 3.4e38) from overflowing into a false Inf.
    """
    if isinstance(dtype, pl.Array):
        return pl.col(col).cast(pl.Array(pl.Float64, dtype.size)).arr.sum()
    if isinstance(dtype, pl.List):
        return pl.col(col).cast(pl.List(pl.Float64)).list.sum()
    return pl.col(col).cast(pl.Float64)


def is_float_vector(dtype: pl.DataType) -> bool:
    """True for an Array or List of floats: a joint vector, a pose, an environment state."""
    return isinstance(dtype, pl.Array | pl.List) and dtype.inner.is_float()  # type: ignore[union-attr]


def content_queries(
    lf: pl.LazyFrame,
    schema: pl.Schema,
    features: list[str],
    frozen_frames: int,
    widths: dict[str, int] | None = None,
    vectors: list[str] | None = None,
    lag_pairs: list[tuple[str, int, str, int]] | None = None,
) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.LazyFrame]:
    """Three queries over one batch: frame hashes, per-episode value and motion stats, and frozen runs.

    `vectors` are the float vector features whose per-dimension steps are summarised (largest step,
    for spikes); `lag_pairs` (action feature, dim, state feature, dim) get the sums that estimate how
    far the action lags the state.
    """
    widths = widths or {}
    vectors = vectors or []
    lag_pairs = [p for p in lag_pairs or [] if p[0] in vectors and p[2] in vectors]
    base = lf.with_columns(_new=_new_run)
    cont = ~pl.col("_new")
    state = next((c for c in STATE_FEATURES if c in vectors), None)
    if state is not None:
        # The arm's reading held from the previous or into the next frame: the arm is at rest there,
        # whatever its action (a leader arm starts moving a frame before the follower does).
        held = ((pl.col(state) == pl.col(state).shift(1)) & cont).fill_null(False)
        still = held | held.shift(-1).fill_null(False)
    else:
        still = pl.lit(False)
    frames = base.select(
        # Sorted names: datasets declaring the same features in another order hash alike (across.py).
        _h=pl.struct(sorted(features)).hash(seed=0x51EE),
        _row=pl.col("_row").cast(pl.UInt64),
        _still=still,
    )
    # Row t has a successor in the same run: state(t+1) may be compared with action(t).
    cont_next = (~pl.col("_new").shift(-1)).fill_null(False)
    # Frame-level columns first (each dimension extracted once, shifts over the whole batch, masked
    # at run boundaries), then plain per-episode aggregations: shifts inside an aggregation run per
    # group and cost several times more.
    dim_cols: dict[tuple[str, int], pl.Expr] = {}
    for c in features:
        for i, d in enumerate(_dims(c, schema[c], widths.get(c, 1))):
            dim_cols[(c, i)] = d
    step_cols = {}
    for c in vectors:
        i = 0
        while (c, i) in dim_cols:
            step_cols[f"_s|{c}|{i}"] = pl.when(cont).then(
                pl.col(f"_x|{c}|{i}") - pl.col(f"_x|{c}|{i}").shift(1)
            )
            i += 1
    lag_cols = {}
    for k, (a, ai, st, si) in enumerate(lag_pairs or []):
        nxt = pl.col(f"_x|{st}|{si}")
        lag_cols[f"_l|{k}"] = pl.when(cont_next).then((pl.col(f"_x|{a}|{ai}") - nxt.shift(-1)).abs())
    needed = {(c, i) for c in vectors for (cc, i) in dim_cols if cc == c}
    needed |= {(a, ai) for a, ai, _, _ in lag_pairs or []} | {(st, si) for _, _, st, si in lag_pairs or []}
    work = base.with_columns(**{f"_x|{c}|{i}": dim_cols[(c, i)] for c, i in sorted(needed)})
    work = work.with_columns(**step_cols, **lag_cols)
    work = work.with_columns(**{f"_a|{k[3:]}": (pl.col(k) - pl.col(k).shift(1)).abs() for k in step_cols})

    def dim(c: str, i: int) -> pl.Expr:
        return pl.col(f"_x|{c}|{i}") if (c, i) in needed else dim_cols[(c, i)]

    aggs: list[pl.Expr] = []
    for c in features:
        n = sum(1 for cc, _ in dim_cols if cc == c)
        if _is_float(schema[c]):
            aggs.append((~_row_sum(c, schema[c]).is_finite()).sum().alias(f"nonfinite|{c}"))
            if not c.startswith("next."):
                aggs += [dim(c, i).min().alias(f"min|{c}|{i}") for i in range(n)]
                aggs += [dim(c, i).max().alias(f"max|{c}|{i}") for i in range(n)]
        if c in vectors:
            # The second difference is null at a run's first two rows (the step is null at its first).
            aggs += [pl.col(f"_s|{c}|{i}").abs().max().alias(f"dmax|{c}|{i}") for i in range(n)]
            aggs += [pl.col(f"_a|{c}|{i}").max().alias(f"amax|{c}|{i}") for i in range(n)]
        aggs.append(pl.col(c).null_count().alias(f"null|{c}"))
    for k, (_, _, st, si) in enumerate(lag_pairs or []):
        aggs.append(pl.col(f"_l|{k}").sum().alias(f"lagsum|{k}"))
        # |state(t+1) - state(t)| summed over the same rows: the step into each row after the first.
        aggs.append(pl.col(f"_s|{st}|{si}").abs().sum().alias(f"vsum|{k}"))
    stats = work.group_by("episode_index").agg(*aggs, rows=pl.len())
    runs = []
    for c in vectors:
        same = (pl.col(c) == pl.col(c).shift(1)) & ~pl.col("_new")
        # A run of L identical values has L-1 "same as previous" rows; only those need grouping.
        runs.append(
            base.with_columns(_same=same.fill_null(False))
            .with_columns(_run=(~pl.col("_same")).cum_sum())
            .filter(pl.col("_same"))
            .group_by("_run")
            .agg(
                episode_index=ep.max(),
                start_frame=fi.min() - 1,
                length=pl.len() + 1,
            )
            .filter(pl.col("length") >= frozen_frames)
            .select("episode_index", pl.lit(c).alias("feature"), "start_frame", "length")
        )
    frozen = pl.concat(runs) if runs else pl.LazyFrame(schema=_FROZEN_SCHEMA)
    return frames, stats, frozen


@dataclass
class ScanResult:
    """What the scans produced: per (episode, file) structure stats and, in full mode, content."""

    episodes: pl.DataFrame  # per episode (one row per batch it appears in): rows, index ranges, nulls
    runs: pl.DataFrame  # per (episode, file): runs of rows and fault counts
    content_stats: pl.DataFrame | None = None
    frozen: pl.DataFrame | None = None
    classes: pl.DataFrame | None = None  # (cls, episode_index, frame_index): frames that occur more than once
    candidate_rows: int = 0
    features: list[str] = field(default_factory=list)
    vectors: list[str] = field(default_factory=list)  # float vector features (kinematic checks)
    hashes: list[FrameHashes] = field(default_factory=list)  # per batch; kept for scans across datasets


def _rel_files(df: pl.DataFrame, files: list[DataFile]) -> pl.DataFrame:
    mapping = {k: f.rel for k, f in enumerate(files)}
    return df.with_columns(
        pl.col("_file").replace_strict(mapping, return_dtype=pl.String).alias("file")
    ).drop("_file")


def list_widths(layout: Layout, features: list[str]) -> dict[str, int]:
    """The declared number of values of each vector feature (0 when the metadata does not say)."""
    return {c: len(layout.dim_names.get(c, [])) for c in features}


def scan_dataset(
    layout: Layout,
    *,
    full: bool,
    features: list[str],
    tolerance_s: float,
    frozen_frames: int,
    rest_frames: int = 2,
    lag_pairs: list[tuple[str, int, str, int]] | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> ScanResult:
    """Read every data file once, in batches of about BATCH_ROWS rows; `progress(rows)` as rows are read."""
    columns = list(STRUCT_COLUMNS) + (features if full else [])
    content = full and bool(features)
    widths = list_widths(layout, features)
    bulk_parts, event_parts, stat_parts, frozen_parts, frame_parts = [], [], [], [], []
    vectors: list[str] = []
    for batch in iter_batches(layout.files, columns, widths, BATCH_ROWS, progress):
        lf = batch.frame.lazy()
        schema = batch.frame.schema
        queries = list(structure_query(lf, layout.fps, tolerance_s))
        if content:
            vectors = [c for c in features if is_float_vector(schema[c]) and not c.startswith("next.")]
            queries += list(content_queries(lf, schema, features, frozen_frames, widths, vectors, lag_pairs))
        results = _collect(batch, queries)
        bulk_parts.append(results[0])
        event_parts.append(results[1])
        if content:
            frame_parts.append(FrameHashes.of(results[2]))
            stat_parts.append(results[3])
            frozen_parts.append(results[4])
        del lf, batch
    result = ScanResult(
        episodes=pl.concat(bulk_parts, how="vertical_relaxed"),
        runs=_rel_files(pl.concat(event_parts, how="vertical_relaxed"), layout.files),
        features=features,
    )
    if not full:
        return result
    if not content:
        result.content_stats = pl.DataFrame(
            {"episode_index": [], "rows": []}, schema={"episode_index": pl.Int64, "rows": pl.UInt32}
        )
        result.frozen = pl.DataFrame(schema=_FROZEN_SCHEMA)
        result.classes = pl.DataFrame(schema=_CLASSES_SCHEMA)
        return result
    result.content_stats = _merge_stats(pl.concat(stat_parts, how="vertical_relaxed"))
    result.frozen = pl.concat(frozen_parts, how="vertical_relaxed").sort(
        "episode_index", "feature", "start_frame"
    )
    result.classes, result.candidate_rows = _exact_classes(layout, frame_parts, features, widths, rest_frames)
    result.vectors = vectors
    result.hashes = frame_parts
    return result


def _merge_stats(stats: pl.DataFrame) -> pl.DataFrame:
    # An episode split over batches has several rows; fold them into one.
    aggs = []
    for c in stats.columns:
        if c == "episode_index":
            continue
        if c.startswith("min|"):
            aggs.append(pl.col(c).min())
        elif c.startswith("max|"):
            aggs.append(pl.col(c).max())
        else:
            aggs.append(pl.col(c).sum())
    return stats.group_by("episode_index").agg(aggs).sort("episode_index")


@dataclass
class FrameHashes:
    """The content hash of every frame of one batch (rows first_row.. in order) and its `_still` flags."""

    first_row: int
    hashes: np.ndarray  # uint64, one per row
    still: np.ndarray  # the `_still` flags, packed 8 to a byte

    @classmethod
    def of(cls, frames: pl.DataFrame) -> FrameHashes:
        """From the frames query's result (`_h`, `_row`, `_still` of consecutive rows)."""
        first = int(frames["_row"][0]) if frames.height else 0
        return cls(first, frames["_h"].to_numpy(), np.packbits(frames["_still"].to_numpy()))

    def candidates(self, repeated: np.ndarray) -> pl.DataFrame:
        """`_row` and `_still` of the rows whose hash is in `repeated` (sorted)."""
        h = self.hashes
        at = np.minimum(np.searchsorted(repeated, h), len(repeated) - 1)
        hit = np.nonzero(repeated[at] == h)[0]
        still = np.unpackbits(self.still, count=len(h)).astype(bool)
        return pl.DataFrame(
            {"_row": (hit + self.first_row).astype(np.uint64), "_still": still[hit]},
            schema={"_row": pl.UInt64, "_still": pl.Boolean},
        )


def repeated_hashes(parts: list[np.ndarray]) -> np.ndarray:
    """The hash values that occur more than once over all `parts`, sorted.

    Sorting the bare hashes and comparing neighbours finds them fastest (a group-by over millions of
    keys costs twice as much). Past HASH_SORT values the hashes are sorted bucket by bucket (by their
    top bits), so that memory holds the hashes once plus one bucket, whatever the dataset's size.
    """
    total = sum(len(p) for p in parts)
    bits = max(0, math.ceil(math.log2(max(total, 1) / HASH_SORT)))
    found = []
    for bucket in range(2**bits):
        if bits:
            top = np.uint64(64 - bits)
            values = np.concatenate([p[(p >> top) == bucket] for p in parts])
        else:
            values = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        values.sort()
        found.append(np.unique(values[1:][values[1:] == values[:-1]]))
    return np.concatenate(found) if found else np.zeros(0, np.uint64)


def _exact_classes(
    layout: Layout,
    frame_parts: list[FrameHashes],
    features: list[str],
    widths: dict[str, int],
    rest_frames: int = 2,
) -> tuple[pl.DataFrame, int]:
    """Frames whose content occurs more than once, grouped into classes of exactly equal content.

    Hashes only nominate candidates; the classes come from grouping on the values themselves, so a
    hash collision can never make two different frames look equal.
    """
    empty = pl.DataFrame(schema=_CLASSES_SCHEMA)
    repeated = repeated_hashes([p.hashes for p in frame_parts])
    if len(repeated) == 0:
        return empty, 0
    candidates = pl.concat([p.candidates(repeated) for p in frame_parts])
    if candidates.height == 0:
        return empty, 0
    picked = read_candidates(layout, candidates, features, widths)
    classes = (
        picked.group_by(features)
        .agg("episode_index", "frame_index", "_still")
        .with_row_index("cls")
        .select("cls", "episode_index", "frame_index", "_still")
        .explode("episode_index", "frame_index", "_still")
    )
    return mark_rest_poses(classes, rest_frames), candidates.height


def read_candidates(
    layout: Layout, candidates: pl.DataFrame, features: list[str], widths: dict[str, int]
) -> pl.DataFrame:
    """episode_index, frame_index and `features` of the `candidates` rows (`_row`, `_still`), read back."""
    rows = np.sort(candidates["_row"].to_numpy().astype(np.int64))
    starts = np.cumsum([0] + [f.rows for f in layout.files], dtype=np.int64)
    which = np.searchsorted(starts, rows, side="right") - 1
    columns = ["episode_index", "frame_index", *features]
    parts = []
    for k in np.unique(which):
        local = rows[which == k] - starts[k]
        table = fixed_lists(read_rows(layout.files[k], columns, local), widths)
        df = pl.from_arrow(table).filter(pl.col("_local").is_in(pl.Series(local).implode()))  # type: ignore[union-attr]
        parts.append(df.select(*columns, _row=(pl.col("_local") + int(starts[k])).cast(pl.UInt64)))
    return concat_parts(parts).join(candidates, on="_row", how="left")


def mark_rest_poses(classes: pl.DataFrame, rest_frames: int) -> pl.DataFrame:
    """Add `rest`: the class's content was held for `rest_frames`+ consecutive frames of one episode.

    A held pose is the arm resting (identical readings while still); every occurrence of that pose,
    in any episode, is a rest frame. With the default of 2 frames, a frame whose state alone equals
    its neighbour's (`_still`) is a rest too. Moving frames never repeat consecutively, so they stay
    compared.
    """
    e, f, c = pl.col("episode_index"), pl.col("frame_index"), pl.col("cls")
    held = (
        classes.sort("episode_index", "frame_index")
        .with_columns(_new=((e != e.shift(1)) | (f != f.shift(1) + 1) | (c != c.shift(1))).fill_null(True))
        .with_columns(_run=pl.col("_new").cum_sum())
        .group_by("_run")
        .agg(cls=c.first(), n=pl.len())
        .filter(pl.col("n") >= rest_frames)
        .select("cls")
        .unique()
    )
    rest = c.is_in(held["cls"].implode())
    if "_still" in classes.columns and rest_frames <= 2:
        # Frames whose state alone was held (the action already moving) are rests too.
        still = classes.filter(pl.col("_still").fill_null(False))["cls"].unique()
        rest = rest | c.is_in(still.implode())
    return classes.drop("_still", strict=False).with_columns(rest=rest)
