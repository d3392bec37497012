"""What an attack returns (`Finding`) and the score columns a finding type declares (`Score`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from fedcore.views import Truth

__all__ = ["ERROR", "NOT_APPLICABLE", "OK", "Finding", "Score", "not_applicable"]

OK = "ok"
NOT_APPLICABLE = "not_applicable"
ERROR = "error"


@dataclass(frozen=True)
class Score:
    """One score column a finding type writes to `attacks.parquet`.

    Attributes:
        name: the column (a key of `Finding.score`'s result).
        label: the summary table's header (default: `name`).
        headline: shown in each round's console line (one per finding type, usually).
        higher_is_better: the direction of the score (True for F1 and PSNR, False for WER).
    """

    name: str
    label: str = ""
    headline: bool = False
    higher_is_better: bool = True

    @property
    def header(self) -> str:
        return self.label or self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.header,
            "headline": self.headline,
            "higher_is_better": self.higher_is_better,
        }


@dataclass(frozen=True, kw_only=True)
class Finding:
    """Base of every attack result.

    Subclasses add their fields, implement `score(truth)` and list what it returns in `SCORES`,
    so summaries and notebooks show a new attack's scores without any change to fedsim.

    Attributes:
        status: "ok", "not_applicable" (the attack's assumptions do not hold; `message` says
            which) or "error" (set by the runner when the attack raised or timed out).
        message: human-readable reason for a status other than "ok".
        diagnostics: numbers worth logging that are not scores (ranks, residuals, iterations).
    """

    SCORES: ClassVar[tuple[Score, ...]] = ()

    status: str = OK
    message: str = ""
    diagnostics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def score(self, truth: Truth) -> dict[str, float]:
        """Scores of this finding against the ground truth; empty for a bare finding."""
        return {}


def not_applicable(reason: str, **diagnostics: Any) -> Finding:
    """A finding that says the attack does not apply here, and why."""
    return Finding(status=NOT_APPLICABLE, message=reason, diagnostics=diagnostics)
