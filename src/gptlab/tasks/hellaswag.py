"""HellaSwag (Zellers et al., 2019): the most plausible ending of an activity description.

Validation split, 10,042 documents of 4 endings, as OLMES renders them ("Roof shingle
removal: A man is sitting on a roof. He" + " starts pulling up roofing on a roof.").
Dataset licence: MIT.
"""

from __future__ import annotations

from gptlab.tasks.base import Task, read_olmes
from gptlab.tasks.data import olmes

TASK = Task(
    "hellaswag",
    "choice",
    {0: olmes("hellaswag", "rc_0shot"), 5: olmes("hellaswag", "val_rc_5shot")},
    lambda path, shots: read_olmes(path),
    licence="MIT",
)
