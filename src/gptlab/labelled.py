"""Labelled texts for classification: reading them, the SMS Spam Collection, balancing, the
splits, and the dataset and batches a classifier trains on.

Data: labelled texts (the bundled UCI SMS Spam Collection, a user TSV/CSV, or the UCI zip on
request), balanced by downsampling every class to the smallest one (seeded), split 70/10/20,
encoded with the base model's tokenizer (GPT-2's for GPT-2 models; a GGUF file's or a folder's
tokenizer.json for the Llama family) and right-padded per batch with its pad id (GPT-2's
`<|endoftext|>`), so that each row's last real token is where the classifier reads it
(gptlab.classifier).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from gptlab import text as text_tokenizers
from gptlab.data import bundled
from gptlab.download import download_file
from gptlab.errors import GptlabError
from gptlab.io import atomic_write, read_utf8
from gptlab.settings import ClassifierConfig
from gptlab.tokenizer import EOT_ID

log = logging.getLogger(__name__)

SMS_SPAM = "SMSSpamCollection"
UCI_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
UCI_ZIP_SHA256 = "e0c5bd54da721b0058bfecedfd96dc0be0a323366ca99d4d694817493f47be90"
SMS_SPAM_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"

Example = tuple[str, int]  # (text, label index)


@dataclass
class LabelledData:
    examples: list[Example]
    labels: tuple[str, ...]  # label index -> name


def _rows(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a TSV (split on tabs, no quoting: texts keep their quotes)
    or a CSV (quoted fields may span lines; the number is where the record starts)."""
    if path.suffix.lower() == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        rows, start = [], 1
        try:
            for row in reader:
                rows.append((start, row))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise GptlabError(f"{path}:{start}: malformed CSV ({exc})") from None
        return [(n, r) for n, r in rows if r]
    return [(n, line.split("\t")) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


# Column headings that name the label and the text column of a header row.
LABEL_HEADINGS = ("label", "labels", "class", "category", "sentiment", "target")
TEXT_HEADINGS = ("text", "review", "message", "sentence", "content", "document", "sms")


def _named_columns(fields: list[str]) -> tuple[int, int] | None:
    """(label column, text column) when `fields` name both with a heading, else None."""
    names = [f.strip().lower() for f in fields]
    label = next((i for i, n in enumerate(names) if n in LABEL_HEADINGS), None)
    text = next((i for i, n in enumerate(names) if n in TEXT_HEADINGS), None)
    return None if label is None or text is None else (label, text)


def _is_header(
    path: Path, rows: list[tuple[int, list[str]]], labels: tuple[str, ...] | None
) -> bool:
    """Whether the first row is a header: it names a label and a text column, or (said in one
    line, since a rare label could be meant) its label is neither among `labels` nor on any
    other row."""
    line, first = rows[0]
    if _named_columns(first):
        return True
    known = set(labels) if labels else {f[0].strip() for _, f in rows[1:]}
    if len(rows) < 3 or len(first) < 2 or first[0].strip() in known:
        return False
    log.warning(
        "%s:%d: reading %r as a header, since no other row has the label %r; "
        "--no-header reads it as data",
        path,
        line,
        ",".join(first),
        first[0].strip(),
    )
    return True


def read_labelled(
    path: Path, labels: tuple[str, ...] | None = None, header: bool | None = None
) -> LabelledData:
    """Labelled texts from a TSV/CSV with a label and a text column: label first and text
    second, or as a header names them (`label`, `sentiment`, ... and `text`, `review`, ...).
    `header` None detects the header (`_is_header`). Label names come from the file (sorted)
    unless `labels` fixes them."""
    rows = _rows(path, read_utf8(path))
    if not rows:
        raise GptlabError(f"{path}: no data rows")
    label_col, text_col, n_fields = 0, 1, 2
    if header or (header is None and _is_header(path, rows, labels)):
        label_col, text_col = _named_columns(rows[0][1]) or (0, 1)
        n_fields, rows = max(2, len(rows[0][1])), rows[1:]
        if not rows:
            raise GptlabError(f"{path}: no data rows after the header")
    raw: list[tuple[int, str, str]] = []
    for line, fields in rows:
        if len(fields) != n_fields:
            raise GptlabError(
                f"{path}:{line}: expected {n_fields} fields (label, text), found {len(fields)}"
            )
        label, text = fields[label_col].strip(), fields[text_col].strip()
        if not label:
            raise GptlabError(f"{path}:{line}: empty label")
        if not text:
            raise GptlabError(f"{path}:{line}: empty text")
        if labels is not None and label not in labels:
            raise GptlabError(
                f"{path}:{line}: unknown label {label!r}; expected one of {', '.join(labels)}"
            )
        raw.append((line, label, text))
    names = labels or tuple(sorted({label for _, label, _ in raw}))
    if len(names) < 2:
        raise GptlabError(f"{path}: needs at least two labels, found only {names[0]!r}")
    index = {name: i for i, name in enumerate(names)}
    return LabelledData([(text, index[label]) for _, label, text in raw], names)


def load_sms_spam(path: Path | None = None) -> LabelledData:
    """The SMS Spam Collection (bundled copy unless `path`), labels ham = 0, spam = 1."""
    if path is not None:
        return read_labelled(path, ("ham", "spam"))
    with bundled(SMS_SPAM) as p:
        return read_labelled(p, ("ham", "spam"))


def extract_sms_spam(zip_path: Path, dest: Path) -> Path:
    """Take SMSSpamCollection out of the UCI zip into `dest`, checking its sha256."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            data = zf.read(SMS_SPAM)
    except FileNotFoundError:
        raise GptlabError(f"{zip_path}: file not found") from None
    except zipfile.BadZipFile:
        raise GptlabError(f"{zip_path}: not a zip file") from None
    except KeyError:
        raise GptlabError(f"{zip_path}: holds no {SMS_SPAM}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != SMS_SPAM_SHA256:
        raise GptlabError(f"{zip_path}: {SMS_SPAM} has sha256 {digest}, expected {SMS_SPAM_SHA256}")
    out = dest / SMS_SPAM
    atomic_write(out, lambda p: p.write_bytes(data))
    return out


def download_sms_spam(dest: Path, url: str = UCI_URL, sha256: str = UCI_ZIP_SHA256) -> Path:
    """Download the UCI zip (sha256-checked, resumable) into `dest` and extract the collection."""
    zip_path = download_file(url, dest / "sms+spam+collection.zip", sha256=sha256)
    return extract_sms_spam(zip_path, dest)


def balance(examples: list[Example], seed: int) -> tuple[list[Example], list[Example]]:
    """Downsample every class to the size of the smallest (seeded). Returns (kept, left out),
    each in file order."""
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(examples):
        by_label[label].append(i)
    n = min(len(ids) for ids in by_label.values())
    g = torch.Generator().manual_seed(seed)
    kept: set[int] = set()
    for label in sorted(by_label):
        ids = by_label[label]
        kept.update(ids[j] for j in torch.randperm(len(ids), generator=g)[:n].tolist())
    return (
        [e for i, e in enumerate(examples) if i in kept],
        [e for i, e in enumerate(examples) if i not in kept],
    )


def split(
    examples: list[Example], seed: int, fractions: tuple[float, float] = (0.7, 0.1)
) -> tuple[list[Example], list[Example], list[Example]]:
    """Shuffle (seeded) and cut into train / validation / test (the rest)."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [examples[i] for i in order]
    n_train = int(len(shuffled) * fractions[0])
    n_val = int(len(shuffled) * fractions[1])
    parts = shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :]
    for name, part in zip(("training", "validation", "test"), parts, strict=True):
        if not part:
            raise GptlabError(f"{len(examples)} examples leave none for {name}; add more data")
    return parts


def encode_text(
    text: str, max_length: int, tokenizer: text_tokenizers.Tokenizer | None = None
) -> torch.Tensor:
    """Token ids of `text` in `tokenizer` (default GPT-2's), bos first where the tokenizer adds
    one, cut to the first `max_length` tokens. Special tokens' texts in user text (a literal
    `<|endoftext|>`) stay text, so they can never look like padding."""
    tok = tokenizer if tokenizer is not None else text_tokenizers.gpt2()
    return torch.tensor(tok.encode(text, allow_special=False)[:max_length], dtype=torch.long)


class ClassificationDataset(Dataset):
    """(sequence, label) pairs: token ids (T,), or the frozen prefix's hidden states (T, D)."""

    def __init__(self, items: list[tuple[torch.Tensor, int]]) -> None:
        self.items = items

    @classmethod
    def from_texts(
        cls,
        examples: list[Example],
        max_length: int,
        tokenizer: text_tokenizers.Tokenizer | None = None,
    ) -> ClassificationDataset:
        return cls([(encode_text(t, max_length, tokenizer), label) for t, label in examples])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.items[i]

    def longest(self) -> int:
        return max(len(seq) for seq, _ in self.items)


def pad_batch(
    seqs: list[torch.Tensor], pad_value: float, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad sequences (T_i, ...) to the longest (or `length`); returns the batch and the
    index of each row's last real position."""
    lengths = torch.tensor([len(s) for s in seqs])
    width = max(int(lengths.max()), length or 0)
    out = seqs[0].new_full((len(seqs), width, *seqs[0].shape[1:]), pad_value)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = s
    return out, lengths - 1


def collate(
    items: list[tuple[torch.Tensor, int]],
    pad_to: int | None = None,
    pad_id: int = EOT_ID,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch (inputs, last index, labels); token ids pad with `pad_id` (the tokenizer's;
    GPT-2's <|endoftext|> by default), hidden states with zeros (causal attention never lets
    the last real position see them)."""
    seqs = [seq for seq, _ in items]
    x, last = pad_batch(seqs, pad_id if seqs[0].dim() == 1 else 0.0, pad_to)
    return x, last, torch.tensor([label for _, label in items])


@dataclass
class Splits:
    labels: tuple[str, ...]
    train: list[Example]
    val: list[Example]
    test: list[Example]
    left_out: list[Example]  # dropped by balancing: usable as unlabelled text
    n_examples: int

    def unlabelled_texts(self) -> list[str]:
        """The text a model may pretrain on: training texts and those left out by balancing,
        never validation or test."""
        return [text for text, _ in self.train + self.left_out]


def load_splits(c: ClassifierConfig) -> Splits:
    """The job's data: loaded, balanced and split exactly as `finetune_classifier` does (the
    pipeline asks it for the texts a base model may pretrain on)."""
    if c.download:
        data = load_sms_spam(download_sms_spam(c.out / "data"))
    elif c.data is None:
        data = load_sms_spam()
    else:
        data = read_labelled(c.data, c.labels, c.header)
    kept, left_out = balance(data.examples, c.train.seed) if c.balance else (data.examples, [])
    return Splits(data.labels, *split(kept, c.train.seed), left_out, len(data.examples))
