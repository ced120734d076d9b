"""HellaSwag (Zellers et al., 2019): the most plausible ending of an activity description.

Validation split, 10,042 documents of 4 endings, as OLMES renders them ("Roof shingle
removal: A man is sitting on a roof. He" + " starts pulling up roofing on a roof.").
Dataset licence: MIT.
"""

from __future__ import annotations

from gptlab.tasks.base import olmes_task

TASK = olmes_task("hellaswag", {0: "rc_0shot", 5: "val_rc_5shot"}, licence="MIT")
