"""A decoder as an N-way text classifier: the model side of classification, for training
(gptlab.jobs.classify) and for labelling texts (`gptlab classify`) alike.

A base decoder of either family has its vocabulary head replaced by an N-way linear layer
(config n_classes = N, so the saved classifier reloads like any model folder, with the base's
tokenizer beside it). Only the last block(s), the final norm (LayerNorm or RMSNorm) and the
head train by default; `all` and LoRA are options. The class is read from the output at each
sequence's last real token: with causal attention and right padding that position has seen
the whole text and none of the padding, at the same positions (rotary or learned) as the text
alone. When the frozen blocks have no dropout, their output for a text never changes, so it
can be computed once (`cache_prefix`) and training runs only the tail on those hidden states.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gptlab import text as text_tokenizers
from gptlab.checkpoints import build_model, save_model
from gptlab.device import autocast
from gptlab.errors import GptlabError
from gptlab.labelled import ClassificationDataset, encode_text, pad_batch
from gptlab.lora import apply_lora, merge_lora
from gptlab.model import Decoder
from gptlab.settings import TRAINABLE
from gptlab.tokenizer import EOT_ID


def classifier_from(base: Decoder, n_classes: int, dropout: float, seed: int) -> Decoder:
    """`base` with its output head replaced by a fresh N-way linear layer (seeded init)."""
    cfg = base.cfg.replace(n_classes=n_classes, drop_rate=dropout)
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("out_head.")}
    g = torch.Generator().manual_seed(seed)
    state["out_head.weight"] = torch.randn(n_classes, cfg.emb_dim, generator=g) * 0.02
    state["out_head.bias"] = torch.zeros(n_classes)
    return build_model(cfg, state, "classifier")


def set_trainable(model: Decoder, mode: str, k: int = 1, rank: int = 8, alpha: float = 16.0) -> int:
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


def prefix_states(model: Decoder, ids: torch.Tensor, stop: int) -> torch.Tensor:
    """Hidden states after the embeddings and blocks[:stop] (no final norm)."""
    x = model.embed(ids)
    extra = model.block_args(x)
    for block in model.blocks[:stop]:
        x = block(x, *extra)
    return x


def tail_logits(model: Decoder, h: torch.Tensor, last: torch.Tensor, start: int) -> torch.Tensor:
    """Class logits from hidden states entering blocks[start:], read at the last real token."""
    extra = model.block_args(h)
    for block in model.blocks[start:]:
        h = block(h, *extra)
    h = h[torch.arange(len(h), device=h.device), last]
    return model.out_head(model.final_norm(h))


def class_logits(
    model: Decoder, x: torch.Tensor, last: torch.Tensor, start: int | None = None
) -> torch.Tensor:
    """Logits (B, N): from token ids through the whole model (`start` None), or from cached
    hidden states entering block `start`."""
    if start is not None:
        return tail_logits(model, x, last, start)
    return model(x, select=last)  # through forward, so that a DDP wrapper sees it


@torch.no_grad()
def cache_prefix(
    model: Decoder,
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


@torch.no_grad()
def predict_proba(
    model: Decoder,
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
    model: Decoder,
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


def uselessness(confusion: list[list[int]], labels: Sequence[str]) -> str | None:
    """Why a classifier with this test confusion matrix [true][predicted] learned nothing
    usable, or None: it predicts one class for every text (of a test set holding several), or
    its accuracy is within chance, at most the majority-class rate plus two of its standard
    errors, sqrt(p(1 - p)/n) (a constant guess scores p; two errors are what luck gives)."""
    n = sum(map(sum, confusion))
    if sum(1 for row in confusion if sum(row)) < 2:
        return None  # a test set of one class cannot tell a classifier from a constant
    predicted = [sum(row[j] for row in confusion) for j in range(len(labels))]
    if max(predicted) == n:
        return f"it predicts {labels[predicted.index(n)]!r} for all {n} test texts"
    majority = max(sum(row) for row in confusion) / n
    accuracy = sum(confusion[i][i] for i in range(len(labels))) / n
    margin = 2 * math.sqrt(majority * (1 - majority) / n)
    if accuracy <= majority + margin:
        return (
            f"its test accuracy {accuracy:.3f} is within chance: the majority class alone "
            f"scores {majority:.3f}, and {n} test texts make {margin:.3f} more luck"
        )
    return None


def save_classifier(
    model: Decoder,
    path: Path,
    meta: dict[str, Any],
    tokenizer: text_tokenizers.Tokenizer | None = None,
) -> None:
    """Save as a plain model folder with the base's tokenizer (none written for GPT-2's);
    LoRA adapters are merged into a copy first."""
    if any(name.endswith("lora_a") for name, _ in model.named_parameters()):
        model = merge_lora(copy.deepcopy(model))
    save_model(model, path, meta, tokenizer=tokenizer)
