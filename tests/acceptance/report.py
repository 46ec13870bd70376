"""The results table: one row per plugin, one column per suite (auth, each contract, the
refusal of unclaimed features), each cell "passed/run" — as RFC-008's "Authentication Suite
Results: PostgreSQL: ✓ 6/6". Printed at the end of every acceptance run; written into
docs/acceptance.md by ``nox -s acceptance -- --update-docs``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from prism.sdk.contracts import CONTRACTS

COLUMNS = ("auth", *(c.name for c in CONTRACTS), "refusal")
BEGIN = "<!-- acceptance-table:begin -->"
END = "<!-- acceptance-table:end -->"


@dataclass
class Tally:
    expected: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    passed: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    failed: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    def expect(self, target: str, column: str) -> None:
        self.expected[target, column] += 1

    def record(self, target: str, column: str, *, passed: bool, when: str) -> None:
        if passed:
            if when == "call":
                self.passed[target, column] += 1
        else:
            self.failed[target, column] += 1

    def cell(self, target: str, column: str) -> str:
        expected = self.expected.get((target, column), 0)
        if not expected:
            return "—"
        passed = self.passed.get((target, column), 0)
        failed = self.failed.get((target, column), 0)
        mark = "✓" if passed == expected and not failed else "✗"
        return f"{mark} {passed}/{expected}"


def render_table(tally: Tally) -> str:
    targets = sorted({target for target, _ in tally.expected}, key=_order)
    header = ["plugin", *COLUMNS]
    rows = [[target, *(tally.cell(target, column) for column in COLUMNS)] for target in targets]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), separator, *(line(r) for r in rows)])


def _order(target: str) -> tuple[int, str]:
    return (1 if "probe" in target else 0, target)


def write_docs(path: Path, table: str) -> None:
    """Replace what is between the markers in ``path`` with ``table``."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no {BEGIN} ... {END} markers")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
