"""The benchmarks `gptlab bench` runs, one module each: their data, documents and metrics.

`get_task(spec)` is a task by name, a user's multiple-choice JSON Lines file (gptlab.tasks
.custom) or a text file or folder whose bits per byte to measure (gptlab.tasks.perplexity);
"core" (gptlab.tasks.core) is the six tasks of the CORE estimate.
"""

from __future__ import annotations

from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.tasks import arc, custom, gsm8k, hellaswag, lambada, mmlu, perplexity, piqa, winogrande
from gptlab.tasks.base import Task

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        hellaswag.TASK,
        arc.EASY,
        arc.CHALLENGE,
        piqa.TASK,
        winogrande.TASK,
        mmlu.TASK,
        lambada.TASK,
        gsm8k.TASK,
    )
}
CORE = "core"


def get_task(spec: str) -> Task:
    """The task `spec` names (see the module docstring); anything else is one GptlabError
    listing the known names."""
    if spec in TASKS:
        return TASKS[spec]
    path = Path(spec)
    if path.name.endswith((".jsonl", ".jsonl.gz")) and path.is_file():
        return custom.task(path)
    if (path.suffix == ".txt" and path.is_file()) or path.is_dir():
        return perplexity.task(path)
    raise GptlabError(
        f"unknown task {spec!r}; known tasks: {', '.join([*TASKS, CORE])}, or a .jsonl "
        "multiple-choice file, or a .txt file or folder (bits per byte)"
    )
