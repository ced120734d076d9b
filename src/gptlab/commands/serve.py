"""`gptlab serve`: serve a model over Ollama's and OpenAI's REST APIs."""

from __future__ import annotations

import torch

from gptlab.device import pick_device
from gptlab.serve.server import run_server
from gptlab.settings import ServeConfig


def run(c: ServeConfig) -> int:
    def ready(url: str) -> None:
        print(f"serving {c.model} at {url} (Ctrl-C or SIGTERM stops)", flush=True)

    if c.threads:
        torch.set_num_threads(c.threads)
    device = str(pick_device(c.device.device))
    run_server(c.model, c.host, c.port, c.name, c.limits, device, on_ready=ready)
    return 0
