"""PIQA (Bisk et al., 2020): the better of two solutions to a physical goal.

Validation split, 1,838 documents ("Goal: ...\\nAnswer:" + " solution"). Dataset licence:
Academic Free License 3.0.
"""

from __future__ import annotations

from gptlab.tasks.base import Task, read_olmes
from gptlab.tasks.data import olmes

TASK = Task(
    "piqa",
    "choice",
    {0: olmes("piqa", "rc_0shot"), 5: olmes("piqa", "val_rc_5shot")},
    lambda path, shots: read_olmes(path),
    licence="AFL-3.0",
)
