"""Instruction data: Alpaca-style entries, their prompt formats, and the padded batches
instruction fine-tuning trains on.

Data is a JSON list or JSON Lines of {"instruction", "input" (optional), "output"} objects
(default: the bundled 1,100-entry instruction-data.json), split 85/5/10 in a seeded order.
Entries go through the base model's own tokenizer (gptlab.text; GPT-2's for GPT-2 models) in
one of two prompt formats (`PromptFormat`): "alpaca", the Alpaca prompt (gptlab.prompts)
followed by the output, then the tokenizer's end-of-text; or "chat", the tokenizer's chat
template with the entry as one user turn and the output as the assistant's reply, ended by
the template's end-of-turn token. Prompt and output are tokenized separately so the
prompt/response boundary is exact, and the entries' own text never becomes a special token.

A batch is padded (with the tokenizer's pad id) only to its own longest sequence. Targets are
the inputs shifted by one; padding targets are -100 (ignored by the loss) except the first end
token, which teaches the model to stop. `mask_prompt` also ignores the targets inside the
prompt (the chat template's markup included), so only the response is learned.
Length-grouped batching puts sequences of similar length together to cut padding.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from gptlab import text
from gptlab.data import ResumableBatches, bundled
from gptlab.errors import GptlabError
from gptlab.io import read_utf8
from gptlab.model import IGNORE_INDEX
from gptlab.prompts import format_prompt
from gptlab.settings import PROMPT_FORMATS, InstructConfig
from gptlab.text import Tokenizer
from gptlab.tokenizer import EOT_ID

log = logging.getLogger("gptlab")

BUNDLED_DATA = "instruction-data.json"
# Train / validation / test fractions; the test part is int(0.10 n), validation the rest.
SPLIT = (0.85, 0.05, 0.10)


def _check_entry(entry: Any, where: str, require_output: bool) -> None:
    if not isinstance(entry, dict):
        raise GptlabError(f"{where}: expected an object, got {type(entry).__name__}")
    required = ("instruction", "output") if require_output else ("instruction",)
    for name in ("instruction", "input", "output"):
        if name not in entry:
            if name in required:
                raise GptlabError(f"{where}: field '{name}' is missing")
            continue
        value = entry[name]
        if not isinstance(value, str):
            raise GptlabError(
                f"{where}: field '{name}' must be a string, got {type(value).__name__}"
            )
        if name != "input" and not value.strip():
            raise GptlabError(f"{where}: field '{name}' is empty")


def _refuse_one_object(path: Path, text: str) -> None:
    """A whole file that is one JSON object over several lines is no JSON Lines (one object per
    line): say so, instead of reporting its first line as broken JSON."""
    if "\n" not in text.strip():
        return  # one line: a JSON Lines file of one entry
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return
    if isinstance(data, dict):
        keys = ", ".join(repr(k) for k in list(data)[:3]) or "none"
        raise GptlabError(
            f"{path}: is one JSON object (keys {keys}), not a list of entries; expected a JSON "
            'list [{"instruction": ..., "output": ...}, ...] or JSON Lines (one object per line)'
        )


def load_entries(path: Path | None, require_output: bool = True) -> list[dict[str, Any]]:
    """Validated entries of a JSON list or JSON Lines file (None: the bundled data). Errors name
    the file, the 0-based entry index (and line, for JSON Lines) and the field."""
    if path is None:
        with bundled(BUNDLED_DATA) as p:
            return load_entries(p, require_output)
    return read_records(path, partial(_check_entry, require_output=require_output))


def read_records(path: Path, check: Callable[[Any, str], None]) -> list[Any]:
    """The objects of a JSON list or JSON Lines file, each passed to `check(record, where)`
    (where: the file, the 0-based entry index, and the line for JSON Lines), which raises
    GptlabError for a bad one; an empty file is one error too."""
    text = read_utf8(path)
    entries: list[Any]
    if text.lstrip().startswith("["):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GptlabError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        for i, entry in enumerate(entries):
            check(entry, f"{path}: entry {i}")
    else:
        _refuse_one_object(path, text)
        entries = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}: entry {len(entries)}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GptlabError(f"{where}: not valid JSON ({exc.msg})") from None
            check(entry, where)
            entries.append(entry)
    if not entries:
        raise GptlabError(f"{path}: holds no entries")
    return entries


def split_entries(
    entries: Sequence[dict[str, Any]], seed: int, fractions: tuple[float, float, float] = SPLIT
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation, test) after a seeded shuffle: 1,100 entries give 935 / 55 / 110."""
    g = torch.Generator().manual_seed(seed)
    shuffled = [entries[i] for i in torch.randperm(len(entries), generator=g).tolist()]
    n_train = int(len(shuffled) * fractions[0])
    n_test = int(len(shuffled) * fractions[2])
    n_val = len(shuffled) - n_train - n_test
    return shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :]


def entry_prompt(entry: dict[str, Any]) -> str:
    return format_prompt(entry["instruction"], entry.get("input", ""))


def user_message(entry: dict[str, Any]) -> str:
    """An entry as one chat turn: the instruction, then its input after a blank line."""
    input_text = entry.get("input", "")
    return f"{entry['instruction']}\n\n{input_text}" if input_text else entry["instruction"]


def _encode_rendered(tokenizer: Tokenizer, rendered: str, texts: Sequence[str]) -> list[int]:
    """Ids of a rendered chat template whose own markup (<|im_start|>...) becomes special
    tokens while the message `texts`, found in order, stay plain text. Special tokens split
    the text anyway, so this equals encoding the whole rendering when the texts spell none.
    A text the template changed (not found verbatim) is read as template markup."""
    ids: list[int] = []
    pos = 0
    for piece in texts:
        at = rendered.find(piece, pos) if piece else -1
        if at < 0:
            continue
        ids += tokenizer.encode(rendered[pos:at], add_bos=False)
        ids += tokenizer.encode(piece, allow_special=False, add_bos=False)
        pos = at + len(piece)
    return ids + tokenizer.encode(rendered[pos:], add_bos=False)


@dataclass(frozen=True)
class PromptFormat:
    """How instruction entries become token ids for one tokenizer. `end_id` ends every
    response (what the model learns to stop on); `between` is the template's text between
    the output and that token ("" for the templates gptlab knows)."""

    name: str
    tokenizer: Tokenizer
    end_id: int
    between: str = ""

    def prompt_ids(self, entry: dict[str, Any]) -> list[int]:
        """The prompt the model answers: Alpaca's (with bos where the tokenizer adds one) or
        the chat template's user turn and assistant header (or, for an entry holding
        "messages", that conversation's turns; gptlab.preferences reads those)."""
        tok = self.tokenizer
        if self.name == "alpaca":
            return tok.encode(entry_prompt(entry), allow_special=False)
        messages = entry.get("messages") or [{"role": "user", "content": user_message(entry)}]
        rendered = tok.render_chat(messages)
        return _encode_rendered(tok, rendered, [m["content"] for m in messages])

    def response_ids(self, response: str) -> list[int]:
        """A response's ids after its prompt, up to (not including) the end token that the
        collate function adds."""
        tok = self.tokenizer
        ids = tok.encode(response, allow_special=False, add_bos=False)
        return ids + (tok.encode(self.between, add_bos=False) if self.between else [])


def prompt_format(name: str = "alpaca", tokenizer: Tokenizer | None = None) -> PromptFormat:
    """The `name` format ("alpaca" or "chat") for `tokenizer` (default GPT-2's). "chat" needs a
    chat template; its end token is the one the template closes an assistant turn with, found
    by rendering a probe conversation. A template whose two-turn rendering does not start
    with its prompt rendering (or closes the turn with no stop token) gets prompt + output +
    eos instead, with a warning."""
    tok = tokenizer if tokenizer is not None else text.gpt2()
    if name not in PROMPT_FORMATS:
        raise GptlabError(f"unknown prompt format {name!r}; choose {' or '.join(PROMPT_FORMATS)}")
    if name == "alpaca":
        return PromptFormat(name, tok, tok.eos_id)
    if tok.chat_template is None:
        raise GptlabError(
            f"{tok.name}: the tokenizer has no chat template; use --prompt-format alpaca"
        )
    user, answer = {"role": "user", "content": "Hi."}, "Hello."
    prompt = tok.render_chat([user])
    full = tok.render_chat([user, {"role": "assistant", "content": answer}], False)
    rest = full[len(prompt) :]
    if full.startswith(prompt) and rest.startswith(answer):
        ends = {tok.decode([i]): i for i in tok.stop_ids}
        found = [(rest.find(t), t) for t in ends if rest.find(t) >= len(answer)]
        if found:
            at, token = min(found)
            return PromptFormat(name, tok, ends[token], rest[len(answer) : at])
    log.warning(
        "%s: the chat template's prompt + answer does not start with its prompt and end the "
        "turn with a stop token; responses are learned as the prompt + output + eos",
        tok.name,
    )
    return PromptFormat(name, tok, tok.eos_id)


def tokenize_entry(entry: dict[str, Any], fmt: PromptFormat | None = None) -> tuple[list[int], int]:
    """(prompt + response token ids, number of prompt tokens) in format `fmt` (default: GPT-2's
    Alpaca). Text that spells `<|endoftext|>` or another special token stays plain text: only
    the collate function adds the real end token."""
    fmt = fmt if fmt is not None else prompt_format()
    prompt = fmt.prompt_ids(entry)
    return prompt + fmt.response_ids(entry["output"]), len(prompt)


class InstructionDataset(Dataset):
    """Tokenized entries; item i is (ids, n_prompt) for the collate function."""

    def __init__(self, entries: Sequence[dict[str, Any]], fmt: PromptFormat | None = None) -> None:
        self.items = [tokenize_entry(e, fmt) for e in entries]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.items[i]

    def lengths(self, max_length: int) -> list[int]:
        return [min(len(ids), max_length) for ids, _ in self.items]


def collate(
    batch: Sequence[tuple[list[int], int]],
    max_length: int | None = None,
    mask_prompt: bool = False,
    end_id: int = EOT_ID,
    pad_id: int = EOT_ID,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), both (B, T) with T = the batch's longest sequence, at most
    `max_length`. Row b is seq = ids + [end_id]: inputs = seq[:-1] padded with `pad_id`,
    targets = seq[1:] (whose last item is the one kept end token) padded with -100; with
    `mask_prompt`, the targets that are prompt tokens are -100 too. GPT-2 ends and pads with
    <|endoftext|>; other tokenizers end with their format's end token and pad with their pad."""
    width = max(len(ids) for ids, _ in batch)
    if max_length is not None:
        width = min(width, max_length)
    inputs = torch.full((len(batch), width), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(batch):
        seq = torch.tensor([*ids, end_id], dtype=torch.long)
        n = min(len(ids), width)
        inputs[row, :n] = seq[:n]
        targets[row, :n] = seq[1 : n + 1]
        if mask_prompt:
            targets[row, : n_prompt - 1] = IGNORE_INDEX
    return inputs, targets


class LengthGroupedBatches(ResumableBatches):
    """Training batches of similar lengths, to cut padding. Each epoch: a seeded shuffle, cut
    into pools of `pool_batches` batches, each pool sorted by length and cut into batches,
    then the batches shuffled. Like its parent, the order depends only on (seed, epoch)."""

    def __init__(
        self,
        dataset: Dataset,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        pool_batches: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, batch_size, shuffle=True, seed=seed, drop_last=True, **kwargs)
        self.lengths = lengths
        self.pool = pool_batches * batch_size

    def epoch_batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        b = self.batch_size
        order = torch.randperm(len(self.lengths), generator=g).tolist()[: self.per_epoch * b]
        batches = []
        for i in range(0, len(order), self.pool):
            pool = sorted(order[i : i + self.pool], key=lambda j: -self.lengths[j])
            batches += [pool[k : k + b] for k in range(0, len(pool), b)]
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return shuffled[start:]


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """The share of input positions that are padding when each batch is padded to its longest
    (already truncated) length."""
    real = total = 0
    for batch in batches:
        lens = [lengths[i] for i in batch]
        real += sum(lens)
        total += max(lens) * len(lens)
    return 1.0 - real / max(total, 1)


def training_texts(c: InstructConfig) -> list[str]:
    """The formatted training entries, split exactly as the job splits them (what a base
    model may pretrain on: never a validation or test entry)."""
    train_entries, _, _ = split_entries(load_entries(c.data), c.train.seed)
    return [entry_prompt(e) + e["output"] for e in train_entries]
