"""ARC (Clark et al., 2018): grade-school science questions, Easy and Challenge sets.

Test splits (2,376 and 1,172 questions, mostly 4 answers) in OLMES's cloze form
("Question: ...\\nAnswer:" + " answer text"). OLMES ships the test splits only with 5-shot
contexts; the 0-shot documents are rebuilt from each record's own query and choices, which is
exactly how its 0-shot files (validation split) read. Dataset licence: CC BY-SA 4.0.
"""

from __future__ import annotations

from gptlab.tasks.base import olmes_task

VARIANTS = {0: "test_rc_5shot", 5: "test_rc_5shot"}
EASY = olmes_task("arc_easy", VARIANTS, licence="CC BY-SA 4.0")
CHALLENGE = olmes_task("arc_challenge", VARIANTS, licence="CC BY-SA 4.0")
