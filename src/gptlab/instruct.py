"""Instruction fine-tuning: Alpaca-style data, padded batches, training, and saved responses.

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

Training reuses gptlab.training.train (AdamW, warm-up, clipping, accumulation, checkpoints,
resume), on all weights or on LoRA adapters; the final model is saved merged, as a plain model
folder with its tokenizer and prompt format ("template" in its config.json). `respond`
writes a response for every entry of a data file, saving progress as it goes so that a rerun
continues where an interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from gptlab import distributed, text
from gptlab.checkpoints import save_model
from gptlab.data import ResumableBatches, bundled
from gptlab.device import pick_device
from gptlab.errors import GptlabError, Interrupted
from gptlab.generation import generate, trim_at_stop
from gptlab.hub import base_with_tokenizer, resolve_with_tokenizer
from gptlab.io import append_jsonl, atomic_write_json, read_jsonl, read_utf8
from gptlab.jobs.base import Plan, Session, TrainingJob
from gptlab.lora import apply_lora, merge_lora
from gptlab.model import GPT, IGNORE_INDEX
from gptlab.prompts import STOP_STRINGS, format_prompt
from gptlab.runs import MODEL
from gptlab.settings import PROMPT_FORMATS, InstructConfig, Sampling
from gptlab.text import Tokenizer
from gptlab.tokenizer import EOT_ID
from gptlab.training import TrainResult, perplexity

log = logging.getLogger("gptlab")

BUNDLED_DATA = "instruction-data.json"
# Train / validation / test fractions; the test part is int(0.10 n), validation the rest.
SPLIT = (0.85, 0.05, 0.10)

# ---- data ------------------------------------------------------------------------------------


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
    text = read_utf8(path)
    entries: list[Any]
    if text.lstrip().startswith("["):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GptlabError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        for i, entry in enumerate(entries):
            _check_entry(entry, f"{path}: entry {i}", require_output)
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
            _check_entry(entry, where, require_output)
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
        the chat template's user turn and assistant header."""
        tok = self.tokenizer
        if self.name == "alpaca":
            return tok.encode(entry_prompt(entry), allow_special=False)
        content = user_message(entry)
        rendered = tok.render_chat([{"role": "user", "content": content}])
        return _encode_rendered(tok, rendered, [content])

    def sampling(self, sampling: Sampling) -> Sampling:
        """Alpaca answers also stop at a new `###` section; chat ones at the end of the turn
        (the tokenizer's stop ids, which generation uses by default)."""
        return instruct_sampling(sampling) if self.name == "alpaca" else sampling


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
    tok = fmt.tokenizer
    prompt = fmt.prompt_ids(entry)
    response = tok.encode(entry["output"], allow_special=False, add_bos=False)
    if fmt.between:
        response += tok.encode(fmt.between, add_bos=False)
    return prompt + response, len(prompt)


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


# ---- fine-tuning -----------------------------------------------------------------------------


def training_texts(c: InstructConfig) -> list[str]:
    """The formatted training entries, split exactly as the job splits them (what a base
    model may pretrain on: never a validation or test entry)."""
    train_entries, _, _ = split_entries(load_entries(c.data), c.train.seed)
    return [entry_prompt(e) + e["output"] for e in train_entries]


def finetune_instruct(
    c: InstructConfig, resume: bool = False, stop_after: int | None = None
) -> dict[str, Any]:
    """Fine-tune `c.base` on instruction data in run folder `c.out`; returns results.json
    ({} unless this process finished the run; see gptlab.jobs.base). Also writes the test
    split as RUN/test.json and the merged model as RUN/model."""
    return InstructionTuning(c).run(resume, stop_after)


class InstructionTuning(TrainingJob[InstructConfig]):
    task = "instruct"
    loss_title = "instruction fine-tuning loss"

    def prepare(self, s: Session) -> dict[str, Any]:
        c = self.c
        entries = load_entries(c.data)
        self.train_entries, self.val_entries, self.test_entries = split_entries(
            entries, c.train.seed
        )
        self.source = str(c.data or f"bundled {BUNDLED_DATA}")
        if not self.train_entries or not self.val_entries:  # no batch size would help
            raise GptlabError(
                f"{self.source}: too few entries ({len(entries)}): the 85/5/10 split leaves "
                f"{len(self.train_entries)} for training and {len(self.val_entries)} for "
                "validation (at least one each)"
            )
        with distributed.main_first():  # rank 0 downloads and converts a pretrained base
            self.model, self.tokenizer = base_with_tokenizer(
                c.base, c.preset, c.train.seed, str(s.device)
            )
        self.format = prompt_format(c.prompt_format, self.tokenizer)
        context = self.model.cfg.context_length
        self.max_length = c.max_length or context
        if not 2 <= self.max_length <= context:
            raise GptlabError(f"--max-length must be between 2 and the context {context}")
        t = c.train
        self.train_ds = InstructionDataset(self.train_entries, self.format)
        val_ds = InstructionDataset(self.val_entries, self.format)
        lengths = self.train_ds.lengths(self.max_length)
        collate_fn = partial(
            collate,
            max_length=self.max_length,
            mask_prompt=c.mask_prompt,
            end_id=self.format.end_id,
            pad_id=self.tokenizer.pad_id,
        )
        pin = s.device.type == "cuda" and c.speed.pin_memory
        plain = ResumableBatches(
            self.train_ds,
            t.batch_size,
            shuffle=True,
            seed=t.seed,
            collate_fn=collate_fn,
            pin_memory=pin,
        )
        grouped = LengthGroupedBatches(
            self.train_ds, lengths, t.batch_size, t.seed, collate_fn=collate_fn, pin_memory=pin
        )
        self.train_batches = grouped if c.group_by_length else plain
        self.val_batches = ResumableBatches(
            val_ds, t.batch_size, shuffle=False, drop_last=False, collate_fn=collate_fn
        )
        self.padding = {
            "plain": padding_fraction(plain.epoch_batches(0), lengths),
            "grouped": padding_fraction(grouped.epoch_batches(0), lengths),
        }
        self.steps_per_epoch = max(1, self.train_batches.per_epoch // t.grad_accum)
        self.lora = None
        if c.lora_rank is not None:
            torch.manual_seed(t.seed)
            adapters = apply_lora(self.model, c.lora_rank, c.lora_alpha, c.lora_targets)
            self.lora = {
                "rank": c.lora_rank,
                "alpha": c.lora_alpha,
                "targets": list(c.lora_targets),
            }
            log.info("LoRA: %s adapter parameters", f"{adapters:,}")
        self.trainable = self.model.num_params(trainable_only=True)
        return {
            "model": self.model.cfg.to_dict(),
            "data": {
                "source": self.source,
                "train": len(self.train_entries),
                "val": len(self.val_entries),
                "test": len(self.test_entries),
                "steps_per_epoch": self.steps_per_epoch,
                "max_length": self.max_length,
                "padding_fraction": self.padding,
            },
        }

    def build(self, s: Session) -> Plan:
        if s.d.is_main:
            atomic_write_json(s.run.path / "test.json", self.test_entries)
        t = self.c.train
        max_steps = t.max_steps or t.epochs * self.steps_per_epoch
        meta = {"task": "lm", "template": self.format.name, "lora": self.lora}
        return Plan(
            self.model,
            self.train_batches,
            self.val_batches,
            max_steps,
            meta,
            tokenizer=self.tokenizer,
        )

    def on_eval(self, s: Session, plan: Plan, step: int) -> None:
        entry = self.val_entries[0]
        sampling = Sampling(max_new_tokens=self.c.sample_tokens)
        answer = generate_responses(plan.model, [entry], sampling, self.format)[0]
        if s.d.is_main:
            s.run.add_sample(step, f"{entry['instruction']!r} -> {answer!r}")
        plan.model.train()

    def plots(self, s: Session) -> None:
        s.run.plot(
            "loss.png",
            {
                "train (per step)": ("train", "loss"),
                "train": ("eval", "train_loss"),
                "validation": ("eval", "val_loss"),
            },
            "cross-entropy loss",
            self.loss_title,
        )

    def results(
        self, s: Session, plan: Plan, result: TrainResult, weights: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        c, model = self.c, plan.model
        if self.lora is not None:
            merge_lora(model)
            weights = {}  # the merged model's own state, without adapters
        model_dir = save_model(
            model,
            s.run.path / MODEL,
            {"task": "lm", "template": self.format.name},
            weights or None,
            tokenizer=self.tokenizer,
        )
        return {
            "task": "instruct",
            "base": c.base,
            "model": str(model_dir),
            "test_data": str(s.run.path / "test.json"),
            "steps": result.step,
            "tokens_seen": result.tokens_seen,
            "train_loss": result.train_loss,
            "val_loss": result.val_loss,
            "val_ppl": perplexity(result.val_loss),
            "train_seconds": result.seconds,
            "tokens_per_s": result.tokens_seen / max(result.seconds, 1e-9),
            "examples": {
                "train": len(self.train_ds),
                "val": len(self.val_entries),
                "test": len(self.test_entries),
            },
            "padding_fraction": self.padding["grouped" if c.group_by_length else "plain"],
            "padding_fraction_plain": self.padding["plain"],
            "padding_fraction_grouped": self.padding["grouped"],
            "trainable_params": self.trainable,
            "total_params": model.num_params(),
            "lora": self.lora,
        }


# ---- responses -------------------------------------------------------------------------------


def instruct_sampling(sampling: Sampling) -> Sampling:
    """`sampling` that also stops where the model starts a new `###` section."""
    stops = tuple(dict.fromkeys((*sampling.stop_strings, *STOP_STRINGS)))
    return dataclasses.replace(sampling, stop_strings=stops)


def generate_responses(
    model: GPT,
    entries: Sequence[dict[str, Any]],
    sampling: Sampling,
    fmt: PromptFormat | None = None,
) -> list[str]:
    """The response to each entry (one batch) prompted in format `fmt` (default: GPT-2's
    Alpaca), cut at a stop and stripped."""
    fmt = fmt if fmt is not None else prompt_format()
    s = fmt.sampling(sampling)
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
    model_spec: str, data_path: Path, sampling: Sampling, prompt_format: str | None = None
) -> dict[str, Any]:
    """What a progress file was made from; a rerun only continues one with the same header."""
    header = {
        "model": str(model_spec),
        "data_sha256": hashlib.sha256(data_path.read_bytes()).hexdigest(),
        "sampling": asdict(instruct_sampling(sampling)),
        "prompt_format": prompt_format,
    }
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
) -> Path:
    """Write `out_path`: the entries of `data_path`, each with a `model_response`, prompted in
    `prompt_format` (None: the model's own, see `model_prompt_format`) through the model's
    tokenizer. Responses are appended to OUT.progress.jsonl batch by batch (prompts of similar
    length together), so a rerun after an interruption only generates the missing ones; the
    final JSON is written atomically and the progress file then removed."""
    if batch_size < 1:
        raise GptlabError(f"batch size must be positive, got {batch_size}")
    entries = load_entries(data_path, require_output=False)
    s = instruct_sampling(sampling)
    header = progress_header(model_spec, data_path, s, prompt_format)
    progress = progress_path(out_path)
    done = _read_progress(progress, header, len(entries))
    todo = [i for i in range(len(entries)) if i not in done]
    if todo:
        dev = pick_device(device)
        model, meta, tokenizer = resolve_with_tokenizer(model_spec, device=str(dev))
        model.to(dev).eval()
        fmt = model_prompt_format(meta, tokenizer, prompt_format)
        todo.sort(key=lambda i: len(entry_prompt(entries[i])))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if not read_jsonl(progress):
            append_jsonl(progress, header)
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
    atomic_write_json(out_path, [{**e, "model_response": done[i]} for i, e in enumerate(entries)])
    progress.unlink(missing_ok=True)
    return out_path


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
