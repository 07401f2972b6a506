"""Check results and the report of one run: statuses, findings and the JSON contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "skip", "warn", "fail"]
# A skipped check found nothing because it looked at nothing: it never fails a run, whatever --fail-on.
STATUS_RANK: dict[str, int] = {"pass": 0, "skip": 0, "warn": 1, "fail": 2}
MAX_LISTED = 1000  # the contract lists the first 1000 episodes/findings; `count` keeps the total


def worst(statuses: list[str]) -> Status:
    """The most severe of `statuses` ("pass" when empty; "skip" counts as "pass")."""
    ranked = ["pass" if s == "skip" else s for s in statuses]
    return max(ranked, key=STATUS_RANK.__getitem__, default="pass")  # type: ignore[return-value]


@dataclass
class Finding:
    """One fault: what kind, how severe, which episodes, and a sentence a person can act on."""

    kind: str
    status: Status
    episodes: list[int]
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON-ready data."""
        return {
            "kind": self.kind,
            "status": self.status,
            "episodes": self.episodes[:MAX_LISTED],
            "message": self.message,
            **self.extra,
        }


@dataclass
class CheckResult:
    """The outcome of one check: its findings, and the status, episodes and summary derived from them."""

    name: str
    title: str
    findings: list[Finding] = field(default_factory=list)
    note: str = ""  # said in the summary when the check passes (what was checked)
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""  # why the check could not run ("skipped: ..."); its status is then "skip"

    def skip(self, reason: str) -> CheckResult:
        """Mark the check as not run, for `reason` (a line starting with "skipped: ")."""
        self.skipped = reason
        return self

    @property
    def status(self) -> Status:
        """The most severe status among the findings; "skip" when the check could not run."""
        if not self.findings and self.skipped:
            return "skip"
        return worst([f.status for f in self.findings])

    @property
    def episodes(self) -> list[int]:
        """Every episode involved in any finding, sorted."""
        return sorted({e for f in self.findings for e in f.episodes})

    @property
    def count(self) -> int:
        """How many episodes the findings involve (the length of the full `episodes` list)."""
        return len(self.episodes)

    @property
    def summary(self) -> str:
        """One line: the note when clean, else the first findings' messages."""
        if not self.findings:
            return self.skipped or self.note or "no problems found"
        shown = "; ".join(f.message for f in self.findings[:3])
        more = len(self.findings) - 3
        return f"{shown}; and {more} more finding(s)" if more > 0 else shown

    def to_dict(self) -> dict[str, Any]:
        """The check in the documented JSON contract (plus `title`, `findings_total`, `findings`)."""
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "count": self.count,
            "summary": self.summary,
            "episodes": self.episodes[:MAX_LISTED],
            "findings_total": len(self.findings),
            "findings": [f.to_dict() for f in self.findings[:MAX_LISTED]],
            **({"skipped": self.skipped} if self.skipped else {}),
            **self.extra,
        }


@dataclass
class LeakageReport:
    """Everything one run found: the dataset, the mode and each check's result."""

    dataset: str
    mode: Literal["minimal", "full"]
    checks: list[CheckResult]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        """The most severe status over all checks (skipped checks count as passed)."""
        return worst([c.status for c in self.checks])

    def failed(self, fail_on: str = "fail") -> bool:
        """True when some check reaches `fail_on` ("warn" or "fail")."""
        return STATUS_RANK[self.status] >= STATUS_RANK[fail_on]

    def check(self, name: str) -> CheckResult:
        """The result of the check called `name`."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The report in the documented JSON contract."""
        return {
            "dataset": self.dataset,
            "mode": self.mode,
            "status": self.status,
            **self.info,
            "checks": [c.to_dict() for c in self.checks],
        }


def ids_text(ids: list[int], limit: int = 8) -> str:
    """A short list of episode ids for a message: "1, 4, 9 and 12 more"."""
    shown = ", ".join(str(i) for i in ids[:limit])
    return f"{shown} and {len(ids) - limit} more" if len(ids) > limit else shown


def plural(n: int, word: str) -> str:
    """`n word` with an `s` when n != 1."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def ref_key(ref: str, order: list[str]) -> tuple[int, int]:
    """Sort key of a `LABEL:EPISODE` reference: the dataset's position in `order`, then the episode."""
    label, _, episode = ref.rpartition(":")
    return (order.index(label) if label in order else len(order), int(episode))


@dataclass
class AcrossCheckResult(CheckResult):
    """A check across datasets: its findings name episodes as `LABEL:EPISODE` strings."""

    order: list[str] = field(default_factory=list)  # the datasets' labels, in the order given

    @property
    def episodes(self) -> list[str]:  # type: ignore[override]
        """Every `LABEL:EPISODE` involved in any finding, by dataset (in the order given), then episode."""
        refs = {str(e) for f in self.findings for e in f.episodes}
        return sorted(refs, key=lambda r: ref_key(r, self.order))


@dataclass
class CollectionReport:
    """A scan of several datasets as one collection: each dataset's report and the checks across them."""

    datasets: list[str]  # as given
    labels: list[str]  # how messages name them (LABEL:EPISODE)
    mode: Literal["minimal", "full"]
    reports: list[LeakageReport]
    across: list[CheckResult]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        """The most severe status over every dataset's report and the checks across them."""
        return worst([r.status for r in self.reports] + [c.status for c in self.across])

    @property
    def across_status(self) -> Status:
        """The most severe status of the checks across datasets."""
        return worst([c.status for c in self.across])

    def failed(self, fail_on: str = "fail") -> bool:
        """True when some check, of any dataset or across them, reaches `fail_on` ("warn" or "fail")."""
        return STATUS_RANK[self.status] >= STATUS_RANK[fail_on]

    def report(self, dataset: str) -> LeakageReport:
        """The report of one dataset, by its label or as it was given."""
        for d, label, r in zip(self.datasets, self.labels, self.reports, strict=True):
            if dataset in (d, label):
                return r
        raise KeyError(dataset)

    def check(self, name: str) -> CheckResult:
        """The result of the check across datasets called `name`."""
        for c in self.across:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The collection in the JSON contract of docs/leakage.md (several datasets)."""
        return {
            "datasets": self.datasets,
            "labels": self.labels,
            "mode": self.mode,
            "status": self.status,
            **self.info,
            "reports": [
                {"label": lb, **r.to_dict()} for lb, r in zip(self.labels, self.reports, strict=True)
            ],
            "across": {"status": self.across_status, "checks": [c.to_dict() for c in self.across]},
        }
