"""The llama.cpp side of scripts/check_llama_cpp.py, run in the llama-cpp-python venv (it
imports nothing of gptlab): reads a job (JSON) and writes what llama.cpp did with each file:
its tokenization of texts, greedy tokens (argmax of its own logits, step by step), decode
speed, and a chat completion through the chat handler built from the file's template."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter


def greedy(llm: Llama, prompt: list[int], n_new: int) -> tuple[list[int], float]:
    """n_new greedy tokens after `prompt`, and the decode rate (tokens/s) after the first."""
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    start = 0.0
    for i in range(n_new):
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        out.append(int(np.argmax(logits)))
        if i == 1:
            start = time.perf_counter()
        llm.eval([out[-1]])
    rate = (n_new - 1) / (time.perf_counter() - start) if n_new > 1 else 0.0
    return out, rate


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    results = []
    for f in job["files"]:
        llm = Llama(
            model_path=f["path"],
            n_ctx=f["n_ctx"],
            n_threads=job["threads"],
            n_threads_batch=job["threads"],
            verbose=False,
        )
        res: dict = {"path": f["path"], "chat_format": llm.chat_format, "n_vocab": llm.n_vocab()}
        res["tokenize"] = [
            llm.tokenize(t.encode("utf-8"), add_bos=f["add_bos"], special=True) for t in f["texts"]
        ]
        runs = [greedy(llm, p, f["n_new"]) for p in f["prompts"]]
        res["greedy"] = [r[0] for r in runs]
        res["decode_tokens_per_s"] = [r[1] for r in runs]
        if f.get("chat"):
            template = llm.metadata["tokenizer.chat_template"]
            vocab = llm._model
            formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=vocab.token_get_text(llm.token_eos()),
                bos_token=vocab.token_get_text(llm.token_bos()),
            )
            res["chat_prompt"] = formatter(messages=f["chat"]).prompt
            llm.reset()
            reply = llm.create_chat_completion(
                messages=f["chat"], max_tokens=f["n_new"], temperature=0.0, seed=0
            )
            res["chat_reply"] = reply["choices"][0]["message"]["content"]
            res["chat_finish"] = reply["choices"][0]["finish_reason"]
        results.append(res)
        del llm
    print(json.dumps(results))


if __name__ == "__main__":
    main()
