"""Read the data files in batches of rows, whatever their row groups and list types.

lerobot 0.6.1 writes one row group per episode (300-700 rows) and some writers store vectors as
variable-size `list<float>`: a scan that follows row groups, or works on lists row by row, pays for
both. Here every batch holds about the same number of rows from consecutive files, each episode whole
in one batch, and every list column whose rows all hold the declared number of values becomes a
fixed-size list once per batch. The files are opened by path with pyarrow: nothing is globbed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from piperctl.errors import PiperctlError
from piperctl.leakage.layout import DataFile, one_line

READ_ROWS = 131_072  # rows pyarrow decodes at a time; batches are assembled from such pieces


@dataclass
class Batch:
    """Rows of consecutive files in memory: `frame` holds the columns read plus `_file` and `_row`.

    `_file` is the position of the row's file in the layout, `_row` its global row number. A batch
    starts where an episode or a file starts, so no run of rows crosses two batches.
    """

    frame: pl.DataFrame
    files: list[DataFile]

    @property
    def rows(self) -> int:
        """Rows in the batch."""
        return self.frame.height


def read_error(f: DataFile, error: BaseException) -> PiperctlError:
    """The one-line error for a data file that cannot be read."""
    return PiperctlError(f"{f.rel}: cannot read the data ({one_line(error)})", exit_code=2)


def _list_width(column: pa.ChunkedArray, width: int) -> int | None:
    """The one length every row of a list column has (`width` when declared), or None when they differ."""
    seen = width or None
    for chunk in column.chunks:
        if chunk.null_count:
            return None  # a null row has no values to reshape; the list path counts it
        if len(chunk) == 0:
            continue
        lengths = np.diff(chunk.offsets.to_numpy(zero_copy_only=False))
        if seen is None:
            seen = int(lengths[0])
        if seen == 0 or (lengths != seen).any():
            return None
    return seen


def fixed_lists(table: pa.Table, widths: dict[str, int]) -> pa.Table:
    """`table` with each list column whose rows all hold the same number of values as a fixed-size list.

    The values buffer is reused as is; a column with rows of other lengths (or null rows) stays a
    list, and the checks handle it as one.
    """
    for i, name in enumerate(table.column_names):
        col = table.column(i)
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            continue
        width = _list_width(col, widths.get(name, 0))
        if width is None:
            continue
        chunks = [pa.FixedSizeListArray.from_arrays(c.flatten(), width) for c in col.chunks]
        fixed = pa.chunked_array(chunks, type=pa.list_(col.type.value_type, width))
        table = table.set_column(i, pa.field(name, fixed.type), fixed)
    return table


def _split_point(episodes: pa.ChunkedArray) -> int:
    """Where the last episode of a batch starts (0 when the whole batch is one episode or it ends in nulls)."""
    ep = episodes.to_numpy()  # nulls come back as floats (NaN): no equal neighbour
    last = ep[-1]
    if isinstance(last, float) and np.isnan(last):
        return len(ep)
    other = np.nonzero(ep != last)[0]
    return int(other[-1]) + 1 if len(other) else 0


def iter_batches(
    files: list[DataFile],
    columns: list[str],
    widths: dict[str, int],
    rows_per_batch: int,
    progress: Callable[[int], None] = lambda n: None,
) -> Iterator[Batch]:
    """Batches of at least `rows_per_batch` rows (the last may be smaller), episodes never cut in two.

    An episode that would straddle the end of a batch is carried whole into the next one, so memory
    holds one batch plus the longest episode. `progress(rows)` is called as rows are read.
    """
    pending: list[pa.Table] = []
    pending_files: list[DataFile] = []
    held = 0
    row = 0
    for k, f in enumerate(files):
        done = 0
        try:
            # Pieces smaller than a batch keep the reader's buffers small; pre-buffering a whole file
            # of many row groups would hold its compressed pages on top of the batch.
            piece_rows = min(rows_per_batch, READ_ROWS)
            pf = pq.ParquetFile(f.path, pre_buffer=False)
            reader = pf.iter_batches(batch_size=piece_rows, columns=columns)
            for rb in reader:
                n = rb.num_rows
                piece = pa.Table.from_batches([rb]).select(columns)
                piece = piece.append_column("_file", pa.array(np.full(n, k, dtype=np.uint32)))
                piece = piece.append_column("_row", pa.array(np.arange(row, row + n, dtype=np.int64)))
                pending.append(piece)
                if not pending_files or pending_files[-1] is not f:
                    pending_files.append(f)
                row += n
                done += n
                held += n
                progress(n)
                if held < rows_per_batch:
                    continue
                table = pa.concat_tables(pending)
                # The file goes on: its last episode may continue in the next piece, so it waits.
                cut = _split_point(table.column("episode_index")) if done < f.rows else table.num_rows
                if cut == 0:
                    pending = [table]
                    continue
                batch = _batch(table.slice(0, cut), pending_files, widths)
                held = table.num_rows - cut
                # The carried rows are copied so that the batch's buffers can be freed.
                pending = [table.slice(cut).take(np.arange(held))] if held else []
                pending_files = [f] if held else []
                del table
                yield batch
                del batch
        except (pa.ArrowException, OSError) as e:
            raise read_error(f, e) from e
    if held:
        yield _batch(pa.concat_tables(pending), pending_files, widths)


def _batch(table: pa.Table, files: list[DataFile], widths: dict[str, int]) -> Batch:
    return Batch(pl.from_arrow(fixed_lists(table, widths)), list(files))  # type: ignore[arg-type]


def row_group_rows(f: DataFile, pf: pq.ParquetFile) -> np.ndarray:
    """The first row of each row group of `f`, within the file, plus the file's row count at the end."""
    meta = pf.metadata
    return np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])


def read_rows(f: DataFile, columns: list[str], rows: np.ndarray) -> pa.Table:
    """`columns` of the row groups of `f` that hold `rows` (positions within the file), plus `_local`.

    Only those row groups are read: a few episodes of a file with one row group per episode cost
    a few row groups, not the file.
    """
    try:
        pf = pq.ParquetFile(f.path)
        starts = row_group_rows(f, pf)
        groups = np.unique(np.searchsorted(starts, rows, side="right") - 1)
        groups = groups[(groups >= 0) & (groups < pf.metadata.num_row_groups)]
        table = pf.read_row_groups([int(g) for g in groups], columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise read_error(f, e) from e
    local = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in groups]) if len(groups) else []
    return table.append_column("_local", pa.array(np.asarray(local, dtype=np.int64)))


def _leaf(meta: pq.FileMetaData, name: str) -> int:
    for i in range(meta.num_columns):
        if meta.schema.column(i).path == name:
            return i
    return -1


def episode_row_groups(f: DataFile, ids: list[int]) -> list[int]:
    """Row groups of `f` whose episode_index statistics may hold one of `ids` (all when unknown)."""
    meta = pq.ParquetFile(f.path).metadata
    col = _leaf(meta, "episode_index")
    wanted = np.asarray(sorted(ids))
    groups = []
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(col).statistics if col >= 0 else None
        if stats is None or not stats.has_min_max:
            groups.append(g)
        elif np.searchsorted(wanted, stats.max, side="right") > np.searchsorted(
            wanted, stats.min, side="left"
        ):
            groups.append(g)
    return groups


def read_episode_rows(
    files: list[DataFile], ids: list[int], columns: list[str], widths: dict[str, int]
) -> pl.DataFrame:
    """`columns` of every row of episodes `ids` in `files`, reading only the row groups that may hold them."""
    parts = []
    for f in files:
        try:
            groups = episode_row_groups(f, ids)
            if not groups:
                continue
            table = pq.ParquetFile(f.path).read_row_groups(groups, columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise read_error(f, e) from e
        df = pl.from_arrow(fixed_lists(table, widths))
        parts.append(df.filter(pl.col("episode_index").is_in(ids)))  # type: ignore[union-attr]
    return concat_parts(parts)


def concat_parts(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate frames read from different files: a list column fixed in one file and not in another
    becomes a list in all of them."""
    if not parts:
        return pl.DataFrame()
    for name in parts[0].columns:
        kinds = {type(p.schema[name]) for p in parts}
        if pl.Array in kinds and pl.List in kinds:
            parts = [p.with_columns(pl.col(name).cast(pl.List(p.schema[name].inner))) for p in parts]  # type: ignore[union-attr]
    return pl.concat(parts, how="vertical_relaxed")
