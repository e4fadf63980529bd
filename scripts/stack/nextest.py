"""The counts of `cargo nextest run`'s summary line, read from its output as it goes."""

from __future__ import annotations

import re


class NextestCounts:
    SUMMARY = re.compile(r"Summary \[.*?\]\s+(\d+) tests? run: (\d+) passed(.*)$")

    def __init__(self) -> None:
        self.passed: int | None = None
        self.failed = 0

    def feed(self, line: str) -> None:
        clean = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        m = self.SUMMARY.search(clean)
        if m:
            self.passed = int(m.group(2))
            rest = m.group(3)
            self.failed = sum(int(n) for n in re.findall(r"(\d+) (?:failed|timed out|leaky-failed)", rest))
