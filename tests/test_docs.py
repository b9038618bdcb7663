"""The docs state a measured figure once: in BENCHMARKS.md, which `make bench` and `make chaos` runs
write, and everywhere else by a link to it (issue 34: the same figure said differently in two places)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NUMBER = (
    r"(?<![\w.])~?\d[\d,]*(?:\.\d+)?\s?(?:ms|s|MiB|MB|KB|GB|%|bytes|req/s|a second|x|×)"  # noqa: RUF001 - the multiplication sign is how the docs write a ratio
    r"(?![\w/])"
)


def clauses(text: str) -> list[str]:
    """The text's sentences and table cells, each on one line."""
    flat = " ".join(text.split())
    return [c.strip() for c in re.split(r"(?<=[.;])\s|\|", flat) if c.strip()]


def quoted_measurements(text: str) -> list[str]:
    """Clauses that quote a measured figure without pointing at BENCHMARKS.md: one that says
    "measured" beside a figure, or a percentile beside a time."""
    found = []
    for clause in clauses(text):
        if "BENCHMARKS.md" in clause or "http" in clause:  # ours by link, or someone else's, cited
            continue
        bare = re.sub(r"\bissue \d+", "", clause)
        measured = re.search(r"\bmeasured\b", bare, re.I) and re.search(NUMBER, bare)
        percentile = re.search(r"\bp(?:50|95|99)\b[^.]{0,40}\d+(?:\.\d+)?\s?ms\b", bare)
        if measured or percentile:
            found.append(clause)
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_no_doc_but_benchmarks_quotes_a_measured_figure(path):
    assert quoted_measurements(path.read_text()) == []


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("The sweep settles 250 a second (measured).", True),
        ("a request answers 503 in about 5 s (measured by the tests), at worst 11 s.", True),
        ("stalled clients wait up to 30 s (28 s measured: nine connections).", True),
        ("PUT to completed: p50 281 ms on the emulators.", True),
        ("What one run settles per second is [BENCHMARKS.md](../BENCHMARKS.md) (i).", False),
        ("HumanCellAtlas measured a 35 GB object in ~1.5 s ([#2124](https://github.com/x/y)).", False),
        ("mutagen and hachoir were measured in issue 23; not taken.", False),
        ("a 503 within the upstream bound (Storage ~11 s).", False),
    ],
)
def test_the_rule_tells_a_quoted_measurement_from_a_bound_or_a_link(text, quoted):
    assert bool(quoted_measurements(text)) is quoted
