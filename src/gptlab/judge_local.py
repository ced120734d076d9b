"""The judge in-process: gptlab runs the judge model itself and reads its probabilities.

`gptlab evaluate --judge M` loads M (anything --model takes, or `qwen2.5-coder-1.5b`, the
judge fetched into the cache: gptlab.judge_model) with `gptlab.load` and judges with one of
three protocols, recorded in results.json:

- `score`: the book's prompt (gptlab.judge.score_prompt, the reference answer included) in the
  judge's chat template, and its greedy reply read as an integer from 0 to 100, asked again
  once with a stricter prompt when it is none: today's server judge, run here.
- `expected`: the same prompt, read once through the KV cache (gptlab.scoring); every complete
  reply "0" ... "100" followed by the end-of-turn token gets its full probability (Qwen's
  tokenizer writes numbers digit by digit, so "85" is two tokens and "8" alone is a reply
  too), and the score is their probability-weighted mean. No sampling and nothing to parse;
  a judge whose replies put less than MIN_MASS of their probability on score strings gives
  no score for that entry (counted as unusable, never guessed).
- `pairwise`: two responses to the same instruction (one from each of two files) shown as A
  and B, asked in both orders; in each order the judge's log-odds of answering "A" over "B"
  (its probabilities of the two one-letter replies); the verdict is half the first order's
  minus the second's, positive when the first file's response is preferred. A position bias
  adds the same amount to both orders and cancels; swapping the two responses negates the
  verdict. |verdict| <= the tie margin is a tie.

Each judged entry is appended to a JSON Lines journal the moment its batch is done, so a rerun
asks only about the rest, as with a server.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gptlab.device import native_bf16, pick_device
from gptlab.errors import GptlabError, Interrupted
from gptlab.formats.gguf import count_parameters
from gptlab.generation import generate
from gptlab.instructions import PromptFormat, prompt_format
from gptlab.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from gptlab.judge import (
    STRICT_SUFFIX,
    check_same_entries,
    entry_key,
    evaluate_responses,
    load_responses,
    parse_score,
    score_prompt,
    table_text,
    win_rate,
)
from gptlab.judge_model import judge_spec
from gptlab.llm import LLM, load
from gptlab.quantize import quantization_level
from gptlab.runs import RunDir
from gptlab.scoring import Prefix, Request, Score, common_prefix, score_requests, score_tree
from gptlab.settings import JUDGE_PROTOCOLS, JudgeConfig, Sampling

MIN_MASS = 0.01  # least probability on score strings for an `expected` score
SCORE_TOKENS = 8  # greedy reply of the `score` protocol: an integer, maybe a period
MEMORY_MARGIN = 1.2  # the estimate: float32 weights plus room for activations and caches
PAIRWISE_PROMPT = (
    "You are comparing two responses to an instruction against a reference answer.\n\n"
    "Instruction:\n{instruction}\n\n{input}"
    "Reference answer:\n{output}\n\n"
    "Response A:\n{a}\n\n"
    "Response B:\n{b}\n\n"
    "Which response is better: is it more correct and more helpful, closer to the reference "
    "answer? Answer with the single letter A or B."
)


@dataclass
class LocalJudge:
    """A loaded judge: the model, its chat prompt format (gptlab.instructions), its name."""

    llm: LLM
    fmt: PromptFormat
    name: str

    @property
    def weights(self) -> str:
        """What its weights are computed in: "BF16", "F32", or the --quantize mode."""
        return quantization_level(self.llm.model)

    def chat_ids(self, prompt: str) -> list[int]:
        """`prompt` as one user turn in the judge's chat template, ready for its reply."""
        return self.fmt.prompt_ids({"instruction": prompt})

    def reply_ids(self, reply: str) -> list[int]:
        """The token ids of a complete reply: its text, then the end of turn."""
        tok = self.fmt.tokenizer
        between = tok.encode(self.fmt.between, add_bos=False) if self.fmt.between else []
        return [*tok.encode(reply, add_bos=False), *between, self.fmt.end_id]


# ---- loading ----------------------------------------------------------------------------------


def available_memory() -> int | None:
    """Bytes of memory the system can give now (Linux's MemAvailable), None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def weights_estimate(path: Path) -> int | None:
    """Bytes the model at `path` takes once loaded (its weights as float32, as gptlab reads
    foreign formats) times MEMORY_MARGIN, from file headers alone; None when not a file gptlab
    can size without loading (a run folder, a repository id)."""
    n: int | None = None
    if path.is_file() and path.suffix.lower() == ".gguf":
        n = count_parameters(path)
    elif path.is_dir() and (files := sorted(path.glob("*.safetensors"))):
        counts = [_safetensors_elements(f) for f in files]
        n = None if None in counts else sum(c for c in counts if c is not None)
    return None if n is None else int(n * 4 * MEMORY_MARGIN)


def _safetensors_elements(path: Path) -> int | None:
    """The weights a safetensors file's header declares; None for a header that is not one
    (the loader then says what is wrong with the file)."""
    try:
        with path.open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, MemoryError):
        return None


def check_memory(spec: str) -> None:
    """One GptlabError with the estimate when the judge cannot fit in memory: said before
    loading, instead of the system killing the process halfway."""
    need, have = weights_estimate(Path(spec)), available_memory()
    if need is not None and have is not None and need > have:
        raise GptlabError(
            f"{spec}: the judge needs about {need / 2**30:.1f} GiB of memory (float32 weights "
            f"and working room) and {have / 2**30:.1f} GiB is available; choose a smaller judge"
        )


def judge_dtype(device: torch.device, quantize: str = "none") -> str | None:
    """The judge's weights: bfloat16 where bfloat16 products are native (a GPU, a CPU with
    AVX512-BF16 or AMX), since judging is all prompt reading, about twice as fast there as in
    float32 (docs/judge.md: scores within about a point of float32's); otherwise as loaded
    (float32 for every foreign format), and as loaded under --quantize."""
    if quantize in (None, "none") and native_bf16(device):
        return "bfloat16"
    return None


def load_judge(
    spec: str, device: str = "auto", dtype: str | None = None, quantize: str = "none"
) -> LocalJudge:
    """The judge `spec` names, loaded after checking it fits in memory; a model without a chat
    template (not an instruction model) is one GptlabError. `dtype` and `quantize` as for
    gptlab.load; dtype None: bfloat16 where its products are native (judge_dtype)."""
    path = judge_spec(spec)
    check_memory(path)
    if dtype is None:
        dtype = judge_dtype(pick_device(device), quantize)
    llm = load(path, device=device, dtype=dtype, quantize=quantize)
    llm.check_language_model()
    if not llm.tokenizer.chat_template:
        raise GptlabError(
            f"{spec}: has no chat template, so it is no instruction (chat) model; a judge must "
            "be one (e.g. --judge qwen2.5-coder-1.5b)"
        )
    return LocalJudge(llm, prompt_format("chat", llm.tokenizer), spec)


# ---- the protocols ----------------------------------------------------------------------------


def judge_score(judge: LocalJudge, entries: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    """`score`: the greedy reply to the book's prompt, parsed; asked once more with the
    stricter prompt when it is no integer from 0 to 100."""
    records: list[dict[str, Any]] = [{"score": None, "replies": []} for _ in entries]
    for suffix in ("", STRICT_SUFFIX):
        todo = [i for i, r in enumerate(records) if r["score"] is None]
        if not todo:
            break
        prompts = [judge.chat_ids(score_prompt(entries[i]) + suffix) for i in todo]
        s = Sampling(max_new_tokens=SCORE_TOKENS, stop_ids=(judge.fmt.end_id,))
        tok = judge.llm.tokenizer
        for i, ids in zip(todo, generate(judge.llm.model, prompts, s, tokenizer=tok), strict=True):
            reply = tok.decode(ids)
            records[i]["replies"].append(reply)
            records[i]["score"] = parse_score(reply)
    return records


def score_strings(judge: LocalJudge) -> list[list[int]]:
    """The token ids of every complete score reply "0" ... "100"."""
    return [judge.reply_ids(str(s)) for s in range(101)]


def judge_expected(judge: LocalJudge, entries: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    """`expected`: the probability-weighted mean of the score replies (module docstring). The
    prompts' common beginning (chat template, the book's first words) runs once."""
    replies = score_strings(judge)
    model = judge.llm.model
    prompts = [judge.chat_ids(score_prompt(e)) for e in entries]
    prefix = Prefix(model, common_prefix(prompts))
    trees = (score_tree(model, Request(ids, replies), prefix) for ids in prompts)
    return [expected_record(tree) for tree in trees]


def expected_record(scores: Sequence[Score]) -> dict[str, Any]:
    """From the Scores of the replies "0" ... "100": the score (None below MIN_MASS), the mean
    and the mass it is taken over, and the reply greedy decoding gives when it is one of them
    (None: greedy decoding says something else)."""
    p = torch.tensor([s.logprob for s in scores], dtype=torch.float64).exp()
    mass = float(p.sum())
    mean = float((p * torch.arange(len(p), dtype=torch.float64)).sum()) / mass if mass else None
    greedy = next((i for i, s in enumerate(scores) if s.greedy), None)
    return {
        "score": mean if mass >= MIN_MASS else None,
        "mean": mean,
        "mass": mass,
        "greedy": greedy,
    }


def pairwise_prompt(entry: dict[str, str], a: str, b: str) -> str:
    given = f"Input:\n{entry['input']}\n\n" if entry.get("input") else ""
    return PAIRWISE_PROMPT.format(
        instruction=entry["instruction"], input=given, output=entry["output"], a=a, b=b
    )


def judge_pairwise(
    judge: LocalJudge, pairs: Sequence[tuple[dict[str, str], dict[str, str]]]
) -> list[dict[str, Any]]:
    """`pairwise`: for each (first, second) entry, the order-averaged log-odds that the first's
    response is the better one (module docstring)."""
    letters = [judge.llm.tokenizer.encode(x, add_bos=False) for x in ("A", "B")]
    requests = []
    for first, second in pairs:
        x, y = first["model_response"], second["model_response"]
        for a, b in ((x, y), (y, x)):
            requests.append(Request(judge.chat_ids(pairwise_prompt(first, a, b)), letters))
    scores = score_requests(judge.llm.model, requests)
    records = []
    for i in range(len(pairs)):
        d1, d2 = (s[0].logprob - s[1].logprob for s in scores[2 * i : 2 * i + 2])
        records.append({"verdict": (d1 - d2) / 2, "orders": [d1, d2]})
    return records


# ---- journaled runs -----------------------------------------------------------------------------


def pair_key(first: dict[str, str], second: dict[str, str]) -> str:
    """Ties a stored verdict to the exact two entries it compared."""
    both = (entry_key(first) + entry_key(second)).encode()
    return hashlib.sha256(both).hexdigest()[:16]


def journaled(
    path: Path,
    keys: list[str],
    judge_id: str,
    run: Callable[[list[int]], list[dict[str, Any]]],
    batch: int,
) -> list[dict[str, Any]]:
    """One record per key, from the journal at `path` where it holds one made by `judge_id`
    for that key, else from `run(indices)`, called `batch` at a time and journaled at once."""
    done: dict[int, dict[str, Any]] = {}
    for record in read_jsonl(path):
        i = record.get("index") if isinstance(record, dict) else None
        if (
            isinstance(i, int)
            and 0 <= i < len(keys)
            and (record.get("judge"), record.get("key")) == (judge_id, keys[i])
        ):
            done[i] = record
    todo = [i for i in range(len(keys)) if i not in done]
    bar = tqdm(total=len(keys), initial=len(done), desc=f"judging {path.name}", unit="entry")
    try:
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            for i, record in zip(chunk, run(chunk), strict=True):
                done[i] = {"index": i, "judge": judge_id, "key": keys[i], **record}
                append_jsonl(path, done[i])
            bar.update(len(chunk))
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped; the judgements so far are in {path}, rerun the same command to continue"
        ) from None
    finally:
        bar.close()
    return [done[i] for i in range(len(keys))]


# ---- gptlab evaluate ----------------------------------------------------------------------------

PROTOCOL_RUNS = {"score": judge_score, "expected": judge_expected}


def evaluate(config: JudgeConfig) -> dict[str, Any]:
    """`gptlab evaluate`: in-process when --judge names a model, else the server (gptlab.judge);
    results.json names the judge and the protocol."""
    if config.protocol not in JUDGE_PROTOCOLS:
        raise GptlabError(f"--protocol {config.protocol!r}: choose {', '.join(JUDGE_PROTOCOLS)}")
    if config.judge is None:
        if config.protocol != "score":
            raise GptlabError(
                f"--protocol {config.protocol} reads the judge's probabilities, which a "
                "server's chat API does not give: name an in-process judge with --judge"
            )
        return evaluate_responses(config)
    load_responses(config.responses)  # a bad file fails before the judge loads
    if config.protocol == "pairwise":
        if config.compare is None:
            raise GptlabError("--protocol pairwise compares two responses files: add --compare")
        load_responses(config.compare)
    judge = load_judge(config.judge, config.device.device, quantize=config.device.quantize)
    if config.protocol == "pairwise":
        return evaluate_pairwise(config, judge)
    protocol = PROTOCOL_RUNS[config.protocol]
    judge_id = f"{judge.name} ({config.protocol}, {judge.weights})"

    def scorer(path: Path) -> tuple[list[dict], list[dict]]:
        entries = load_responses(path)
        keys = [entry_key(e) for e in entries]

        def run(ids: list[int]) -> list[dict[str, Any]]:
            return protocol(judge, [entries[i] for i in ids])

        return entries, journaled(config.scores_path(path), keys, judge_id, run, config.batch_size)

    return evaluate_responses(config, scorer, judge.name, {"judge_weights": judge.weights})


def evaluate_pairwise(config: JudgeConfig, judge: LocalJudge) -> dict[str, Any]:
    """The responses file against --compare's, entry by entry: verdicts journaled, the second
    file's win rate with its interval, a table in comparison.md."""
    assert config.responses is not None and config.compare is not None
    first, second = load_responses(config.responses), load_responses(config.compare)
    check_same_entries(config, first, second)
    run = RunDir(config.out_path())
    run.prepare(config.to_json(), True)
    keys = [pair_key(a, b) for a, b in zip(first, second, strict=True)]
    judged = journaled(
        config.scores_path(config.responses),
        keys,
        f"{judge.name} (pairwise)",
        lambda ids: judge_pairwise(judge, [(first[i], second[i]) for i in ids]),
        config.batch_size,
    )
    verdicts = [r["verdict"] for r in judged]
    margin = config.tie_margin
    ties = sum(abs(v) <= margin for v in verdicts)
    b_wins = sum(v < -margin for v in verdicts)
    results: dict[str, Any] = {
        "task": "evaluate",
        "judge": judge.name,
        "judge_weights": judge.weights,
        "protocol": "pairwise",
        "responses": str(config.responses),
        "compare": {
            "a": str(config.responses),
            "b": str(config.compare),
            "n": len(verdicts),
            "a_wins": len(verdicts) - ties - b_wins,
            "b_wins": b_wins,
            "ties": ties,
            "tie_margin": margin,
            "mean_verdict": sum(verdicts) / len(verdicts) if verdicts else None,
            **win_rate(b_wins, ties, len(verdicts)),
        },
    }
    rows = [f"| # | instruction | verdict (> 0: {config.responses.name}) |", "|---|---|---|"]
    rows += [f"| {i} | {table_text(first[i])} | {v:+.2f} |" for i, v in enumerate(verdicts)]
    atomic_write_text(run.path / "comparison.md", "\n".join(rows) + "\n")
    run.log({"kind": "judge", **results})
    atomic_write_json(run.path / "results.json", results)
    return results
