"""ARC (Clark et al., 2018): grade-school science questions, Easy and Challenge sets.

Test splits (2,376 and 1,172 questions, mostly 4 answers) in OLMES's cloze form
("Question: ...\\nAnswer:" + " answer text"). OLMES ships the test splits only with 5-shot
contexts; the 0-shot documents are rebuilt from each record's own query and choices, which is
exactly how its 0-shot files (validation split) read. Dataset licence: CC BY-SA 4.0.
"""

from __future__ import annotations

from gptlab.tasks.base import Task, read_olmes
from gptlab.tasks.data import olmes


def _task(name: str) -> Task:
    source = olmes(name, "test_rc_5shot")
    return Task(
        name,
        "choice",
        {0: source, 5: source},
        lambda path, shots: read_olmes(path, from_query=shots == 0),
        licence="CC BY-SA 4.0",
    )


EASY = _task("arc_easy")
CHALLENGE = _task("arc_challenge")
