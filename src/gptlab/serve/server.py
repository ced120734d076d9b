"""`gptlab serve`'s server: uvicorn running the app on a socket bound beforehand."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.llm import LLM
from gptlab.model import Decoder
from gptlab.serve.app import create_app
from gptlab.settings import ServeLimits

log = logging.getLogger("gptlab")

DEFAULT_PORT = 11434  # Ollama's, so Ollama clients and `gptlab evaluate` find it unchanged


def bind(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn, so port 0 (any free port) can be reported to the user."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GptlabError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock


def run_server(
    model_spec: Decoder | LLM | str | Path | None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    name: str | None = None,
    limits: ServeLimits | None = None,
    device: str = "cpu",
    on_ready: Callable[[str], None] | None = None,
    runs: Path | None = None,
    api_key: str | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; uvicorn then stops accepting, lets running requests
    finish for a few seconds, and the worker thread is joined. `runs` and `api_key`: see
    gptlab.serve.web."""
    import uvicorn

    app = create_app(model_spec, name, limits, device, runs=runs, api_key=api_key)
    sock = bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(url)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal for the handler that
    # was there before it; this one makes that a normal exit (status 0), not a kill.
    previous = signal.signal(signal.SIGTERM, lambda *_: log.info("stopped on SIGTERM"))
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
