"""README.md and docs/*.md are a user's reference: no paths of the machine a figure was measured
on, no work-log wording, and every results table tied to the command, date and machine that
produced it.

The results-table rule, precisely. A table (consecutive lines starting with `|`) is a results
table when one of its body cells holds a measurement: a number followed by a unit of time,
speed, size or ratio (`8 min`, `3.4 s`, `97.0%`, `126 tokens/s`, `334 MB`, `1.07x`, ...). Such
a table must be tied, by its own cells or by the text between the heading above it and the
table, to all three of:
- a command: a `command` column, or a code span or code block that runs something (`gptlab`,
  `python`, `pytest`, `torchrun`, a script under `benchmarks/` or `scripts/`);
- a date (YYYY-MM-DD);
- a machine (a CPU or GPU named, or its cores).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Absolute paths of the machine a run happened on (temporary folders, work trees, home folders,
# virtual environments in them, pytest's temporary folders).
MACHINE_PATH = re.compile(
    r"(?<![\w.~/-])/(?:tmp|work|root|home|Users|opt|mnt|srv|var/tmp|private)/|pytest-of-"
)
WORK_LOG = re.compile(
    r"\b(?:first|second|third|fourth|fifth|sixth|this|that|other|another|previous|earlier|"
    r"later|next|each|helper|its)\s+(?:helper\s+)?sessions?\b|\bfor the lead\b|"
    r"\bthe lead(?:'s)?\b|\bFiles touched\b|"
    r"\bI (?:am|was|did|have|had|hit|ran|tried|stopped|used|measured|found|think|could|would)\b",
    re.IGNORECASE,
)
UNIT = (
    r"%|x\b|s\b|ms\b|min\b|h\b|tokens/s|tok/s|GB/s|MB/s|GFLOP/s|B\b|KB\b|MB\b|GB\b|KiB\b|MiB\b|"
    r"GiB\b"
)
MEASUREMENT = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?\s?(?:" + UNIT + ")")
COMMAND = re.compile(
    r"`[^`]*(?:\bgptlab\b|\bpython|\bpytest\b|\btorchrun\b|benchmarks/|scripts/)[^`]*`"
)
FENCE_COMMAND = re.compile(r"^\s*(?:\S+=\S+\s+)*(?:gptlab|python|\S*pytest|torchrun|/usr/bin/time|"
                           r"\S*benchmarks/|\S*scripts/)", re.MULTILINE)  # fmt: skip
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
MACHINE = re.compile(r"\b(?:CPU|GPU|EPYC|Xeon|H100|H200|A100|cores?)\b")


def tables(text: str) -> list[tuple[int, list[str], str]]:
    """(first line number, the table's lines, the text above it back to the last heading)."""
    lines = text.splitlines()
    found, i, heading, fence = [], 0, 0, False
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            fence = not fence
        if not fence and lines[i].startswith("#"):
            heading = i
        if not fence and lines[i].startswith("|"):
            start = i
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            found.append((start + 1, lines[start:i], "\n".join(lines[heading:start])))
            continue
        i += 1
    return found


def has_command(text: str) -> bool:
    if COMMAND.search(text):
        return True
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, re.DOTALL)
    return any(FENCE_COMMAND.search(block) for block in blocks)


def untied_tables(text: str) -> list[str]:
    """The results tables of `text` that miss their command, date or machine, as
    'line N: missing ...'."""
    problems = []
    for line, rows, above in tables(text):
        body = rows[2:]
        if not any(MEASUREMENT.search(cell) for row in body for cell in row.split("|")):
            continue
        own = "\n".join(rows)
        context = above + "\n" + own
        header = [cell.strip().lower() for cell in rows[0].strip("|").split("|")]
        missing = [
            what
            for what, ok in (
                ("command", "command" in header or has_command(context)),
                ("date", bool(DATE.search(context))),
                ("machine", bool(MACHINE.search(context))),
            )
            if not ok
        ]
        if missing:
            problems.append(f"line {line}: results table without its {', '.join(missing)}")
    return problems


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_holds_no_machine_path_or_work_log(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    found = [
        f"line {line_of(text, m.start())}: {m.group()!r}"
        for pattern in (MACHINE_PATH, WORK_LOG)
        for m in pattern.finditer(text)
    ]
    assert found == [], f"{page.name}: {found}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_results_table_names_its_command_date_and_machine(page: Path) -> None:
    problems = untied_tables(page.read_text(encoding="utf-8"))
    assert problems == [], f"{page.name}: {problems}"


def test_the_rules_catch_what_they_are_for() -> None:
    """The checks themselves, on pages written to break them (and to pass them)."""
    bare = "## Results\n\n| base | accuracy |\n|---|---|\n| scratch | 96.7% |\n"
    assert untied_tables(bare) == ["line 3: results table without its command, date, machine"]
    tied = (
        "## Results\n\n`gptlab pipeline --base scratch --out runs/first`, 2026-12-07, 2-core "
        "AMD EPYC CPU:\n\n" + bare.split("\n\n", 1)[1]
    )
    assert untied_tables(tied) == []
    column = "| command | wall |\n|---|---|\n| `x` | 3 min 26 s |\n"
    assert untied_tables(column) == ["line 1: results table without its date, machine"]
    spec = "| preset | parameters |\n|---|---|\n| gpt-micro | 7.3M |\n"  # no measurement
    assert untied_tables(spec) == []
    assert MACHINE_PATH.search("`--out /tmp/runB`") and MACHINE_PATH.search("/work/main/.venv")
    assert not MACHINE_PATH.search("runs/tmp/x and ~/.cache/gptlab")
    for log in ("the fourth session", "its helper session", "for the lead to place", "I hit"):
        assert WORK_LOG.search(log), log
    assert not WORK_LOG.search("distributed.session joins; a chat session")
