"""A real Qwen2.5 file (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, llama.cpp's `qwen2` architecture)
read by gptlab and by transformers (the reference, computed by transformers on the first run
and stored beside the file: tests/reference.py): the same config, logits, token ids and greedy
continuation, and a chat answer that knows its geography. (gptlab's qwen2 GGUF export is
checked against transformers on a tiny model in tests/test_gguf_export.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from gptlab.config import PRESETS
from gptlab.formats.gguf import GGUFModel, build_llama, read_gguf
from gptlab.generation import generate
from gptlab.settings import Sampling
from gptlab.text import from_gguf_metadata
from tests.reference import transformers_gguf_output, worst_logit_difference

pytestmark = pytest.mark.slow

TEXTS = [
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # {x: [1, 2]}",
    "Crème brûlée, naïve façade, señor Müller: déjà vu à Zürich.",
    "Emoji 🤖🚀🎉 and 中文的字符, then an\ttab,   three spaces\n\n\nand newlines 12345.",
]


ID_TEXTS = [*TEXTS, " leading space", "x\r\ny", "ünïcödé  ", "日本語のテキスト"]
PROMPT = "def is_prime(n):\n"


@pytest.fixture(scope="module")
def qwen2(qwen2_file: Path):
    """(gptlab's read, model and tokenizer of the file; transformers' output on it)."""
    start = time.perf_counter()
    read = read_gguf(qwen2_file)
    print(f"gptlab read_gguf: {time.perf_counter() - start:.1f} s")
    ours = build_llama(read.cfg, read.tensors)
    tokenizer = from_gguf_metadata(read.metadata, source=qwen2_file)
    return read, ours, tokenizer, transformers_gguf_output(qwen2_file, ID_TEXTS, TEXTS, PROMPT, 10)


def test_config_is_the_published_shape(qwen2) -> None:
    read: GGUFModel = qwen2[0]
    assert read.metadata["general.architecture"] == "qwen2"
    want = PRESETS["qwen2.5-0.5b"]  # the Coder model: the same shape; this file stores the
    # head as its own output.weight (a quantized copy of the tied embedding), so it is untied
    assert read.cfg == want.replace(tie_weights=False)
    assert read.cfg.qkv_bias and not read.cfg.attention_bias
    assert "blocks.0.attn.q.bias" in read.tensors and "blocks.0.attn.o.bias" not in read.tensors


def test_token_ids_equal_transformers(qwen2) -> None:
    _, _, ours, theirs = qwen2
    for text in ID_TEXTS:
        assert ours.encode(text) == theirs["ids"][text], text
        assert ours.decode(ours.encode(text)) == text


@torch.no_grad()
def test_logits_equal_transformers(qwen2) -> None:
    _, model, _, theirs = qwen2
    assert worst_logit_difference(model, TEXTS, theirs) < 1e-4


@torch.no_grad()
def test_greedy_continuation_and_chat_answer(qwen2) -> None:
    _, model, tokenizer, theirs = qwen2
    prompt = theirs["prompt"]
    assert tokenizer.encode(PROMPT) == prompt
    s = Sampling(max_new_tokens=10, stop_ids=())
    assert generate(model, [prompt], s, tokenizer=tokenizer)[0] == theirs["greedy"]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = tokenizer.encode(tokenizer.render_chat(messages), add_bos=False)
    answer = generate(model, [chat], Sampling(max_new_tokens=12), tokenizer=tokenizer)[0]
    assert "Paris" in tokenizer.decode(answer), tokenizer.decode(answer)
