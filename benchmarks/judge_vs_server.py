"""Does the in-process `score` protocol give what the same judge gives behind a server? The
judge is served with `gptlab serve` (OpenAI's API) and asked over HTTP as `gptlab evaluate
--url` asks any server; then the same responses are judged in-process; both on the same
weights (`--quantize`, the GGUF's own blocks by default). Prints the agreement: equal scores,
scores within 5 points, and the rest.

    PYTHONPATH=src python benchmarks/judge_vs_server.py --responses a.json --responses b.json --n 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from gptlab.judge_local import evaluate
from gptlab.judge_model import judge_spec
from gptlab.settings import JudgeConfig


def serve(judge: str, quantize: str, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gptlab", "serve", "--model", judge, "--name", "judge"]
    proc = subprocess.Popen([*cmd, "--port", str(port), "--quantize", quantize])
    for _ in range(600):
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).raise_for_status()
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise SystemExit("gptlab serve exited before it was ready") from None
            time.sleep(1)
    proc.kill()
    raise SystemExit("gptlab serve did not start within 10 minutes")


def scores(results_dir: Path, responses: Path) -> list[float | None]:
    lines = (results_dir / f"{responses.stem}.scores.jsonl").read_text().splitlines()
    records = sorted((json.loads(x) for x in lines), key=lambda r: r["index"])
    return [r["score"] for r in records]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", default="qwen2.5-coder-1.5b")
    ap.add_argument("--responses", type=Path, action="append", required=True)
    ap.add_argument("--n", type=int, default=20, help="entries of each responses file")
    ap.add_argument("--quantize", default="int4")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    judge = str(judge_spec(args.judge))
    tmp = Path(tempfile.mkdtemp(prefix="judge-vs-server-"))
    entries = [e for f in args.responses for e in json.loads(f.read_text())[: args.n]]
    responses = tmp / "responses.json"
    responses.write_text(json.dumps(entries))
    common = dict(responses=responses, protocol="score")
    proc = serve(judge, args.quantize, args.port)
    try:
        start = time.perf_counter()
        url = f"http://127.0.0.1:{args.port}"
        served = JudgeConfig(**common, url=url, api="openai", judge_model="judge", out=tmp / "s")
        served.concurrency = 1
        evaluate(served)
        t_served = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    start = time.perf_counter()
    local = JudgeConfig(**common, judge=judge, out=tmp / "l")
    local.device.quantize = args.quantize
    evaluate(local)
    t_local = time.perf_counter() - start
    a, b = scores(tmp / "s", responses), scores(tmp / "l", responses)
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    equal = sum(x == y for x, y in pairs)
    near = sum(abs(x - y) <= 5 for x, y in pairs)
    print(f"{len(a)} responses; unusable: served {a.count(None)}, in-process {b.count(None)}")
    print(f"equal {equal}/{len(pairs)}, within 5 points {near}/{len(pairs)}")
    print(f"largest difference {max((abs(x - y) for x, y in pairs), default=0)}")
    print(f"seconds: served {t_served:.0f} (loading included), in-process {t_local:.0f}")


if __name__ == "__main__":
    main()
