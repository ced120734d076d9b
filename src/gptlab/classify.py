"""Classification fine-tuning: turn a GPT into an N-way text classifier (SMS spam by default).

Data: labelled texts (the bundled UCI SMS Spam Collection, a user TSV/CSV, or the UCI zip on
request), balanced by downsampling every class to the smallest one (seeded), split 70/10/20,
encoded with the base model's tokenizer (GPT-2's for GPT-2 models; a GGUF file's or a folder's
tokenizer.json for the Llama family) and right-padded per batch with its pad id (GPT-2's
`<|endoftext|>`). The class is read from the output at each sequence's last real token: with
causal attention and right padding that position has seen the whole text and none of the
padding, at the same positions (rotary or learned) as the text alone.

Model: a base decoder of either family (pretrained name, GGUF file, Hugging Face or gptlab
folder, run folder, or random) whose vocabulary head is replaced by an N-way linear layer
(config n_classes = N, so the saved classifier reloads like any model folder, with the base's
tokenizer beside it). Only the last block(s), the final norm (LayerNorm or RMSNorm) and the
head train by default; `all` and LoRA are options.

Speed: when the frozen blocks have no dropout, their output for a text never changes, so it is
computed once ("cached prefix") and the epochs train only the tail on those hidden states. The
loop is gptlab.training.train (atomic checkpoints, exact resume, SIGINT), evaluated once per
epoch (or every --eval-interval steps); the best model by validation accuracy is kept in
RUN/model and scored on the test split.

From scratch (`base="random"`), a random model knows no language; `pretrain_on_texts` first
pretrains it with gptlab.pretrain on the unlabelled in-domain text that training may see (the
training texts and the texts left out by balancing, never validation or test).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import time
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from gptlab import distributed
from gptlab import text as text_tokenizers
from gptlab.checkpoints import build_model, load_model_folder, read_config, save_model
from gptlab.data import ResumableBatches, bundled
from gptlab.device import autocast
from gptlab.download import download_file
from gptlab.errors import GptlabError
from gptlab.families import Model
from gptlab.hub import base_with_tokenizer
from gptlab.io import atomic_write, atomic_write_text, read_utf8
from gptlab.jobs.base import Plan, Session, TrainingJob
from gptlab.llama import Llama
from gptlab.lora import apply_lora, merge_lora
from gptlab.pretrain import pretrain
from gptlab.runs import MODEL, has_run, is_complete
from gptlab.settings import TRAINABLE, ClassifierConfig, PretrainConfig, TrainArgs
from gptlab.tokenizer import EOT_ID
from gptlab.training import TrainResult

SMS_SPAM = "SMSSpamCollection"
UCI_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
UCI_ZIP_SHA256 = "e0c5bd54da721b0058bfecedfd96dc0be0a323366ca99d4d694817493f47be90"
SMS_SPAM_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"

Example = tuple[str, int]  # (text, label index)


# ---- data -------------------------------------------------------------------------------------


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


def read_labelled(path: Path, labels: tuple[str, ...] | None = None) -> LabelledData:
    """Labelled texts from a TSV/CSV with a label and a text column: either a header naming
    `label` and `text` columns, or no header and label first, text second (the UCI format).
    Label names come from the file (sorted) unless `labels` fixes them."""
    rows = _rows(path, read_utf8(path))
    if not rows:
        raise GptlabError(f"{path}: no data rows")
    header = [h.strip().lower() for h in rows[0][1]]
    if "label" in header and "text" in header:
        label_col, text_col = header.index("label"), header.index("text")
        n_fields, rows = len(header), rows[1:]
    else:
        label_col, text_col, n_fields = 0, 1, 2
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
    split: str,
    pad_to: int | None = None,
    pad_id: int = EOT_ID,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """A batch (inputs, last index, labels, split name); token ids pad with `pad_id` (the
    tokenizer's; GPT-2's <|endoftext|> by default), hidden states with zeros (causal attention
    never lets the last real position see them)."""
    seqs = [seq for seq, _ in items]
    x, last = pad_batch(seqs, pad_id if seqs[0].dim() == 1 else 0.0, pad_to)
    return x, last, torch.tensor([label for _, label in items]), split


# ---- model ------------------------------------------------------------------------------------


def classifier_from(base: Model, n_classes: int, dropout: float, seed: int) -> Model:
    """`base` with its output head replaced by a fresh N-way linear layer (seeded init)."""
    cfg = base.cfg.replace(n_classes=n_classes, drop_rate=dropout)
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("out_head.")}
    g = torch.Generator().manual_seed(seed)
    state["out_head.weight"] = torch.randn(n_classes, cfg.emb_dim, generator=g) * 0.02
    state["out_head.bias"] = torch.zeros(n_classes)
    return build_model(cfg, state, "classifier")


def set_trainable(model: Model, mode: str, k: int = 1, rank: int = 8, alpha: float = 16.0) -> int:
    """Freeze the model, then unfreeze per `mode`: the last block (or `k` blocks) with the final
    norm (GPT-2's LayerNorm, Llama's RMSNorm) and the head; everything; or LoRA adapters on
    every block plus the head. Returns the number of leading blocks that stay frozen (the
    cacheable prefix)."""
    if mode not in TRAINABLE:
        raise GptlabError(f"unknown trainable mode {mode!r}; choose one of {', '.join(TRAINABLE)}")
    n_layers = model.cfg.n_layers
    if mode == "all":
        model.requires_grad_(True)
        return 0
    if mode == "lora":
        apply_lora(model, rank, alpha)
        model.out_head.requires_grad_(True)
        return 0
    k = 1 if mode == "last-block" else k
    if not 1 <= k <= n_layers:
        raise GptlabError(f"cannot train the last {k} blocks of a {n_layers}-block model")
    model.requires_grad_(False)
    for module in (*model.blocks[n_layers - k :], model.final_norm, model.out_head):
        module.requires_grad_(True)
    return n_layers - k


def _block_args(model: Model, h: torch.Tensor) -> tuple[Any, ...]:
    """What a block takes besides its input `h` (B, T, D) at positions 0..T-1: a Llama's
    rotary cos/sin; nothing for GPT-2, whose positions are in its embeddings."""
    if isinstance(model, Llama):
        pos = torch.arange(h.shape[1], device=h.device)[None, :]
        return (model.rotary(pos, h.dtype),)
    return ()


def prefix_states(model: Model, ids: torch.Tensor, stop: int) -> torch.Tensor:
    """Hidden states after the embeddings and blocks[:stop] (no final norm)."""
    x = model.tok_emb(ids)
    if not isinstance(model, Llama):
        x = x + model.pos_emb(torch.arange(ids.shape[1], device=ids.device)[None, :])
    x = model.drop_emb(x)
    extra = _block_args(model, x)
    for block in model.blocks[:stop]:
        x = block(x, *extra)
    return x


def tail_logits(model: Model, h: torch.Tensor, last: torch.Tensor, start: int) -> torch.Tensor:
    """Class logits from hidden states entering blocks[start:], read at the last real token."""
    extra = _block_args(model, h)
    for block in model.blocks[start:]:
        h = block(h, *extra)
    h = h[torch.arange(len(h), device=h.device), last]
    return model.out_head(model.final_norm(h))


def class_logits(
    model: Model, x: torch.Tensor, last: torch.Tensor, start: int | None = None
) -> torch.Tensor:
    """Logits (B, N): from token ids through the whole model (`start` None), or from cached
    hidden states entering block `start`."""
    if start is not None:
        return tail_logits(model, x, last, start)
    return model(x, select=last)  # through forward, so that a DDP wrapper sees it


@torch.no_grad()
def cache_prefix(
    model: Model,
    data: ClassificationDataset,
    stop: int,
    device: torch.device,
    batch_size: int = 32,
    pad_id: int = EOT_ID,
) -> ClassificationDataset:
    """The same examples with each text replaced by the frozen prefix's hidden states
    (computed on batches right-padded with `pad_id`)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))  # little padding per batch
    states: dict[int, torch.Tensor] = {}
    for b in range(0, len(order), batch_size):
        rows = order[b : b + batch_size]
        x, last = pad_batch([data[i][0] for i in rows], pad_id)
        h = prefix_states(model, x.to(device), stop).float().cpu()
        for j, i in enumerate(rows):
            states[i] = h[j, : int(last[j]) + 1].clone()
    model.train(was_training)
    return ClassificationDataset([(states[i], data[i][1]) for i in range(len(data))])


class ClassificationLoss:
    """The loss function for gptlab.training.train (mean cross-entropy per example). In eval
    mode it also counts correct predictions per split, so the epoch-end evaluation that train()
    runs gives accuracy without a second pass over the data."""

    def __init__(self, start: int | None) -> None:
        self.start = start
        self.tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        x, last, y, split_name = batch
        logits = class_logits(model, x, last, self.start)  # type: ignore[arg-type]
        if not model.training:
            counts = self.tally[split_name]
            counts[0] += int((logits.argmax(-1) == y).sum())
            counts[1] += len(y)
        return F.cross_entropy(logits.float(), y), len(y)

    def accuracy(self, split_name: str) -> float:
        correct, total = self.tally.pop(split_name, [0, 0])
        return correct / max(total, 1)


@torch.no_grad()
def predict_proba(
    model: Model,
    seqs: list[torch.Tensor],
    device: torch.device,
    batch_size: int = 32,
    precision: str = "auto",
    pad_id: int = EOT_ID,
) -> torch.Tensor:
    """Class probabilities (len(seqs), N) for token-id sequences, in their order; batches group
    sequences of similar length, right-padded with `pad_id`."""
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    probs = torch.empty(len(seqs), model.cfg.n_classes or 0)
    for b in range(0, len(order), batch_size):
        rows = order[b : b + batch_size]
        x, last = pad_batch([seqs[i] for i in rows], pad_id)
        with autocast(device, precision):
            logits = class_logits(model, x.to(device), last.to(device))
        probs[rows] = torch.softmax(logits.float(), dim=-1).cpu()
    return probs


def classify_texts(
    model: Model,
    texts: list[str],
    device: torch.device,
    batch_size: int = 32,
    max_length: int | None = None,
    tokenizer: text_tokenizers.Tokenizer | None = None,
) -> list[tuple[int, float]]:
    """(label index, probability) per text, encoded by the classifier's `tokenizer` (default
    GPT-2's) and cut to `max_length` tokens as in training."""
    tok = tokenizer if tokenizer is not None else text_tokenizers.gpt2()
    seqs = []
    for i, text in enumerate(texts):
        seq = encode_text(text, max_length or model.cfg.context_length, tok)
        if len(seq) == 0:
            raise GptlabError(f"text {i + 1} is empty")
        seqs.append(seq)
    probs = predict_proba(model, seqs, device, batch_size, pad_id=tok.pad_id)
    best, label = probs.max(dim=-1)
    return [(int(i), float(p)) for i, p in zip(label, best, strict=True)]


def metrics(y_true: torch.Tensor, y_pred: torch.Tensor, labels: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (of the positive class, index 1, for two classes;
    macro-averaged over classes otherwise) and the confusion matrix [true][predicted]."""
    n = len(labels)
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((y_true, y_pred), torch.ones_like(y_true), accumulate=True)
    tp = confusion.diag().double()
    precision_c = tp / confusion.sum(0).double().clamp_min(1)
    recall_c = tp / confusion.sum(1).double().clamp_min(1)
    f1_c = 2 * precision_c * recall_c / (precision_c + recall_c).clamp_min(1e-12)
    pick = (lambda t: float(t[1])) if n == 2 else (lambda t: float(t.mean()))
    return {
        "accuracy": float(tp.sum() / confusion.sum()),
        "precision": pick(precision_c),
        "recall": pick(recall_c),
        "f1": pick(f1_c),
        "averaging": f"positive class {labels[1]!r}" if n == 2 else "macro",
        "confusion_matrix": confusion.tolist(),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f)}
            for name, p, r, f in zip(labels, precision_c, recall_c, f1_c, strict=True)
        },
    }


# ---- the job ----------------------------------------------------------------------------------


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
        data = read_labelled(c.data, c.labels)
    kept, left_out = balance(data.examples, c.train.seed) if c.balance else (data.examples, [])
    return Splits(data.labels, *split(kept, c.train.seed), left_out, len(data.examples))


def _pretrain_on_texts(c: ClassifierConfig, texts: list[str], device: torch.device) -> Model:
    """Next-token pretraining of a random `preset` model on `texts` in RUN/pretrain (resumable;
    skipped when finished)."""
    out = c.out / "pretrain"
    corpus = out / "corpus.txt"
    if not is_complete(out):
        resume = has_run(out)
        if not resume and distributed.current().is_main:
            atomic_write_text(corpus, "<|endoftext|>".join(texts))
        distributed.barrier()
        p = c.pretrain
        config = PretrainConfig(
            out=out,
            corpus=corpus,
            preset=c.preset,
            context=p.context,
            dropout=p.dropout,
            sample_prompt="Hey",
            train=TrainArgs(
                max_steps=p.steps,
                batch_size=p.batch_size,
                lr=p.lr,
                warmup_steps=min(100, p.steps // 10),
                # one evaluation, at the end: each pass over all windows costs ~1/3 epoch
                eval_interval=p.steps,
                keep_checkpoints=c.train.keep_checkpoints,
                seed=c.train.seed,
            ),
            speed=c.speed,
            runtime=c.runtime.replace(device=str(device)),
        )
        pretrain(config, resume=resume)
        distributed.barrier()  # rank 0 writes the model folder after the others return
    model, _ = load_model_folder(out / MODEL)
    return model


def _save_classifier(
    model: Model,
    path: Path,
    meta: dict[str, Any],
    tokenizer: text_tokenizers.Tokenizer | None = None,
) -> None:
    """Save as a plain model folder with the base's tokenizer (none written for GPT-2's);
    LoRA adapters are merged into a copy first."""
    if any(name.endswith("lora_a") for name, _ in model.named_parameters()):
        model = merge_lora(copy.deepcopy(model))
    save_model(model, path, meta, tokenizer=tokenizer)


def finetune_classifier(
    c: ClassifierConfig, resume: bool = False, stop_after: int | None = None
) -> dict[str, Any]:
    """Run (or resume) a classification fine-tuning job in `c.out`; returns results.json
    ({} unless this process finished the run; see gptlab.jobs.base)."""
    return ClassifierTraining(c).run(resume, stop_after)


class ClassifierTraining(TrainingJob[ClassifierConfig]):
    """Evaluated once per epoch, or every `eval_interval` steps when one is given; the best
    model by validation accuracy is kept in RUN/model and scored on the test split at the
    end."""

    task = "classify"
    loss_title = "classification loss"

    def prepare(self, s: Session) -> dict[str, Any]:
        c = self.c
        self.wall_start = time.perf_counter()
        self.data = data = load_splits(c)
        # a bad --base fails here, before the run folder exists; rank 0 downloads it first
        with distributed.main_first():
            self.base, self.tokenizer = (
                (None, text_tokenizers.gpt2())  # pretraining tokenizes with GPT-2's
                if c.pretrain_on_texts
                else base_with_tokenizer(c.base, c.preset, c.train.seed)
            )
        counts = Counter(label for _, label in data.train + data.val + data.test)
        return {
            "labels": list(data.labels),
            "data": {
                "examples": data.n_examples,
                "per_label": {data.labels[i]: n for i, n in sorted(counts.items())},
                "left_out_by_balancing": len(data.left_out),
                "train": len(data.train),
                "val": len(data.val),
                "test": len(data.test),
            },
        }

    def build(self, s: Session) -> Plan:
        c, data = self.c, self.data
        base = self.base or _pretrain_on_texts(c, data.unlabelled_texts(), s.device)
        self.base = None
        model = classifier_from(base, len(data.labels), c.dropout, c.train.seed)
        del base
        frozen = set_trainable(model, c.trainable, c.trainable_blocks, c.lora_rank, c.lora_alpha)
        max_length = min(c.max_length or model.cfg.context_length, model.cfg.context_length)
        model.to(s.device)
        self.datasets = datasets = {
            name: ClassificationDataset.from_texts(ex, max_length, self.tokenizer)
            for name, ex in (("train", data.train), ("val", data.val), ("test", data.test))
        }
        pad_to = datasets["train"].longest() if c.pad_to_longest else None
        # The cached tail runs outside the model's forward, where a DDP wrapper would not see it.
        self.cached = c.cache_prefix and frozen > 0 and c.dropout == 0.0 and s.d.world == 1
        if self.cached:
            for name in ("train", "val"):
                datasets[name] = cache_prefix(
                    model, datasets[name], frozen, s.device, pad_id=self.tokenizer.pad_id
                )

        def batches(name: str, shuffle: bool) -> ResumableBatches:
            return ResumableBatches(
                datasets[name],
                c.train.batch_size,
                shuffle=shuffle,
                seed=c.train.seed,
                drop_last=shuffle,
                collate_fn=partial(
                    collate, split=name, pad_to=pad_to, pad_id=self.tokenizer.pad_id
                ),
            )

        train_batches, val_batches = batches("train", True), batches("val", False)
        self.per_epoch = per_epoch = train_batches.per_epoch
        # evaluated once per epoch unless --eval-interval says otherwise
        eval_interval = c.train.eval_interval or per_epoch
        log_interval = min(c.train.log_interval, per_epoch)
        self.c = c.replace(
            train=c.train.replace(eval_interval=eval_interval, log_interval=log_interval)
        )
        self.meta = {"task": "classify", "labels": list(data.labels), "max_length": max_length}
        self.loss_fn = ClassificationLoss(frozen if self.cached else None)
        self.best_path = s.run.path / MODEL
        self.best = (
            read_config(self.best_path)["val_acc"] if s.resume and self.best_path.is_dir() else -1.0
        )
        self.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return Plan(
            model,
            train_batches,
            val_batches,
            c.train.max_steps or c.train.epochs * per_epoch,
            meta=self.meta,
            loss_fn=self.loss_fn,
            language_model=False,
        )

    def on_eval(self, s: Session, plan: Plan, step: int) -> None:
        # Every process evaluates the same batches, so the tallies agree.
        train_acc, val_acc = self.loss_fn.accuracy("train"), self.loss_fn.accuracy("val")
        if not s.d.is_main:
            return
        epoch = step / self.per_epoch
        s.run.log(
            {
                "kind": "accuracy",
                "step": step,
                "epoch": epoch,
                "train_acc": train_acc,
                "val_acc": val_acc,
            }
        )
        tqdm.write(f"epoch {epoch:g}: train acc {train_acc:.3f}, val acc {val_acc:.3f}")
        if val_acc > self.best:
            self.best = val_acc
            meta = {**self.meta, "step": step, "val_acc": val_acc}
            _save_classifier(plan.model, self.best_path, meta, self.tokenizer)

    def plots(self, s: Session) -> None:
        super().plots(s)
        s.run.plot(
            "accuracy.png",
            {"train": ("accuracy", "train_acc"), "validation": ("accuracy", "val_acc")},
            "accuracy",
            "classification accuracy",
        )

    def results(
        self, s: Session, plan: Plan, result: TrainResult, weights: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        c, data = self.c, self.data
        best_model, best_meta = load_model_folder(self.best_path, device=str(s.device))
        test = self.datasets["test"]
        seqs = [seq for seq, _ in test.items]
        probs = predict_proba(
            best_model, seqs, s.device, precision=c.runtime.precision, pad_id=self.tokenizer.pad_id
        )
        y_true = torch.tensor([label for _, label in test.items])
        scores = metrics(y_true, probs.argmax(-1), data.labels)
        return {
            "task": "classify",
            "labels": list(data.labels),
            "test_accuracy": scores.pop("accuracy"),
            **scores,
            "best_val_accuracy": best_meta["val_acc"],
            "best_epoch": best_meta["step"] / self.per_epoch,
            "epochs": c.train.epochs,
            "n_train": len(data.train),
            "n_val": len(data.val),
            "n_test": len(data.test),
            "trainable": c.trainable,
            "trainable_params": self.trainable_params,
            "cached_prefix": self.cached,
            "train_seconds": result.seconds,
            "wall_seconds": time.perf_counter() - self.wall_start,
        }
