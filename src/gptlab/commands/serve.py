"""`gptlab serve`: serve a model over Ollama's and OpenAI's REST APIs."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from gptlab.commands.common import add_command, positive_int
from gptlab.serve.engine import ServeLimits
from gptlab.serve.server import DEFAULT_PORT, run_server
from gptlab.training import pick_device

DEFAULTS = ServeLimits()


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "serve",
        run,
        "serve a model over the Ollama and OpenAI APIs",
        "Serve --model (a run folder, a model folder or a preset) on Ollama's /api/generate, "
        "/api/chat, /api/tags, /api/show and OpenAI's /v1/chat/completions, /v1/completions, "
        "/v1/models. Chat messages get the Alpaca instruction template. Stops on Ctrl-C or "
        "SIGTERM.",
    )
    p.add_argument("--model", required=True, help="run folder, model folder or preset")
    p.add_argument(
        "--name", default=None, help="the model's name in the API (default: folder name)"
    )
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes it to the network")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="0 picks a free port (printed at start)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for the model (default: torch's); 1 is fastest on a busy machine",
    )
    p.add_argument(
        "--max-tokens",
        type=positive_int,
        default=DEFAULTS.max_tokens,
        help="most tokens one request may generate (also the default when it sets none)",
    )
    p.add_argument("--max-body-bytes", type=positive_int, default=DEFAULTS.max_body_bytes)
    p.add_argument(
        "--max-queue",
        type=positive_int,
        default=DEFAULTS.max_queue,
        help="requests in progress at once; more are refused with 503",
    )


def run(args: argparse.Namespace) -> int:
    limits = ServeLimits(args.max_tokens, args.max_body_bytes, args.max_queue)

    def ready(url: str) -> None:
        print(f"serving {args.model} at {url} (Ctrl-C or SIGTERM stops)", flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(pick_device(args.device))
    run_server(args.model, args.host, args.port, args.name, limits, device, on_ready=ready)
    return 0
