"""The llama.cpp side of benchmarks/judge_speed.py, run in the llama-cpp-python venv (it
imports nothing of gptlab): reads a job (JSON: the GGUF path, threads, the judge prompts as
token ids, the end-of-turn id, the reply's token limit) and writes each greedy reply's tokens
and the seconds all of them took, the model's loading apart. Consecutive prompts reuse the
keys and values of the beginning they share, as llama.cpp's server does with its prompt cache."""

from __future__ import annotations

import json
import sys
import time

from llama_cpp import Llama


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    start = time.perf_counter()
    llm = Llama(
        model_path=job["path"],
        n_ctx=job["n_ctx"],
        n_threads=job["threads"],
        n_threads_batch=job["threads"],
        verbose=False,
    )
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    replies = []
    for prompt in job["prompts"]:
        reply: list[int] = []
        for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            if token == job["end_id"] or len(reply) == job["max_new"]:
                break
            reply.append(token)
        replies.append(reply)
    seconds = time.perf_counter() - start
    json.dump({"replies": replies, "seconds": seconds, "load_seconds": loaded}, sys.stdout)


if __name__ == "__main__":
    main()
