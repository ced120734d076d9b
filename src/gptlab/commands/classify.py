"""`gptlab classify`: label texts with a fine-tuned classifier."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

from gptlab.classify import classify_texts
from gptlab.commands.common import add_command, positive_int
from gptlab.errors import GptlabError
from gptlab.hub import resolve_model
from gptlab.io import atomic_write_text, read_utf8
from gptlab.training import pick_device


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "classify",
        run,
        "label texts with a fine-tuned classifier",
        "Print the label and its probability for each TEXT, or with --input classify one text "
        "per line of a file and write CSV (text, label, probability).",
    )
    p.add_argument("--model", required=True, help="classifier run folder or model folder")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--input", type=Path, default=None, help="UTF-8 file, one text per line")
    p.add_argument("--output", type=Path, default=None, help="CSV file (default: stdout)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", default="auto")


def _read_lines(path: Path) -> list[str]:
    lines = read_utf8(path).splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise GptlabError(f"{path}:{i}: empty line (expected one text per line)")
    if not lines:
        raise GptlabError(f"{path}: no texts")
    return lines


def run(args: argparse.Namespace) -> int:
    if bool(args.texts) == (args.input is not None):
        raise GptlabError("give either TEXT arguments or --input FILE")
    device = pick_device(args.device)
    model, meta = resolve_model(args.model, device=str(device))
    if meta.get("task") != "classify" or "labels" not in meta:
        raise GptlabError(f"{args.model}: not a classifier (train one with finetune-classifier)")
    labels = meta["labels"]
    texts = args.texts or _read_lines(args.input)
    predictions = classify_texts(
        model.to(device), texts, device, args.batch_size, meta.get("max_length")
    )
    if args.input is None:
        for label, prob in predictions:
            print(f"{labels[label]}\t{prob:.4f}")
        return 0
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label", "probability"])
    writer.writerows(
        (t, labels[i], f"{p:.4f}") for t, (i, p) in zip(texts, predictions, strict=True)
    )
    if args.output is None:
        sys.stdout.write(buffer.getvalue())
    else:
        atomic_write_text(args.output, buffer.getvalue())
        print(f"wrote {len(texts)} rows to {args.output}", file=sys.stderr)
    return 0
