"""GSM8K (Cobbe et al., 2021): grade-school maths word problems, answered by generation.

Test split, 1,319 problems, each after OLMES's 8 worked examples ("Question: ...\\nAnswer:
... So the answer is 6."). The model answers greedily until "Question:", a blank line or its
stop tokens; the answer is the number after "answer is", else the last number in the text,
and it is right when it equals the reference number (commas, "$" and a final "." dropped).
Dataset licence: MIT.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from gptlab.tasks.base import Doc, GenerationDoc, Task, field_of, json_lines
from gptlab.tasks.data import olmes

STOP = ("Question:", "\n\n")
NUMBER = r"-?[$]?\d[\d,]*(?:\.\d+)?"


def read(path: Path, shots: int) -> list[Doc]:
    docs: list[Doc] = []
    for n, obj in json_lines(path):
        prompt = field_of(obj, path, n, "request", "context")
        gold = field_of(obj, path, n, "doc", "short_answer")
        docs.append(GenerationDoc(field_of(obj, path, n, "doc_id"), str(prompt), str(gold)))
    return docs


def extract_answer(text: str) -> str | None:
    """The number a generated solution gives as its answer, normalised; None if none."""
    stated = re.search(rf"answer is\s*({NUMBER})", text)
    numbers = re.findall(NUMBER, text)
    found = stated.group(1) if stated else (numbers[-1] if numbers else None)
    return None if found is None else normalise(found)


def normalise(number: str) -> str:
    """ "$1,234.50" -> "1234.5": the same value written one way."""
    cleaned = number.replace(",", "").replace("$", "").rstrip(".")
    try:
        return format(Decimal(cleaned).normalize(), "f")
    except InvalidOperation:
        return cleaned


def is_correct(prediction: str | None, gold: str) -> bool:
    return prediction is not None and prediction == normalise(gold)


TASK = Task(
    "gsm8k",
    "generate",
    {8: olmes("gsm8k", "gold_bpb_5shot")},  # the variant's name says 5, its contexts hold 8
    read,
    licence="MIT",
    extra={"stop": STOP, "extract": extract_answer, "correct": is_correct},
)
