"""transformers' output on a real model file (the reference the real-file tests compare gptlab
with), computed by transformers on first use and kept beside the file, so that later runs read
the file once (gptlab's reading) instead of twice.

A stored reference is found by the SHA-256 of the file, hashed on every run, and by a digest
of what was asked (the test's inputs and the transformers and torch versions): another file,
other inputs or another transformers computes it anew. It lives in `FILE.reference/`, written
atomically; delete that folder to recompute.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import transformers


@lru_cache(maxsize=8)
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def transformers_reference(
    path: Path, inputs: dict[str, Any], compute: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """`compute()` (transformers' reading of `path` on `inputs`), or what an earlier call on
    the same file (by SHA-256) and the same inputs stored."""
    sha = file_sha256(path)
    asked = json.dumps(
        [inputs, transformers.__version__, torch.__version__], sort_keys=True, ensure_ascii=False
    )
    key = hashlib.sha256(asked.encode()).hexdigest()
    store = path.parent / f"{path.name}.reference" / f"{sha[:16]}-{key[:16]}.pt"
    if store.is_file():
        saved = torch.load(store, weights_only=True)
        if saved["file_sha256"] == sha and saved["asked"] == asked:
            return saved["output"]
    output = compute()
    store.parent.mkdir(exist_ok=True)
    tmp = store.with_suffix(".tmp")
    torch.save({"file_sha256": sha, "asked": asked, "output": output}, tmp)
    tmp.replace(store)
    return output


def transformers_gguf_output(
    path: Path, id_texts: list[str], logit_texts: list[str], prompt: str, new_tokens: int
) -> dict[str, Any]:
    """transformers' reading of a GGUF file (float32), stored: "ids" of every text in
    `id_texts` by its tokenizer, "logits" (T, vocab) of each of `logit_texts` on those ids, and
    "greedy", the `new_tokens` it picks after `prompt` (whose ids are "prompt")."""

    def compute() -> dict[str, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
        ids = {t: tok(t)["input_ids"] for t in id_texts}
        start = tok(prompt)["input_ids"]
        with torch.no_grad():
            logits = [model(torch.tensor([ids[t]])).logits[0] for t in logit_texts]
            out = model.generate(torch.tensor([start]), max_new_tokens=new_tokens, do_sample=False)
        greedy = out[0, len(start) :].tolist()
        return {"ids": ids, "logits": logits, "prompt": start, "greedy": greedy}

    asked = {"ids": id_texts, "logits": logit_texts, "greedy": [prompt, new_tokens]}
    return transformers_reference(path, asked, compute)


@torch.no_grad()
def worst_logit_difference(
    model: torch.nn.Module, texts: list[str], theirs: dict[str, Any]
) -> float:
    """The largest |logit difference| between `model` and transformers' stored logits
    (transformers_gguf_output) over `texts`, each run on transformers' own token ids."""
    worst = 0.0
    for text, want in zip(texts, theirs["logits"], strict=True):
        ids = torch.tensor([theirs["ids"][text]])
        worst = max(worst, (model(ids)[0] - want).abs().max().item())
    print(f"max |logit difference| vs transformers: {worst:.3g}")
    return worst
