"""Video files against the tables: missing and orphan files, container frame counts versus rows.

Only container metadata is read (PyAV, no frame is decoded).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pyarrow.parquet as pq

from piperctl.leakage.layout import one_line
from piperctl.leakage.result import CheckResult, Finding, ids_text, plural

if TYPE_CHECKING:
    from piperctl.leakage.context import Context

V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


def container_frames(path: Path, fps: float) -> int:
    """Frames of the first video stream, from the container's metadata (its duration when not stored)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        if s.frames:
            return int(s.frames)
        if s.duration is not None and s.time_base is not None:
            return round(float(s.duration * s.time_base) * fps)
        return round((c.duration or 0) / 1e6 * fps)


def _expected_v3(ctx: Context, keys: list[str]) -> tuple[dict[str, dict], list[Finding]]:
    """{video file: {"frames": expected, "episodes": [...]}} from meta/episodes, and segment faults."""
    layout = ctx.layout
    template = str(layout.info.get("video_path") or V3_VIDEO_PATH)
    files: dict[str, dict] = {}
    findings: list[Finding] = []
    lengths = dict(layout.episodes.select("episode_index", "length").rows())
    bad_segments: dict[str, list[tuple[int, int, int]]] = {}
    for path in sorted((layout.root / "meta" / "episodes").glob("**/*.parquet")):
        names = pq.read_schema(path).names  # polars would read a `[` in the path as a glob
        for key in keys:
            cols = [
                f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
            ]
            if not all(c in names for c in cols):
                continue
            df = pl.read_parquet(path, columns=["episode_index", *cols], glob=False)
            for e, ci, fi, t0, t1 in df.rows():
                if ci is None or fi is None:
                    continue
                rel = template.format(video_key=key, chunk_index=int(ci), file_index=int(fi))
                entry = files.setdefault(rel, {"frames": 0, "episodes": []})
                entry["episodes"].append(int(e))
                if t1 is not None:
                    entry["frames"] = max(entry["frames"], round(float(t1) * layout.fps))
                if t0 is not None and t1 is not None and e in lengths:
                    seg = round((float(t1) - float(t0)) * layout.fps)
                    if abs(seg - lengths[e]) > 1:
                        bad_segments.setdefault(key, []).append((int(e), seg, int(lengths[e])))
    for key, bad in bad_segments.items():
        ids = sorted(e for e, _, _ in bad)
        e, seg, n = bad[0]
        findings.append(
            Finding(
                "segment_mismatch",
                "fail",
                ids,
                f"{key}: video segments of {plural(len(ids), 'episode')} differ from their rows: {ids_text(ids)} "
                f"(episode {e}: {seg} frames of video, {n} rows)",
                {"video_key": key},
            )
        )
    return files, findings


def _expected_v2(ctx: Context, keys: list[str]) -> dict[str, dict]:
    layout = ctx.layout
    template = str(layout.info.get("video_path") or V2_VIDEO_PATH)
    chunks = int(layout.info.get("chunks_size") or 1000)
    files = {}
    for e, n in layout.episodes.select("episode_index", "length").rows():
        for key in keys:
            rel = template.format(video_key=key, episode_chunk=int(e) // chunks, episode_index=int(e))
            files[rel] = {"frames": int(n), "episodes": [int(e)]}
    return files


def check_videos(ctx: Context) -> CheckResult:
    """Every video file the metadata names exists, holds as many frames as the rows, and none is extra."""
    res = CheckResult("videos", "Video files and frame counts")
    layout = ctx.layout
    keys = [
        k for k, s in layout.info["features"].items() if isinstance(s, dict) and s.get("dtype") == "video"
    ]
    if not keys:
        res.note = "no video features declared"
        return res
    folder = layout.root / "videos"
    if not folder.is_dir():
        res.findings.append(
            Finding(
                "videos_absent",
                "warn",
                [],
                f"{plural(len(keys), 'video feature')} declared ({', '.join(keys)}) but there is no videos/ "
                "folder: frame counts not checked, and lerobot cannot load the cameras",
                {"video_keys": keys},
            )
        )
        return res
    try:
        import av  # noqa: F401
    except ImportError:  # pragma: no cover - PyAV comes with lerobot
        return res.skip("skipped: PyAV is not installed")
    if layout.version == "v3.0":
        expected, res.findings = _expected_v3(ctx, keys)
    else:
        expected = _expected_v2(ctx, keys)
    missing: list[tuple[str, list[int]]] = []
    counts: list[tuple[str, int, int, list[int]]] = []
    broken: list[tuple[str, str, list[int]]] = []
    for rel, want in sorted(expected.items()):
        path = layout.root / rel
        if not path.is_file():
            missing.append((rel, want["episodes"]))
            continue
        try:
            n = container_frames(path, layout.fps)
        except Exception as e:  # noqa: BLE001 - any container error is a finding about that file
            broken.append((rel, one_line(e), want["episodes"]))
            continue
        if abs(n - want["frames"]) > 1:
            counts.append((rel, n, want["frames"], want["episodes"]))
    if missing:
        ids = sorted({e for _, eps in missing for e in eps})
        res.findings.append(
            Finding(
                "missing_video",
                "fail",
                ids,
                f"{plural(len(missing), 'video file')} named by the metadata missing, for "
                f"{plural(len(ids), 'episode')}: {ids_text(ids)} (first: {missing[0][0]})",
                {"files": [m[0] for m in missing[:1000]]},
            )
        )
    if counts:
        ids = sorted({e for *_, eps in counts for e in eps})
        rel, n, want, _ = counts[0]
        res.findings.append(
            Finding(
                "frame_count",
                "fail",
                ids,
                f"{plural(len(counts), 'video file')} with a frame count other than the rows, for "
                f"{plural(len(ids), 'episode')}: {ids_text(ids)} ({rel}: {n} frames, {want} expected)",
                {"files": [{"file": r, "frames": a, "expected": b} for r, a, b, _ in counts[:1000]]},
            )
        )
    if broken:
        ids = sorted({e for *_, eps in broken for e in eps})
        res.findings.append(
            Finding(
                "unreadable_video",
                "fail",
                ids,
                f"{plural(len(broken), 'video file')} unreadable: {broken[0][0]} ({broken[0][1]})",
                {"files": [b[0] for b in broken[:1000]]},
            )
        )
    orphans = sorted(
        p.relative_to(layout.root).as_posix()
        for p in folder.glob("**/*.mp4")
        if p.relative_to(layout.root).as_posix() not in expected
    )
    if orphans:
        res.findings.append(
            Finding(
                "orphan_video",
                "warn",
                [],
                f"{plural(len(orphans), 'video file')} no episode refers to: {', '.join(orphans[:3])}"
                + (" …" if len(orphans) > 3 else ""),
                {"files": orphans[:1000]},
            )
        )
    res.extra["video_files"] = len(expected)
    res.note = f"{plural(len(expected), 'video file')} present, frame counts equal to the rows"
    return res
