"""Train/validation splits: parse `NAME=RANGES` options and lerobot's `splits` in meta/info.json."""

from __future__ import annotations

from typing import Any

from piperctl.errors import PiperctlError


def parse_ranges(text: str, where: str) -> list[int]:
    """Episode ids of `START:END` (END excluded) and single ids, comma-separated: "0:40,45"."""
    ids: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                lo, hi = (int(p) for p in part.split(":"))
                if lo < 0 or hi < lo:
                    raise ValueError
                ids.extend(range(lo, hi))
            else:
                ids.append(int(part))
        except ValueError:
            raise PiperctlError(
                f"{where}: {text!r} is not a list of episode ranges",
                hint="use START:END (END excluded) or single ids, comma-separated, e.g. 0:40,45",
            ) from None
    return ids


def parse_split_options(options: list[str]) -> dict[str, list[int]]:
    """Splits from repeated `--split NAME=RANGES` options."""
    splits: dict[str, list[int]] = {}
    for opt in options:
        name, sep, ranges = opt.partition("=")
        if not sep or not name.strip():
            raise PiperctlError(
                f"--split {opt!r} is not NAME=RANGES", hint="e.g. --split train=0:40 --split val=40:50"
            )
        splits.setdefault(name.strip(), []).extend(parse_ranges(ranges, f"--split {name.strip()}"))
    return splits


def splits_from_info(info: dict[str, Any]) -> dict[str, list[int]]:
    """Splits declared in meta/info.json (`{"train": "0:40", ...}`); empty when there are none."""
    raw = info.get("splits") or {}
    if not isinstance(raw, dict):
        raise PiperctlError("meta/info.json: 'splits' is not an object", exit_code=2)
    return {str(k): parse_ranges(str(v), f"meta/info.json splits.{k}") for k, v in raw.items()}


def route_split_options(options: list[str], names: list[tuple[str, ...]]) -> list[list[str] | None]:
    """Per dataset, the `--split` options that apply to it (None: none, use its meta/info.json).

    `DATASET:NAME=RANGES` goes to the dataset called DATASET (any of `names[k]`: its label or the
    DATASET as given); `NAME=RANGES` goes to every dataset.
    """
    routed: list[list[str] | None] = [None] * len(names)
    for opt in options:
        head, sep, ranges = opt.partition("=")
        prefix, colon, name = head.rpartition(":")
        targets = range(len(names))
        if colon:
            targets = [k for k, ns in enumerate(names) if prefix.strip() in ns]  # type: ignore[assignment]
            if not targets:
                known = ", ".join(ns[0] for ns in names)
                raise PiperctlError(
                    f"--split {opt!r}: no dataset called {prefix!r}", hint=f"prefix one of: {known}"
                )
        for k in targets:
            routed[k] = [*(routed[k] or []), f"{name if colon else head}{sep}{ranges}"]
    return routed
