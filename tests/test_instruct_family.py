"""Instruction fine-tuning and `respond` on a Llama-family base with its own tokenizer: a tiny
random Llama saved with SmolLM2's tokenizer (read once from the real GGUF file), in the Alpaca
and the chat-template prompt formats. Expected ids come from transformers' tokenizer of the
saved folder (its own chat template rendering), not from gptlab's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from gptlab import text
from gptlab.checkpoints import latest_checkpoint, read_safetensors, save_model
from gptlab.cli import main
from gptlab.config import LlamaConfig
from gptlab.errors import GptlabError
from gptlab.generation import generate
from gptlab.hub import load_tokenizer, resolve_with_tokenizer
from gptlab.instructions import (
    PromptFormat,
    collate,
    entry_prompt,
    prompt_format,
    split_entries,
    tokenize_entry,
    user_message,
)
from gptlab.jobs.instruct import finetune_instruct
from gptlab.llama import Llama
from gptlab.respond import respond
from gptlab.settings import InstructConfig, Sampling, TrainArgs
from tests.serve_process import gptlab_command, gptlab_env
from tests.test_instruct import SEED, TINY, write_json

X = -100
# llama-micro's shape on SmolLM2's 49,152-token vocabulary.
TINY_LLAMA = LlamaConfig(
    vocab_size=49152,
    context_length=256,
    emb_dim=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    hidden_dim=192,
    rope_base=10000.0,
    tie_weights=True,
)
# Input text that spells a special token: it must stay plain text.
SPELLED = {"instruction": "Repeat it.", "input": "a <|im_end|> b", "output": "a <|im_end|> b"}


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2_file: Path) -> text.HFTokenizer:
    return text.from_gguf(smollm2_file)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, smol_tokenizer: text.HFTokenizer) -> Path:
    """A seeded random tiny Llama model folder with SmolLM2's tokenizer beside it."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base") / "tiny-llama"
    return save_model(Llama(TINY_LLAMA), folder, tokenizer=smol_tokenizer)


@pytest.fixture(scope="module")
def theirs(base: Path):
    """transformers' tokenizer of the saved folder (tokenizer.json + tokenizer_config.json)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


def chat_ids(theirs, entry: dict, with_answer: bool) -> list[int]:
    messages = [{"role": "user", "content": user_message(entry)}]
    if with_answer:
        messages.append({"role": "assistant", "content": entry["output"]})
    ids = theirs.apply_chat_template(
        messages, add_generation_prompt=not with_answer, tokenize=True
    )["input_ids"]
    return list(ids)


def expected_batch(
    rows: list[tuple[list[int], list[int]]], pad: int, mask_prompt: bool
) -> tuple[list[list[int]], list[list[int]]]:
    """(inputs, targets) of (prompt ids, response ids + end token) rows, built by hand."""
    width = max(len(p) + len(r) for p, r in rows) - 1
    inputs, targets = [], []
    for prompt, response in rows:
        seq = prompt + response
        x, y = seq[:-1], seq[1:]
        if mask_prompt:
            y = [X] * (len(prompt) - 1) + y[len(prompt) - 1 :]
        inputs.append(x + [pad] * (width - len(x)))
        targets.append(y + [X] * (width - len(y)))
    return inputs, targets


def with_pad(tok: text.HFTokenizer, pad: str) -> text.HFTokenizer:
    """`tok` with another pad token, so that padding and the end token differ in the tensors."""
    special = {**tok.special_tokens, "pad_token": pad}
    return text.HFTokenizer(
        tok.backend, name=tok.name, special_tokens=special, chat_template=tok.chat_template
    )


def batch_of(
    entries: list[dict], fmt: PromptFormat, pad_id: int, mask_prompt: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """gptlab's padded (inputs, targets) for `entries` in `fmt`."""
    rows = [tokenize_entry(e, fmt) for e in entries]
    return collate(rows, mask_prompt=mask_prompt, end_id=fmt.end_id, pad_id=pad_id)


@pytest.mark.parametrize("mask_prompt", [True, False])
def test_alpaca_collate_is_the_tokenizers_ids(base: Path, theirs, mask_prompt: bool) -> None:
    tok = with_pad(load_tokenizer(base), "<|endoftext|>")
    assert (tok.eos_id, tok.pad_id, tok.add_bos) == (2, 0, False)
    fmt = prompt_format("alpaca", tok)
    entries = [TINY[2], SPELLED, TINY[1]]
    inputs, targets = batch_of(entries, fmt, tok.pad_id, mask_prompt)
    rows = []
    for e in entries:
        prompt = theirs(entry_prompt(e), split_special_tokens=True)["input_ids"]
        output = theirs(e["output"], add_special_tokens=False, split_special_tokens=True)
        rows.append((prompt, [*output["input_ids"], theirs.eos_token_id]))
    assert theirs.eos_token_id == 2
    assert 2 not in rows[1][0]  # the spelled <|im_end|> is text, not the token
    want_x, want_y = expected_batch(rows, pad=0, mask_prompt=mask_prompt)
    assert inputs.tolist() == want_x
    assert targets.tolist() == want_y


def test_alpaca_adds_bos_where_the_tokenizer_does(smol_tokenizer: text.HFTokenizer) -> None:
    """A tokenizer whose encode puts bos first (as Llama 3's does) gets it before each prompt,
    and never before the output."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import processors

    backend = Backend.from_str(smol_tokenizer.backend.to_str())
    backend.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
    )
    special = smol_tokenizer.special_tokens
    tok = text.HFTokenizer(backend, name="bos-first", special_tokens=special, chat_template=None)
    assert tok.add_bos and tok.bos_id == 1
    ids, n_prompt = tokenize_entry(TINY[0], prompt_format("alpaca", tok))
    plain = smol_tokenizer.encode(entry_prompt(TINY[0]), allow_special=False)
    assert ids[:n_prompt] == [1, *plain]
    assert ids[n_prompt:] == smol_tokenizer.encode(TINY[0]["output"])


@pytest.mark.parametrize("mask_prompt", [True, False])
def test_chat_collate_is_transformers_chat_template(base: Path, theirs, mask_prompt: bool) -> None:
    tok = with_pad(load_tokenizer(base), "<|endoftext|>")
    fmt = prompt_format("chat", tok)
    assert (fmt.end_id, fmt.between) == (2, "")  # <|im_end|> closes the assistant's turn
    entries = [TINY[2], TINY[4], SPELLED]
    inputs, targets = batch_of(entries, fmt, tok.pad_id, mask_prompt)
    rows = []
    for e in entries[:2]:
        prompt, full = chat_ids(theirs, e, False), chat_ids(theirs, e, True)
        assert full[: len(prompt)] == prompt
        end = full.index(theirs.convert_tokens_to_ids("<|im_end|>"), len(prompt))
        rows.append((prompt, full[len(prompt) : end + 1]))
    # transformers reads the spelled <|im_end|> as the token; gptlab keeps it text, so this
    # row is the template's markup around the user text encoded without specials
    rendered = theirs.apply_chat_template(
        [{"role": "user", "content": "\x00"}], add_generation_prompt=True, tokenize=False
    )
    head, tail = rendered.split("\x00")
    content = theirs(user_message(SPELLED), add_special_tokens=False, split_special_tokens=True)
    prompt = [
        *theirs(head, add_special_tokens=False)["input_ids"],
        *content["input_ids"],
        *theirs(tail, add_special_tokens=False)["input_ids"],
    ]
    answer = theirs(SPELLED["output"], add_special_tokens=False, split_special_tokens=True)
    rows.append((prompt, [*answer["input_ids"], 2]))
    want_x, want_y = expected_batch(rows, pad=0, mask_prompt=mask_prompt)
    assert inputs.tolist() == want_x
    assert targets.tolist() == want_y


def test_chat_needs_a_chat_template(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(GptlabError, match="no chat template; use --prompt-format alpaca"):
        prompt_format("chat", text.gpt2())
    data = write_json(tmp_path / "tiny.json", TINY)
    args = ["--base", "random", "--prompt-format", "chat", "--data", str(data)]
    assert main(["finetune-instruct", *args, "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        "gptlab finetune-instruct: error: gpt2: the tokenizer has no chat template; use "
        "--prompt-format alpaca\n"
    )


def tune(base: Path, out: Path, data: Path, steps: int, lr: float, **kw) -> dict:
    c = InstructConfig(
        base=str(base),
        data=data,
        out=out,
        prompt_format="chat",
        mask_prompt=True,
        sample_tokens=4,
        train=TrainArgs(
            batch_size=5,
            lr=lr,
            max_steps=steps,
            eval_interval=steps // 2,
            eval_batches=1,
            seed=SEED,
            keep_checkpoints=1,
        ),
        **kw,
    )
    c.runtime.device = "cpu"
    return finetune_instruct(c)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, base: Path) -> Path:
    """The tiny Llama fine-tuned in the chat format until it knows its training answers."""
    root = tmp_path_factory.mktemp("tuned")
    run = root / "run"
    results = tune(base, run, write_json(root / "tiny.json", TINY), steps=40, lr=1e-2)
    assert results["steps"] == 40
    return run


def losses(run: Path) -> tuple[float, float]:
    """(the first step's training loss, the last evaluation's)."""
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    train = [r["loss"] for r in metrics if r["kind"] == "train"]
    evals = [r["train_loss"] for r in metrics if r["kind"] == "eval"]
    return train[0], evals[-1]


def test_chat_run_folder_keeps_tokenizer_and_format(tuned: Path, base: Path) -> None:
    first, last = losses(tuned)
    assert last < 0.5 * first
    config = json.loads((tuned / "config.json").read_text())
    assert config["settings"]["prompt_format"] == "chat"
    checkpoint = latest_checkpoint(tuned)
    assert checkpoint is not None
    saved = (load_tokenizer(base).backend.to_str(), load_tokenizer(base).chat_template)
    for folder in (tuned / "model", checkpoint):
        assert json.loads((folder / "config.json").read_text())["template"] == "chat"
        tok = load_tokenizer(folder)
        assert (tok.backend.to_str(), tok.chat_template) == saved
        assert (tok.eos_id, tok.pad_id, tok.stop_ids) == (2, 2, (2, 0))


def test_respond_on_the_run_uses_its_chat_template(tuned: Path, theirs, tmp_path: Path) -> None:
    train, _, _ = split_entries(TINY, seed=SEED)
    data = write_json(tmp_path / "train.json", train)
    greedy = Sampling(max_new_tokens=12)
    out = respond(str(tuned), data, tmp_path / "responses.json", greedy, batch_size=2)
    answers = [e["model_response"] for e in json.loads(out.read_text())]
    assert answers == [e["output"] for e in train]  # learned in the chat format, and stopped
    # the same model prompted in Alpaca does not know them: the template made the difference
    alpaca = respond(str(tuned), data, tmp_path / "alpaca.json", greedy, 2, prompt_format="alpaca")
    assert [e["model_response"] for e in json.loads(alpaca.read_text())] != answers
    # a response is the model's greedy continuation of transformers' templated ids
    model, _, tok = resolve_with_tokenizer(tuned)
    ids = generate(model, [chat_ids(theirs, train[0], False)], greedy, tokenizer=tok)[0]
    assert tok.decode(ids) == answers[0]


def test_lora_on_llama_saves_a_merged_model(
    tmp_path: Path, base: Path, smol_tokenizer: text.HFTokenizer
) -> None:
    run = tmp_path / "lora"
    data = write_json(tmp_path / "tiny.json", TINY)
    results = tune(base, run, data, steps=20, lr=5e-2, lora_rank=4, lora_alpha=8.0)
    first, last = losses(run)
    assert last < first  # adapters alone, on frozen random embeddings: slowly
    assert results["lora"]["targets"] == ["qkv", "attn_proj", "fc", "ff_proj"]
    assert results["trainable_params"] < results["total_params"] / 10
    weights = read_safetensors(run / "model" / "model.safetensors")
    assert not any("lora" in name for name in weights)
    before = read_safetensors(base / "model.safetensors")
    changed = [n for n in weights if not torch.equal(weights[n], before[n])]
    assert changed and all(n.startswith("blocks.") for n in changed)
    assert load_tokenizer(run / "model").backend.to_str() == smol_tokenizer.backend.to_str()


def test_cli_finetunes_the_gguf_file_in_its_chat_template(
    tmp_path: Path, smollm2_file: Path
) -> None:
    """The real SmolLM2 file as --base, two steps through the command line."""
    data = write_json(tmp_path / "tiny.json", TINY * 2)
    run = tmp_path / "run"
    cmd = gptlab_command(
        "finetune-instruct",
        "--base", str(smollm2_file),
        "--prompt-format", "chat",
        "--data", str(data),
        "--out", str(run),
        "--batch-size", "2",
        "--max-steps", "2",
        "--eval-interval", "2",
        "--eval-batches", "1",
        "--sample-tokens", "0",
        "--device", "cpu",
    )  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=gptlab_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "model" / "config.json").read_text())["template"] == "chat"
    assert (run / "model" / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    ("meta", "alpaca"),
    [
        ({"task": "lm", "template": "alpaca"}, True),
        ({"task": "lm", "template": "chat", "lora": {"rank": 8}}, False),
        ({"task": "lm", "lora": {"rank": 8}}, True),  # before formats were recorded
        ({}, False),
    ],
)
def test_chat_and_serve_keep_the_format_it_was_tuned_in(
    tmp_path: Path, base: Path, smol_tokenizer: text.HFTokenizer, meta: dict, alpaca: bool
) -> None:
    """A model tuned in Alpaca is chatted with in Alpaca, though its tokenizer has a chat
    template; one tuned in the chat template (LoRA or not), or never tuned, in that template."""
    from gptlab.commands.convert import chat_template
    from gptlab.prompts import ALPACA_CHAT_TEMPLATE, format_prompt
    from gptlab.serve.service import Service

    model, _, _ = resolve_with_tokenizer(base)
    folder = save_model(model, tmp_path / "m", meta, tokenizer=smol_tokenizer)
    service = Service.load(folder)
    assert service.templated is not alpaca
    ids = service.chat_ids([("user", "Name a colour.")])
    rendered = smol_tokenizer.render_chat([{"role": "user", "content": "Name a colour."}])
    expected = (
        smol_tokenizer.encode(format_prompt("Name a colour."), allow_special=False)
        if alpaca
        else smol_tokenizer.encode(rendered, add_bos=False)
    )
    assert ids == expected
    _, saved_meta, tok = resolve_with_tokenizer(folder)
    exported = chat_template(saved_meta, tok)
    assert exported == (ALPACA_CHAT_TEMPLATE if alpaca else smol_tokenizer.chat_template)
