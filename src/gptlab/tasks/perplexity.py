"""Bits per byte and perplexity of a text file, or of every .txt file in a folder.

Each file is one document: its tokens are scored in consecutive windows of the model's
context length (each window's first token follows the previous window's last, the first
token of a file follows the tokenizer's end-of-text token, as lm-eval's rolling
log-likelihood does). Bits per byte divide the summed negative log-likelihood (in bits) by
the UTF-8 bytes, so models with different tokenizers compare; perplexity is per token.
"""

from __future__ import annotations

from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.io import read_utf8
from gptlab.tasks.base import Doc, Task, TextDoc


def read(path: Path, shots: int = 0) -> list[Doc]:
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise GptlabError(f"{path}: no .txt files in this folder")
    docs: list[Doc] = []
    for f in files:
        text = read_utf8(f, "text file")
        if text:
            docs.append(TextDoc(str(f.relative_to(path)) if path.is_dir() else f.name, text))
    if not docs:
        raise GptlabError(f"{path}: every text is empty")
    return docs


def task(path: Path) -> Task:
    return Task(path.name, "text", {}, read, path=path)
