"""--gradient-checkpointing is live inside the training step of every job that offers it, and it
cuts what a step keeps for backward.

Regression: finetune-instruct's flag was spelled `grad_checkpointing` in its config and
`gradient_checkpointing` in the loop's, so the loop never saw it and reset the model's flag:
the flag did nothing. Now every training verb takes the one SpeedFlags group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.utils.checkpoint

from gptlab.cli import main
from gptlab.config import GPTConfig
from gptlab.model import GPT


@pytest.fixture
def checkpoint_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records each call of torch.utils.checkpoint.checkpoint (and whether autograd was on),
    passing it through to the real function."""
    calls: list[bool] = []
    real = torch.utils.checkpoint.checkpoint

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(torch.is_grad_enabled())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    return calls


def _tiny_instructions(path: Path) -> Path:
    entries = [
        {"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."}
        for i in range(12)
    ]
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def _tiny_spam(path: Path) -> Path:
    rows = [f"ham\thello friend number {i}" for i in range(12)]
    rows += [f"spam\tWIN a prize now {i}" for i in range(12)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _verb_args(verb: str, tmp_path: Path) -> list[str]:
    tmp_path.mkdir(exist_ok=True)
    common = ["--out", str(tmp_path / verb), "--device", "cpu", "--max-steps", "2"]
    if verb == "pretrain":
        corpus = tmp_path / "c.txt"
        corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
        return [verb, "--corpus", str(corpus), "--preset", "gpt-nano", "--context", "16",
                "--sample-tokens", "2", *common]  # fmt: skip
    if verb == "finetune-instruct":
        data = _tiny_instructions(tmp_path / "i.json")
        return [verb, "--base", "random", "--preset", "gpt-nano", "--data", str(data),
                "--batch-size", "2", "--eval-batches", "1", "--sample-tokens", "2",
                *common]  # fmt: skip
    data = _tiny_spam(tmp_path / "s.tsv")
    return [verb, "--base", "random", "--preset", "gpt-nano", "--data", str(data),
            "--trainable", "all", "--batch-size", "4", *common]  # fmt: skip


@pytest.mark.parametrize("verb", ["pretrain", "finetune-instruct", "finetune-classifier"])
def test_the_flag_is_live_in_every_training_step(
    verb: str, tmp_path: Path, checkpoint_calls: list[bool]
) -> None:
    assert main(_verb_args(verb, tmp_path)) == 0
    assert not checkpoint_calls  # off by default
    assert main([*_verb_args(verb, tmp_path / "on"), "--gradient-checkpointing"]) == 0
    # gpt-nano has 2 blocks; 2 training steps, each with autograd on, checkpoint every block
    assert sum(checkpoint_calls) >= 2 * 2, checkpoint_calls


def _saved_bytes(model: GPT, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward during one forward pass with targets."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, targets=x).backward()
    return total


def test_checkpointing_keeps_far_less_for_backward() -> None:
    torch.manual_seed(0)
    # a small vocabulary, so that the blocks' activations, not the logits, dominate
    model = GPT(GPTConfig(vocab_size=256, context_length=64, emb_dim=64, n_layers=4, n_heads=4))
    model.train()
    x = torch.randint(0, 256, (4, 64))
    plain = _saved_bytes(model, x)
    model.gradient_checkpointing = True
    checkpointed = _saved_bytes(model, x)
    assert checkpointed < 0.5 * plain, (checkpointed, plain)  # measured: 0.13
