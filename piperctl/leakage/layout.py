"""Find a LeRobot dataset's files (v3.0 or v2.1 layout) and read its metadata, failing with one line."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from piperctl.errors import PiperctlError

STRUCT_COLUMNS = ("episode_index", "frame_index", "index", "timestamp")
# Bookkeeping columns: never part of a frame's content.
NON_CONTENT = {"episode_index", "frame_index", "index", "timestamp", "task_index"}
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"


@dataclass
class DataFile:
    """One data parquet file: where it is, its path inside the dataset, rows and arrow schema."""

    path: Path
    rel: str
    rows: int
    schema: pa.Schema


@dataclass
class Layout:
    """What the checks need to know about a dataset besides its frames."""

    root: Path
    version: str  # "v3.0" or "v2.1" (v2.0 datasets share the v2.1 layout)
    codebase_version: str
    info: dict[str, Any]
    fps: float
    files: list[DataFile]
    episodes: pl.DataFrame  # one row per meta/episodes entry, see `_EPISODE_SCHEMA`
    episodes_source: str
    tasks: list[str]
    tasks_source: str
    content_features: list[str] = field(default_factory=list)
    dim_names: dict[str, list[str]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Frames in the data files, from the parquet footers."""
        return sum(f.rows for f in self.files)


_EPISODE_SCHEMA = {
    "episode_index": pl.Int64,
    "length": pl.Int64,
    "dataset_from_index": pl.Int64,
    "dataset_to_index": pl.Int64,
    "file": pl.String,  # the data file the metadata says holds the episode
    "tasks": pl.List(pl.String),
}


def one_line(error: BaseException) -> str:
    """An exception's text as one printable line (pyarrow and polars messages span several)."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(error)).split())
    return text or type(error).__name__


def _fail(where: Path | str, what: str, hint: str | None = None) -> PiperctlError:
    return PiperctlError(f"{where}: {what}", hint=hint, exit_code=2)


def read_info(root: Path) -> dict[str, Any]:
    """The parsed `meta/info.json`."""
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise _fail(path, "missing", hint="is this the root folder of a LeRobot dataset?")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(path, f"not valid JSON ({one_line(e)})") from e
    if not isinstance(info, dict):
        raise _fail(path, "is not a JSON object")
    for key in ("codebase_version", "fps", "features"):
        if key not in info:
            raise _fail(path, f"has no '{key}'")
    if not isinstance(info["features"], dict):
        raise _fail(path, "'features' is not an object")
    fps = info["fps"]
    if isinstance(fps, bool) or not isinstance(fps, int | float) or fps <= 0:
        raise _fail(path, f"'fps' is {fps!r}, expected a positive number")
    return info


def _read_footer(path: Path, root: Path) -> DataFile:
    rel = path.relative_to(root).as_posix()
    try:
        rows = pq.read_metadata(path).num_rows
        # A schema taken from the metadata keeps the whole footer alive (about 10 MB for a file of
        # 1,600 row groups, 1.3 GB for 100M frames written one row group per episode); read_schema
        # parses the footer again but keeps only the schema.
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise _fail(rel, f"not a readable parquet file ({one_line(e)})") from e
    return DataFile(path=path, rel=rel, rows=rows, schema=schema)


def _data_files(root: Path) -> list[DataFile]:
    paths = sorted((root / "data").glob("**/*.parquet"))
    if not paths:
        raise _fail(
            root / "data", "no parquet data files", hint="is this the root folder of a LeRobot dataset?"
        )
    # Footers are tiny; threads hide the per-file latency of v2.1 datasets with thousands of files.
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda p: _read_footer(p, root), paths))


def _format_path(template: str, **keys: int) -> str | None:
    try:
        return template.format(**keys)
    except (KeyError, IndexError, ValueError):
        return None


def _v3_episodes(root: Path, info: dict[str, Any]) -> tuple[pl.DataFrame, str]:
    folder = root / "meta" / "episodes"
    paths = sorted(folder.glob("**/*.parquet"))
    if not paths:
        raise _fail(folder, "no episode metadata parquet files")
    frames = []
    template = str(info.get("data_path") or V3_DATA_PATH)
    for path in paths:
        rel = path.relative_to(root).as_posix()
        try:
            schema = pq.read_schema(path)
            for col in ("episode_index", "length"):
                if col not in schema.names:
                    raise _fail(rel, f"has no '{col}' column")
                if not pa.types.is_integer(schema.field(col).type):
                    raise _fail(rel, f"column '{col}' is {schema.field(col).type}, expected an integer")
            wanted = [
                c
                for c in (
                    "episode_index",
                    "length",
                    "dataset_from_index",
                    "dataset_to_index",
                    "data/chunk_index",
                    "data/file_index",
                    "tasks",
                )
                if c in schema.names
            ]
            # polars reads directly (pq.read_table would first import pyarrow.dataset, ~0.5 s); never as a glob.
            df = pl.read_parquet(path, columns=wanted, glob=False)
        except (pa.ArrowException, OSError, pl.exceptions.PolarsError) as e:
            raise _fail(rel, f"not a readable parquet file ({one_line(e)})") from e
        if "data/chunk_index" in df.columns and "data/file_index" in df.columns:
            files = [
                _format_path(template, chunk_index=int(c), file_index=int(f))
                if c is not None and f is not None
                else None
                for c, f in zip(df["data/chunk_index"], df["data/file_index"], strict=True)
            ]
            df = df.with_columns(file=pl.Series(files, dtype=pl.String))
        frames.append(df)
    return _normalise_episodes(pl.concat(frames, how="diagonal_relaxed")), "meta/episodes"


def _read_jsonl(path: Path, root: Path) -> list[dict[str, Any]]:
    rel = path.relative_to(root).as_posix()
    if not path.is_file():
        raise _fail(rel, "missing")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise _fail(rel, f"line {n} is not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise _fail(rel, f"line {n} is not a JSON object")
        rows.append(row)
    return rows


def _v2_episodes(root: Path, info: dict[str, Any]) -> tuple[pl.DataFrame, str]:
    rows = _read_jsonl(root / "meta" / "episodes.jsonl", root)
    template = str(info.get("data_path") or V2_DATA_PATH)
    chunks_size = int(info.get("chunks_size") or 1000)
    records = []
    for n, row in enumerate(rows, start=1):
        ep, length = row.get("episode_index"), row.get("length")
        if not isinstance(ep, int) or not isinstance(length, int):
            raise _fail("meta/episodes.jsonl", f"line {n} needs integer 'episode_index' and 'length'")
        tasks = row.get("tasks")
        records.append(
            {
                "episode_index": ep,
                "length": length,
                "file": _format_path(template, episode_chunk=ep // chunks_size, episode_index=ep),
                "tasks": [str(t) for t in tasks] if isinstance(tasks, list) else None,
            }
        )
    df = pl.DataFrame(
        records, schema={k: _EPISODE_SCHEMA[k] for k in ("episode_index", "length", "file", "tasks")}
    )
    # v2.1 stores no index ranges: lerobot derives them from the lengths in episode order.
    df = df.sort("episode_index").with_columns(
        dataset_to_index=pl.col("length").cum_sum(),
    )
    df = df.with_columns(dataset_from_index=pl.col("dataset_to_index") - pl.col("length"))
    return _normalise_episodes(df), "meta/episodes.jsonl"


def _normalise_episodes(df: pl.DataFrame) -> pl.DataFrame:
    for name, dtype in _EPISODE_SCHEMA.items():
        if name not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=dtype).alias(name))
    return df.select([pl.col(n).cast(t) for n, t in _EPISODE_SCHEMA.items()])


def _tasks(root: Path, version: str) -> tuple[list[str], str]:
    if version == "v3.0":
        path = root / "meta" / "tasks.parquet"
        if not path.is_file():
            raise _fail("meta/tasks.parquet", "missing")
        try:
            table = pl.read_parquet(path, glob=False)
        except (pl.exceptions.PolarsError, OSError) as e:
            raise _fail("meta/tasks.parquet", f"not a readable parquet file ({one_line(e)})") from e
        # lerobot writes the task text as the pandas index, stored as a plain column named "task".
        col = "task" if "task" in table.columns else "__index_level_0__"
        if col not in table.columns:
            raise _fail("meta/tasks.parquet", "has no 'task' column")
        return [str(t) for t in table[col].to_list()], "meta/tasks.parquet"
    rows = _read_jsonl(root / "meta" / "tasks.jsonl", root)
    return [str(r.get("task")) for r in rows], "meta/tasks.jsonl"


def _content_features(info: dict[str, Any]) -> tuple[list[str], dict[str, list[str]]]:
    feats, dims = [], {}
    for name, spec in info["features"].items():
        if name in NON_CONTENT or not isinstance(spec, dict):
            continue
        if spec.get("dtype") in ("video", "image", "string"):
            continue
        feats.append(name)
        names = spec.get("names")
        if isinstance(names, dict):  # v2.x sometimes nests them: {"motors": [...]}
            names = next(iter(names.values()), None)
        shape = spec.get("shape") or [1]
        width = int(shape[0]) if len(shape) == 1 and isinstance(shape[0], int) else 0
        if isinstance(names, list) and len(names) == width:
            dims[name] = [str(n) for n in names]
        else:
            dims[name] = [str(i) for i in range(width)]
    return feats, dims


def load_layout(root: Path) -> Layout:
    """Read the metadata and data-file footers of the dataset at `root`."""
    info = read_info(root)
    codebase = str(info["codebase_version"])
    if codebase.startswith("v3"):
        version = "v3.0"
        episodes, episodes_source = _v3_episodes(root, info)
    elif codebase.startswith("v2"):
        version = "v2.1"
        episodes, episodes_source = _v2_episodes(root, info)
    else:
        raise _fail(
            root / "meta" / "info.json",
            f"codebase_version {codebase!r} is not supported",
            hint="piperctl reads LeRobot v3.0 and v2.1 datasets",
        )
    tasks, tasks_source = _tasks(root, version)
    feats, dims = _content_features(info)
    return Layout(
        root=root,
        version=version,
        codebase_version=codebase,
        info=info,
        fps=float(info["fps"]),
        files=_data_files(root),
        episodes=episodes,
        episodes_source=episodes_source,
        tasks=tasks,
        tasks_source=tasks_source,
        content_features=feats,
        dim_names=dims,
    )


def _kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _kind(t.value_type)
        return f"list<{inner}>" if inner in ("integer", "float", "bool") else "other"
    return "other"


def validate_columns(layout: Layout, columns: list[str]) -> list[str]:
    """Check every data file has `columns` with usable, identical types; returns content features present.

    Raises a one-line error naming the first file with a missing column or a wrong type.
    """
    expected = {
        "episode_index": {"integer"},
        "frame_index": {"integer"},
        "index": {"integer"},
        "timestamp": {"float"},
    }
    first: dict[str, pa.DataType] = {}
    for f in layout.files:
        for col in columns:
            if col not in f.schema.names:
                declared = col in layout.info.get("features", {})
                hint = (
                    "declared in meta/info.json features"
                    if declared
                    else "every LeRobot data file needs it (it is not declared in meta/info.json features either)"
                )
                raise _fail(f.rel, f"has no '{col}' column", hint=hint)
            t = f.schema.field(col).type
            kind = _kind(t)
            allowed = expected.get(
                col, {"integer", "float", "bool", "list<integer>", "list<float>", "list<bool>"}
            )
            if kind not in allowed:
                want = " or ".join(sorted(allowed))
                raise _fail(f.rel, f"column '{col}' has type {t}, expected {want}")
            if col in first and first[col] != t:
                raise _fail(
                    f.rel, f"column '{col}' has type {t} here but {first[col]} in {layout.files[0].rel}"
                )
            first.setdefault(col, t)
    return [c for c in columns if c not in expected]
