"""Start `gptlab serve` as a real subprocess on a free loopback port (shared by the serve and
judge tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from gptlab.checkpoints import save_model
from gptlab.config import GPTConfig
from gptlab.model import GPT

SRC = Path(__file__).resolve().parents[1] / "src"
# gpt-nano's shape with room for a judge prompt: 1.7M parameters, mostly embeddings.
TINY = GPTConfig(context_length=512, emb_dim=32, n_layers=2, n_heads=2)


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A random model whose weights are large enough that different prompts lead to different
    greedy texts (GPT-2's small init makes every prompt repeat one token)."""
    torch.manual_seed(seed)
    model = GPT(TINY)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return save_model(model, folder)


def gptlab_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gptlab", *args]


def gptlab_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC)}


@contextmanager
def served(
    model_dir: Path | None, *extra: str, name: str = "tiny", log: list[str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yield (base URL, process); the server is stopped with SIGTERM afterwards. Its output
    lines after the start are appended to `log` when given. No `model_dir`: a server without a
    model (`extra` then names --runs)."""
    model = ["--model", str(model_dir), "--name", name] if model_dir is not None else []
    cmd = gptlab_command(
        "serve",
        *model,
        "--port",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    )
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=gptlab_env()
    )
    try:
        deadline = time.monotonic() + 90
        line = ""
        while "serving" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"gptlab serve exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("gptlab serve did not start within 90 s")
        url = line.split(" at ")[1].split()[0]

        # Keep reading its output so a chatty server never blocks on a full pipe.
        def drain() -> None:
            for out in proc.stdout:
                if log is not None:
                    log.append(out)

        threading.Thread(target=drain, daemon=True).start()
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
