"""WinoGrande (Sakaguchi et al., 2020): which of two names fills the blank of a sentence.

Validation split (winogrande_xl), 1,267 documents. Each option goes into the context and the
rest of the sentence is scored after it ("partial evaluation"), so the two choices have
different contexts and the same continuation. Dataset licence: CC BY 4.0.
"""

from __future__ import annotations

from gptlab.tasks.base import Task, read_olmes
from gptlab.tasks.data import olmes

TASK = Task(
    "winogrande",
    "choice",
    {0: olmes("winogrande", "rc_0shot"), 5: olmes("winogrande", "val_rc_5shot")},
    lambda path, shots: read_olmes(path),
    licence="CC BY 4.0",
)
