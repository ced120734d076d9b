"""Responses of an instruction model: generation in an entry's prompt format, `respond` for a
whole data file (resumable through a progress journal), and the statistics that tell a
degenerate model's answers.

`respond` writes a response for every entry of a data file, appending each to
OUT.progress.jsonl as it is made (gptlab.io.append_jsonl), so that a rerun continues where an
interrupted one stopped. An inference module: the server, the judge's inputs and `gptlab
chat` import it, never a training job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gptlab.errors import GptlabError, Interrupted
from gptlab.generation import generate, trim_at_stop
from gptlab.instructions import PromptFormat, entry_prompt, load_entries, prompt_format
from gptlab.io import append_jsonl, atomic_write_json, read_jsonl
from gptlab.llm import load
from gptlab.model import Decoder
from gptlab.prompts import STOP_STRINGS
from gptlab.settings import PROMPT_FORMATS, Sampling
from gptlab.text import Tokenizer


def instruct_sampling(sampling: Sampling) -> Sampling:
    """`sampling` that also stops where the model starts a new `###` section."""
    stops = tuple(dict.fromkeys((*sampling.stop_strings, *STOP_STRINGS)))
    return dataclasses.replace(sampling, stop_strings=stops)


def generate_responses(
    model: Decoder,
    entries: Sequence[dict[str, Any]],
    sampling: Sampling,
    fmt: PromptFormat | None = None,
) -> list[str]:
    """The response to each entry (one batch) prompted in format `fmt` (default: GPT-2's
    Alpaca), cut at a stop and stripped. Alpaca answers also stop at a new `###` section;
    chat ones at the end of the turn (the tokenizer's stop ids, which generation uses by
    default)."""
    fmt = fmt if fmt is not None else prompt_format()
    s = instruct_sampling(sampling) if fmt.name == "alpaca" else sampling
    tok = fmt.tokenizer
    ids = generate(model, [fmt.prompt_ids(e) for e in entries], s, tokenizer=tok)
    return [trim_at_stop(tok.decode(row), s.stop_strings).strip() for row in ids]


def model_prompt_format(
    meta: dict[str, Any], tokenizer: Tokenizer, asked: str | None = None
) -> PromptFormat:
    """The prompt format to use with a model: `asked`, else the one it was fine-tuned with
    ("template" in its config.json), else Alpaca."""
    name = asked or meta.get("template") or "alpaca"
    return prompt_format(name if name in PROMPT_FORMATS else "alpaca", tokenizer)


def progress_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".progress.jsonl")


def progress_header(
    model_spec: str,
    data_path: Path,
    sampling: Sampling,
    prompt_format: str | None = None,
    quantize: str | None = None,
) -> dict[str, Any]:
    """What a progress file was made from; a rerun only continues one with the same header
    (quantized weights are named in it; float ones, as before quantization existed, not)."""
    header = {
        "model": str(model_spec),
        "data_sha256": hashlib.sha256(data_path.read_bytes()).hexdigest(),
        "sampling": asdict(instruct_sampling(sampling)),
        "prompt_format": prompt_format,
    }
    if quantize not in (None, "none"):
        header["quantize"] = quantize
    return json.loads(json.dumps(header))  # as read back from JSON: tuples become lists


def _read_progress(path: Path, header: dict[str, Any], n_entries: int) -> dict[int, str]:
    """Responses already written by an earlier run with the same inputs (a last line cut by a
    crash is ignored)."""
    records = read_jsonl(path)
    if records and records[0] != header:
        raise GptlabError(
            f"{path}: progress of a run with another model, data or sampling; delete it or "
            "choose another --out"
        )
    done: dict[int, str] = {}
    for record in records[1:]:
        if not 0 <= record.get("index", -1) < n_entries:
            raise GptlabError(f"{path}: entry index {record.get('index')} is out of range")
        done[record["index"]] = record["model_response"]
    return done


def respond(
    model_spec: str,
    data_path: Path,
    out_path: Path,
    sampling: Sampling,
    batch_size: int = 8,
    device: str = "auto",
    prompt_format: str | None = None,
    quantize: str | None = None,
) -> Path:
    """Write `out_path`: the entries of `data_path`, each with a `model_response`, prompted in
    `prompt_format` (None: the model's own, see `model_prompt_format`) through the model's
    tokenizer, the model loaded with `quantize` (gptlab.load). Responses are appended to
    OUT.progress.jsonl batch by batch (prompts of similar length together), so a rerun after
    an interruption only generates the missing ones; the final JSON is written atomically and
    the progress file then removed."""
    if batch_size < 1:
        raise GptlabError(f"batch size must be positive, got {batch_size}")
    entries = load_entries(data_path, require_output=False)
    s = instruct_sampling(sampling)
    header = progress_header(model_spec, data_path, s, prompt_format, quantize)
    progress = progress_path(out_path)
    done = _read_progress(progress, header, len(entries))
    todo = [i for i in range(len(entries)) if i not in done]
    if todo:
        llm = load(model_spec, device=device, quantize=quantize)
        fmt = model_prompt_format(llm.metadata, llm.tokenizer, prompt_format)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if not read_jsonl(progress):  # a new file (or one whose header a crash cut short)
            append_jsonl(progress, header)
        _answer(llm.model, fmt, entries, todo, done, progress, sampling, batch_size)
    atomic_write_json(out_path, [{**e, "model_response": done[i]} for i, e in enumerate(entries)])
    progress.unlink(missing_ok=True)
    return out_path


def _answer(
    model: Decoder,
    fmt: PromptFormat,
    entries: list[dict[str, Any]],
    todo: list[int],
    done: dict[int, str],
    progress: Path,
    sampling: Sampling,
    batch_size: int,
) -> None:
    """Generate the responses of entries `todo` in batches of similar prompt lengths, each
    appended to the `progress` journal and to `done` as it comes."""
    todo = sorted(todo, key=lambda i: len(entry_prompt(entries[i])))
    with tqdm(total=len(entries), initial=len(done), desc="respond", unit="entry") as bar:
        try:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                answers = generate_responses(model, [entries[i] for i in batch], sampling, fmt)
                for i, answer in zip(batch, answers, strict=True):
                    append_jsonl(progress, {"index": i, "model_response": answer})
                    done[i] = answer
                bar.update(len(batch))
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted after {len(done)} of {len(entries)} entries; progress saved in "
                f"{progress} (rerun the same command to continue)"
            ) from None


def answer_stats(answers: Sequence[str]) -> dict[str, Any]:
    """How many of a model's answers differ, how long they are (mean words) and how many are
    empty, and whether that makes them degenerate: at most half distinct, at least half empty,
    or under two words on average. A model that answers everything with "The sentence." is
    caught here, where no judge (or none at all) would say so."""
    n = len(answers)
    words = [len(a.split()) for a in answers]
    distinct = len({a.strip() for a in answers})
    empty = words.count(0)
    mean = sum(words) / n if n else 0.0
    degenerate = n > 0 and (2 * distinct <= n or 2 * empty >= n or mean < 2)
    return {
        "n": n,
        "distinct": distinct,
        "mean_words": mean,
        "empty": empty,
        "degenerate": degenerate,
    }
