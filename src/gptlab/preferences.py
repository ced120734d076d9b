"""Preference pairs and the DPO objective: what preference tuning (gptlab.jobs.preference)
trains on and minimises.

A pair is a prompt with two responses, one `chosen` over the other, `rejected`. Files are a
JSON list or JSON Lines (read as instruction data is, gptlab.instructions) in one of two
shapes: the book's, {"instruction", "input" (optional), "chosen", "rejected"} (the bundled
1,100 pairs of the book's chapter 7 bonus material), or TRL's, {"prompt", "chosen",
"rejected"} where the prompt is a text or a list of chat messages and each response a text or
one assistant message. A prompt of one instruction (every book pair, a TRL prompt of one user
turn) goes into either prompt format, Alpaca or chat; a conversation (a system message, several
turns) only into a chat template.

Pairs are tokenized in the base model's own prompt format (gptlab.instructions.PromptFormat),
chosen and rejected after the same prompt ids, and collated into one batch of 2B rows,
interleaved (chosen 0, rejected 0, chosen 1, ...: torchrun's row split keeps pairs together),
with the prompt's targets masked, so one forward pass scores both responses.

DPO (Rafailov et al. 2023): with s = log pi(response | prompt) summed over the response's
tokens for the policy and r the same for the frozen reference, the loss of a pair is
-log sigmoid(beta * ((s_chosen - r_chosen) - (s_rejected - r_rejected))); each response's
reward is beta * (s - r), and a pair counts as right when the chosen one's reward is higher.
The reference's log-probabilities of each pair are computed once, before training, and ride in
the batches (`PreferenceDataset.reference`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from gptlab.data import bundled
from gptlab.errors import GptlabError
from gptlab.instructions import PromptFormat, collate, read_records, split_entries
from gptlab.lora import adapters_off
from gptlab.model import Decoder
from gptlab.scoring import response_logprobs

BUNDLED_PAIRS = "instruction-data-with-preference.json"
ROLES = ("system", "user", "assistant")

Pair = dict[
    str, Any
]  # {"prompt": an instruction entry or {"messages": [...]}, "chosen", "rejected"}


def _text(value: Any, where: str, name: str) -> str:
    """A field that must be a non-empty string."""
    if not isinstance(value, str):
        raise GptlabError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise GptlabError(f"{where}: field '{name}' is empty")
    return value


def _messages(value: Any, where: str, name: str) -> list[dict[str, str]]:
    """A list of chat messages, each {"role": system/user/assistant, "content": text}."""
    if not isinstance(value, list) or not value:
        raise GptlabError(f"{where}: field '{name}' must be a text or a list of chat messages")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise GptlabError(
                f"{where}: {name}[{k}] must be a message with a role ({', '.join(ROLES)})"
            )
        out.append({"role": m["role"], "content": _text(m.get("content"), where, f"{name}[{k}]")})
    return out


def _response(value: Any, where: str, name: str) -> str:
    """A response: a text, or TRL's list of one assistant message."""
    if not isinstance(value, list):
        return _text(value, where, name)
    messages = _messages(value, where, name)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise GptlabError(f"{where}: field '{name}' must hold one assistant message")
    return messages[0]["content"]


def _prompt(record: dict[str, Any], where: str) -> dict[str, Any]:
    """The prompt as an instruction entry (one instruction) or {"messages": [...]}."""
    if "instruction" in record:
        entry = {"instruction": _text(record["instruction"], where, "instruction")}
        if record.get("input"):
            entry["input"] = _text(record["input"], where, "input")
        return entry
    if "prompt" not in record:
        raise GptlabError(
            f"{where}: no prompt: expected 'instruction' (and 'input') or 'prompt' (a text or "
            "chat messages)"
        )
    if not isinstance(record["prompt"], list):
        return {"instruction": _text(record["prompt"], where, "prompt")}
    messages = _messages(record["prompt"], where, "prompt")
    if messages[-1]["role"] != "user":
        raise GptlabError(f"{where}: the prompt's last message must be the user's")
    if len(messages) == 1:
        return {"instruction": messages[0]["content"]}
    return {"messages": messages}


def parse_pair(record: Any, where: str, allow_same: bool = False) -> Pair:
    """One record of a pairs file as a Pair; a missing or empty field, or (unless
    `allow_same`) the same response chosen and rejected, is one GptlabError naming `where`
    (file and entry)."""
    if not isinstance(record, dict):
        raise GptlabError(f"{where}: expected an object, got {type(record).__name__}")
    for name in ("chosen", "rejected"):
        if name not in record:
            raise GptlabError(f"{where}: field '{name}' is missing")
    pair = {
        "prompt": _prompt(record, where),
        "chosen": _response(record["chosen"], where, "chosen"),
        "rejected": _response(record["rejected"], where, "rejected"),
    }
    if same_responses(pair) and not allow_same:
        raise GptlabError(
            f"{where}: 'chosen' and 'rejected' are the same response, so there is nothing to "
            "prefer; remove the entry or give it two different responses"
        )
    return pair


def same_responses(pair: Pair) -> bool:
    return bool(pair["chosen"].strip() == pair["rejected"].strip())


def load_pairs(path: Path | None) -> list[Pair]:
    """The pairs of a file, checked (see `parse_pair`); None: the bundled pairs, 6 of which
    have the same response chosen and rejected (`split_pairs` leaves those out)."""
    if path is None:
        with bundled(BUNDLED_PAIRS) as p:
            return [
                parse_pair(r, f"{BUNDLED_PAIRS}: entry {i}", allow_same=True)
                for i, r in enumerate(read_records(p, lambda record, where: None))
            ]
    pairs: list[Pair] = []
    read_records(path, lambda record, where: pairs.append(parse_pair(record, where)))
    return pairs


def split_pairs(pairs: Sequence[Pair], seed: int) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, held-out pairs): the seeded 85/5/10 split of instruction data
    (gptlab.instructions.split_entries), its last 10% held out, less any pair with nothing to
    prefer. The bundled pairs hold the bundled instructions in the same order, so with the
    same seed the held-out pairs are the instruction test split (finetune-instruct's
    RUN/test.json) that `respond` answers: preference tuning never trains on them."""
    train, val, test = split_entries(pairs, seed)
    return [p for p in train + val if not same_responses(p)], [
        p for p in test if not same_responses(p)
    ]


def check_format(pairs: Iterable[Pair], fmt: PromptFormat, source: str) -> None:
    """A conversation fits only a chat template: in Alpaca's, one GptlabError."""
    if fmt.name == "chat":
        return
    for i, pair in enumerate(pairs):
        if "messages" in pair["prompt"]:
            raise GptlabError(
                f"{source}: entry {i} is a conversation (a system message or several turns), "
                "but the base was tuned in the Alpaca template, which holds one instruction; "
                "give single-instruction pairs, or tune a base in its chat template "
                "(finetune-instruct --prompt-format chat)"
            )


Item = tuple[tuple[list[int], int], tuple[list[int], int], torch.Tensor]


class PreferenceDataset(Dataset):
    """Tokenized pairs; item i is ((chosen ids, n prompt), (rejected ids, n prompt), the
    reference's two log-probabilities). `reference` (N, 2) is NaN until filled."""

    def __init__(self, pairs: Sequence[Pair], fmt: PromptFormat) -> None:
        self.items = []
        for pair in pairs:
            prompt = fmt.prompt_ids(pair["prompt"])
            chosen, rejected = fmt.response_ids(pair["chosen"]), fmt.response_ids(pair["rejected"])
            self.items.append(((prompt + chosen, len(prompt)), (prompt + rejected, len(prompt))))
        self.reference = torch.full((len(self.items), 2), float("nan"))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Item:
        return (*self.items[i], self.reference[i])

    def lengths(self) -> list[int]:
        """Each pair's longer sequence."""
        return [max(len(c), len(r)) for (c, _), (r, _) in self.items]


def collate_pairs(
    batch: Sequence[Item], max_length: int | None, end_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets) (2B, T), chosen and rejected rows interleaved, prompt targets masked
    (gptlab.instructions.collate), and the reference log-probabilities (B, 2)."""
    rows = [seq for chosen, rejected, _ in batch for seq in (chosen, rejected)]
    inputs, targets = collate(rows, max_length, mask_prompt=True, end_id=end_id, pad_id=pad_id)
    return inputs, targets, torch.stack([ref for _, _, ref in batch])


def disable_dropout(model: nn.Module) -> None:
    """No dropout: the policy and the reference must score a pair alike until the policy
    learns (TRL's DPOTrainer turns it off too)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if hasattr(m, "drop_rate"):  # attention's fused dropout
            m.drop_rate = 0.0


def pair_logprobs(
    model: Decoder, module: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Each pair's summed response log-probabilities (B, 2): chosen, rejected."""
    return response_logprobs(model, module, x, y).view(-1, 2)


@torch.no_grad()
def reference_logprobs(model: Decoder, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The frozen reference's `pair_logprobs`: the model with its LoRA adapters off (its base
    weights), in evaluation mode."""
    was_training = model.training
    model.eval()
    with adapters_off(model):
        out = pair_logprobs(model, model, x, y)
    model.train(was_training)
    return out


def dpo_loss(
    policy: torch.Tensor, reference: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the mean DPO loss, the rewards beta * (policy - reference) (B, 2)) from both models'
    log-probabilities (B, 2) of (chosen, rejected)."""
    rewards = beta * (policy - reference)
    return -F.logsigmoid(rewards[:, 0] - rewards[:, 1]).mean(), rewards


class PreferenceObjective:
    """The training loss (`__call__`, a gptlab.training LossFn) and, in evaluation, the same
    loss with its tallies (gptlab.training.EvalMetrics): reward margin and accuracy, chosen and
    rejected log-probabilities, per split."""

    kind = "preference"

    def __init__(self, model: Decoder, beta: float) -> None:
        self.model, self.beta = model, beta
        self.tally: dict[str, list[torch.Tensor]] = {}

    def _loss(
        self, module: nn.Module, batch: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, reference = batch
        if bool(reference.isnan().any()):
            raise RuntimeError("a batch without its reference log-probabilities")
        policy = pair_logprobs(self.model, module, x, y)
        loss, rewards = dpo_loss(policy, reference, self.beta)
        return loss, rewards, policy

    def __call__(self, module: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        loss, _, _ = self._loss(module, batch)
        return loss, len(batch[2])

    def loss(self, module: nn.Module, batch: Any, split: str) -> tuple[torch.Tensor, int]:
        loss, rewards, policy = self._loss(module, batch)
        margin = rewards[:, 0] - rewards[:, 1]
        rows = torch.stack([margin, (margin > 0).float(), policy[:, 0], policy[:, 1]], dim=1)
        self.tally.setdefault(split, []).append(rows.detach().float().cpu())
        return loss, len(batch[2])

    def collect(self, step: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        names = ("margin", "accuracy", "chosen_logp", "rejected_logp")
        for split, rows in self.tally.items():
            means = torch.cat(rows).mean(dim=0).tolist()
            out.update({f"{split}_{name}": value for name, value in zip(names, means, strict=True)})
        self.tally.clear()
        return out
