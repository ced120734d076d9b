"""What a benchmark task is: its data, its documents and its metrics, without a model.

Three kinds of document:
- `ChoiceDoc`: contexts and choices scored by log-probability (multiple choice; LAMBADA is
  one choice, right when greedy decoding would produce it). `contexts` holds one context
  shared by every choice, or one per choice (Winogrande puts the choice in the context and
  scores the rest of the sentence).
- `GenerationDoc`: a prompt to answer by greedy generation (GSM8K).
- `TextDoc`: a text whose bits per byte are measured.

A `Task` names its data file for each shot count it has and turns the file into documents;
its `kind` says how gptlab.bench evaluates them and which metrics follow. Readers report a
bad line as `FILE:LINE: what is wrong`.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gptlab.errors import GptlabError
from gptlab.tasks.data import DataSource, olmes

UNCONDITIONED = 1_000_000  # OLMES numbers its context-free requests from here: not documents


@dataclass(frozen=True)
class ChoiceDoc:
    doc_id: Any
    contexts: tuple[str, ...]  # one shared context, or one per choice
    choices: tuple[str, ...]  # continuations as scored (with their leading space)
    gold: int
    answer: str | None = None  # the gold's text where the record names it (LAMBADA's word)

    def context(self, i: int) -> str:
        return self.contexts[0] if len(self.contexts) == 1 else self.contexts[i]


@dataclass(frozen=True)
class GenerationDoc:
    doc_id: Any
    prompt: str
    gold: str


@dataclass(frozen=True)
class TextDoc:
    doc_id: str
    text: str


Doc = ChoiceDoc | GenerationDoc | TextDoc
Kind = Literal["choice", "lambada", "generate", "text"]


@dataclass(frozen=True)
class Task:
    """A benchmark: `sources` maps each shot count it has to its data file (a user's task has
    none, but the `path` of its file); `read` turns the file into documents (given the shot
    count asked for); `extra` holds what its kind needs besides (a generation task's stop
    strings, `extract(text) -> answer` and `correct(answer, gold) -> bool`)."""

    name: str
    kind: Kind
    sources: dict[int, DataSource]
    read: Callable[[Path, int], list[Doc]]
    licence: str = ""
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def shots_for(self, shots: int) -> int:
        """The shot count this task runs at when `shots` is asked: that one if the task has
        it, else its only one (LAMBADA is 0-shot, GSM8K 8-shot)."""
        return shots if shots in self.sources or not self.sources else min(self.sources)


def json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a JSON Lines file (gzip when it ends
    in .gz); a line that is not a JSON object is a GptlabError naming file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise GptlabError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise GptlabError(f"{path}:{n}: expected a JSON object")
                yield n, obj
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise GptlabError(f"{path}: cannot read ({exc})") from None


def field_of(obj: dict[str, Any], path: Path, n: int, *keys: str) -> Any:
    """obj[keys[0]][keys[1]]...; missing is a GptlabError naming file, line and field."""
    value: Any = obj
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise GptlabError(f"{path}:{n}: no field {'.'.join(keys)!r}")
        value = value[key]
    return value


def read_olmes(path: Path, from_query: bool = False) -> list[ChoiceDoc]:
    """OLMES log-likelihood requests (one line per choice: doc_id, request.context,
    request.continuation, label) grouped into documents in the file's order. `from_query`
    rebuilds each document's 0-shot form from its record instead (context doc.query, choices
    " " + doc.choices, gold doc.gold): a split the file holds only with few-shot contexts."""
    lines: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
    for n, obj in json_lines(path):
        doc_id = field_of(obj, path, n, "doc_id")
        if isinstance(doc_id, int) and doc_id >= UNCONDITIONED:
            continue
        lines.setdefault(doc_id, []).append((n, obj))
    return [
        _query_doc(path, doc_id, rows[0]) if from_query else _requests_doc(path, doc_id, rows)
        for doc_id, rows in lines.items()
    ]


def olmes_task(name: str, variants: dict[int, str], licence: str, kind: Kind = "choice") -> Task:
    """A task read from OLMES's request files, `variants` naming the file of each shot count;
    a 0-shot variant named like a few-shot one ("test_rc_5shot") is rebuilt from its records'
    own queries (see `read_olmes`)."""
    zero_from_query = "5shot" in variants.get(0, "")
    return Task(
        name,
        kind,
        {shots: olmes(name, v) for shots, v in variants.items()},
        lambda path, shots: list(read_olmes(path, from_query=shots == 0 and zero_from_query)),
        licence=licence,
    )


def _requests_doc(path: Path, doc_id: Any, rows: list[tuple[int, dict[str, Any]]]) -> ChoiceDoc:
    contexts = [_text(field_of(o, path, n, "request", "context"), path, n) for n, o in rows]
    choices = [_text(field_of(o, path, n, "request", "continuation"), path, n) for n, o in rows]
    n, first = rows[0]
    label = field_of(first, path, n, "label")
    answer = None
    if isinstance(label, list):  # LAMBADA: the answer's text, one choice
        answer, label = " ".join(map(str, label)), 0
    if not isinstance(label, int) or not 0 <= label < len(choices):
        raise GptlabError(f"{path}:{n}: label {label!r} is not one of {len(choices)} choices")
    shared = len(set(contexts)) == 1
    return ChoiceDoc(
        doc_id, tuple(contexts[:1] if shared else contexts), tuple(choices), label, answer
    )


def _query_doc(path: Path, doc_id: Any, row: tuple[int, dict[str, Any]]) -> ChoiceDoc:
    n, obj = row
    query = _text(field_of(obj, path, n, "doc", "query"), path, n)
    choices = field_of(obj, path, n, "doc", "choices")
    gold = field_of(obj, path, n, "doc", "gold")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise GptlabError(f"{path}:{n}: doc.choices is not a list of strings")
    if not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise GptlabError(f"{path}:{n}: doc.gold {gold!r} is not one of {len(choices)} choices")
    return ChoiceDoc(doc_id, (query,), tuple(" " + c for c in choices), gold)


def _text(value: Any, path: Path, n: int) -> str:
    if not isinstance(value, str):
        raise GptlabError(f"{path}:{n}: expected text, got {type(value).__name__}")
    return value


# ---- metrics ---------------------------------------------------------------------------------


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n), as lm-eval)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def argmax(values: Sequence[float]) -> int:
    """The first index of the largest value (ties go to the earlier choice, as numpy's)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def metric(values: Sequence[float]) -> dict[str, float]:
    mean, stderr = mean_stderr(values)
    return {"value": mean, "stderr": stderr}
