"""PIQA (Bisk et al., 2020): the better of two solutions to a physical goal.

Validation split, 1,838 documents ("Goal: ...\\nAnswer:" + " solution"). Dataset licence:
Academic Free License 3.0.
"""

from __future__ import annotations

from gptlab.tasks.base import olmes_task

TASK = olmes_task("piqa", {0: "rc_0shot", 5: "val_rc_5shot"}, licence="AFL-3.0")
