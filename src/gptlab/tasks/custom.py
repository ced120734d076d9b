"""A user's own multiple-choice set, as a JSON Lines file (.jsonl, or .jsonl.gz).

Each line is either one document, {"id": ..., "context": "...", "choices": ["...", ...],
"gold": 0} (each choice is scored after the context and one space; "id" defaults to the
line number), or one OLMES request line as the built-in tasks' files hold them (doc_id,
request.context, request.continuation, label), so an OLMES task file runs as it is.
"""

from __future__ import annotations

from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.tasks.base import ChoiceDoc, Doc, Task, field_of, json_lines, read_olmes


def read(path: Path, shots: int = 0) -> list[Doc]:
    lines = list(json_lines(path))
    if not lines:
        raise GptlabError(f"{path}: no documents")
    if "request" in lines[0][1]:
        return list(read_olmes(path))
    return [_doc(path, n, obj) for n, obj in lines]


def _doc(path: Path, n: int, obj: dict) -> ChoiceDoc:
    context = field_of(obj, path, n, "context")
    choices = field_of(obj, path, n, "choices")
    gold = field_of(obj, path, n, "gold")
    if not isinstance(context, str):
        raise GptlabError(f"{path}:{n}: context is not text")
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise GptlabError(f"{path}:{n}: choices must be a list of at least two non-empty texts")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        raise GptlabError(f"{path}:{n}: gold {gold!r} is not the index of one of the choices")
    return ChoiceDoc(obj.get("id", n), (context,), tuple(" " + c for c in choices), gold)


def task(path: Path) -> Task:
    return Task(path.name, "choice", {}, read, path=path)
