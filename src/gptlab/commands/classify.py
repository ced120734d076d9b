"""`gptlab classify`: label texts with a fine-tuned classifier."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from gptlab.classifier import classify_texts
from gptlab.errors import GptlabError
from gptlab.io import atomic_write_text, read_utf8
from gptlab.llm import load
from gptlab.settings import ClassifyConfig


def _read_lines(path: Path) -> list[str]:
    """One text per line of `path` ('-': standard input); blank lines at the end are ignored,
    a blank line between texts is an error."""
    text = sys.stdin.read() if str(path) == "-" else read_utf8(path)
    lines = text.rstrip("\r\n ").splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise GptlabError(f"{path}:{i}: empty line (expected one text per line)")
    if not lines:
        raise GptlabError(f"{path}: no texts")
    return lines


def run(c: ClassifyConfig) -> int:
    if bool(c.texts) == (c.input is not None):
        raise GptlabError("give either TEXT arguments or --input FILE")
    llm = load(c.model, device=c.device.device)
    meta = llm.metadata
    if meta.get("task") != "classify" or "labels" not in meta:
        raise GptlabError(f"{c.model}: not a classifier (train one with finetune-classifier)")
    labels = meta["labels"]
    texts = list(c.texts) if c.input is None else _read_lines(c.input)
    predictions = classify_texts(
        llm.model, texts, llm.device, c.batch_size, meta.get("max_length"), llm.tokenizer
    )
    if c.input is None:
        for label, prob in predictions:
            print(f"{labels[label]}\t{prob:.4f}")
        return 0
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label", "probability"])
    writer.writerows(
        (t, labels[i], f"{p:.4f}") for t, (i, p) in zip(texts, predictions, strict=True)
    )
    if c.output is None:
        sys.stdout.write(buffer.getvalue())
    else:
        atomic_write_text(c.output, buffer.getvalue())
        print(f"wrote {len(texts)} rows to {c.output}", file=sys.stderr)
    return 0
