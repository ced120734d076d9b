"""WinoGrande (Sakaguchi et al., 2020): which of two names fills the blank of a sentence.

Validation split (winogrande_xl), 1,267 documents. Each option goes into the context and the
rest of the sentence is scored after it ("partial evaluation"), so the two choices have
different contexts and the same continuation. Dataset licence: CC BY 4.0.
"""

from __future__ import annotations

from gptlab.tasks.base import olmes_task

TASK = olmes_task("winogrande", {0: "rc_0shot", 5: "val_rc_5shot"}, licence="CC BY 4.0")
