"""Shared fixtures: tiny models and corpora so that the suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

from gptlab.cpu.memory import tune_process_memory

tune_process_memory()  # as the CLI does, before torch allocates: the suite runs faster

import pytest
import torch

from gptlab.config import GPTConfig
from gptlab.model import GPT

TINY = GPTConfig(vocab_size=50257, context_length=32, emb_dim=32, n_layers=2, n_heads=4)


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).eval()
