"""Throughput and latency of `gptlab serve` under concurrent streaming clients, on loopback.

Starts `gptlab serve` as a subprocess on a free 127.0.0.1 port, then for each client count N
runs N threads that each stream R requests to /api/generate (greedy, a fixed number of new
tokens, distinct prompts), and reports per N: aggregate generated tokens/s, request latency
(median and p95), and time to first token. The peer is the same generation done in this
process with `gptlab.generation.generate`, one request after another, with the same thread
count: the ratio says what HTTP, streaming and the server's scheduling cost or gain.

    PYTHONPATH=src python benchmarks/serve_load.py                      # gpt-micro, random
    PYTHONPATH=src python benchmarks/serve_load.py --model runs/x --clients 1 2 4 8

Everything stops by itself: each request has a timeout and the server gets SIGTERM at the end.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from gptlab.checkpoints import save_model
from gptlab.config import get_preset
from gptlab.generation import generate
from gptlab.hub import resolve_model
from gptlab.model import GPT
from gptlab.settings import Sampling
from gptlab.tokenizer import encode


def start_server(model: Path, threads: int, max_tokens: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "gptlab", "serve", "--model", str(model), "--name", "bench",
           "--port", "0", "--device", "cpu", "--threads", str(threads),
           "--max-tokens", str(max_tokens), "--max-queue", "256"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = ""
    while "serving" not in line:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise SystemExit(f"gptlab serve exited with {proc.returncode}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, line.split(" at ")[1].split()[0]


def one_request(url: str, prompt: str, n_tokens: int) -> tuple[float, float, int]:
    """(latency s, time to first token s, tokens generated) of one streamed request."""
    body = {"model": "bench", "prompt": prompt, "options": {"temperature": 0,
            "num_predict": n_tokens}}  # fmt: skip
    t0 = time.perf_counter()
    first, count = None, 0
    with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=300) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            chunk = json.loads(line)
            if first is None:
                first = time.perf_counter() - t0
            if chunk.get("done"):
                count = chunk["eval_count"]
    return time.perf_counter() - t0, first or 0.0, count


def load(url: str, clients: int, per_client: int, n_tokens: int) -> dict[str, float]:
    results: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(per_client):
            out = one_request(url, f"Client {c} asks question {r}:", n_tokens)
            with lock:
                results.append(out)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies = sorted(r[0] for r in results)
    return {
        "tokens_per_s": sum(r[2] for r in results) / wall,
        "latency_p50": statistics.median(latencies),
        "latency_p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "ttft_p50": statistics.median(r[1] for r in results),
    }


def direct(model: GPT, n_requests: int, n_tokens: int) -> float:
    """Tokens/s of the same greedy generations in process, one after another."""
    s = Sampling(max_new_tokens=n_tokens, stop_ids=(), on_context_full="stop")
    prompts = [encode(f"Client 0 asks question {r}:") for r in range(n_requests)]
    t0 = time.perf_counter()
    total = sum(len(generate(model, [p], s)[0]) for p in prompts)
    return total / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="default: random gpt-micro")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--requests", type=int, default=4, help="per client")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, server and peer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            torch.manual_seed(0)
            model_dir = save_model(GPT(get_preset("gpt-micro")), Path(tmp) / "gpt-micro")
        model, _ = resolve_model(model_dir)
        proc, url = start_server(model_dir, args.threads, args.tokens)
        try:
            one_request(url, "warm up", 4)
            direct(model, 1, 4)
            peer = direct(model, args.requests, args.tokens)
            size = f"{model.num_params() / 1e6:.1f}M parameters"
            print(f"model {model_dir} ({size}), {args.tokens} new tokens per request, "
                  f"{args.threads} torch thread(s)")  # fmt: skip
            print(f"in-process generate, sequential: {peer:8.1f} tokens/s")
            print(f"{'clients':>7} {'tokens/s':>9} {'vs direct':>9} {'p50 latency':>12} "
                  f"{'p95 latency':>12} {'p50 first token':>16}")  # fmt: skip
            for n in args.clients:
                r = load(url, n, args.requests, args.tokens)
                print(f"{n:>7} {r['tokens_per_s']:>9.1f} {r['tokens_per_s'] / peer:>8.2f}x "
                      f"{r['latency_p50']:>11.2f}s {r['latency_p95']:>11.2f}s "
                      f"{r['ttft_p50']:>15.3f}s")  # fmt: skip
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
