"""`gptlab serve`: serve a model over Ollama's and OpenAI's REST APIs, with a web page at /
(a chat with the model; with --runs, a browser of run folders)."""

from __future__ import annotations

import torch

from gptlab.errors import GptlabError
from gptlab.llm import load
from gptlab.serve.server import run_server
from gptlab.settings import ServeConfig


def run(c: ServeConfig) -> int:
    if not c.model and c.runs is None:
        raise GptlabError("give --model (a model to serve), --runs DIR (runs to browse), or both")
    if c.runs is not None and not c.runs.is_dir():
        raise GptlabError(f"--runs {c.runs}: not a folder")
    what = " and ".join(x for x in (c.model, c.runs and f"the runs in {c.runs}") if x)

    def ready(url: str) -> None:
        print(f"serving {what} at {url} (Ctrl-C or SIGTERM stops)", flush=True)

    if c.threads:
        torch.set_num_threads(c.threads)
    model = load(c.model, **c.device.load_options()) if c.model else None
    run_server(
        model,
        c.host,
        c.port,
        c.name,
        c.limits,
        c.device.device,
        on_ready=ready,
        runs=c.runs,
        api_key=c.api_key,
    )
    return 0
