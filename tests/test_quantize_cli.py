"""`--quantize` on every verb that runs a model, and `gptlab.load(..., quantize=...)`: each
gives what the quantized model gives when built by hand (gptlab.quantize.quantize_model on the
loaded model, or gptlab.formats.gguf_quant.load_gguf_quantized on a GGUF file), and a bad
choice is one line with exit status 2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
import torch

import gptlab
from gptlab.bench import Options, bench_model
from gptlab.errors import GptlabError
from gptlab.formats.gguf_quant import GGUFEmbedding, load_gguf_quantized
from gptlab.generation import generate_text, stream_text
from gptlab.llm import LLM
from gptlab.prompts import format_prompt
from gptlab.quantize import (
    Int4Linear,
    Int8Linear,
    RescoredHead,
    check_device,
    footprint,
    quantization_level,
    quantize_model,
)
from gptlab.respond import generate_responses, instruct_sampling
from gptlab.settings import Sampling
from gptlab.text import from_gguf_metadata
from tests.serve_process import gptlab_command, gptlab_env, save_tiny_model, served

PROMPT = "Every effort moves you"
VERBS = ("generate", "chat", "serve", "respond", "bench", "pipeline")


def by_hand(folder: Path, mode: str) -> LLM:
    """The reference: the model loaded as it is, then quantized explicitly."""
    llm = gptlab.load(folder, device="cpu")
    quantize_model(llm.model, mode)
    return llm


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        gptlab_command(*args),
        input=stdin,
        capture_output=True,
        text=True,
        env=gptlab_env(),
        timeout=600,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("quantize") / "model")


@pytest.mark.parametrize("verb", VERBS)
def test_help_shows_the_choices_and_default(verb: str) -> None:
    done = cli(verb, "--help")
    assert done.returncode == 0, done.stderr
    flat = " ".join(done.stdout.split())
    assert "--quantize QUANTIZE" in flat
    assert "none (as loaded), int8" in flat and "int4 (groups of 32)" in flat
    assert "(default: none)" in flat


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_load_quantizes_the_blocks_and_the_head(tiny: Path, mode: str) -> None:
    llm = gptlab.load(tiny, device="cpu", quantize=mode)
    layer = Int8Linear if mode == "int8" else Int4Linear
    linears = [m for m in llm.model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == []
    assert isinstance(llm.model.blocks[0].attn.qkv, layer)
    assert isinstance(llm.model.blocks[1].ff.proj, layer)
    assert isinstance(llm.model.out_head, RescoredHead)
    assert quantization_level(llm.model) == mode
    plain = gptlab.load(tiny, device="cpu")
    assert footprint(llm.model)[0] == footprint(plain.model)[0] == plain.model.num_params()
    # the blocks' weights: 1 byte (int8) or half a byte (int4) and their scales, not 4
    assert footprint(llm.model.blocks)[1] < 0.35 * footprint(plain.model.blocks)[1]
    ref = by_hand(tiny, mode)
    assert llm.generate(PROMPT, max_new_tokens=12) == ref.generate(PROMPT, max_new_tokens=12)
    ids = torch.tensor([llm.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        got, want, fp32 = llm.model(ids), ref.model(ids), plain.model(ids)
    assert torch.equal(got, want) and not torch.equal(got, fp32)


def test_generate_prints_the_quantized_models_tokens(tiny: Path) -> None:
    for mode in ("int8", "int4"):
        done = cli("generate", "--model", str(tiny), "--prompt", PROMPT, "--quantize", mode,
                   "--max-new-tokens", "12", "--device", "cpu")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (
            done.stdout == PROMPT + by_hand(tiny, mode).generate(PROMPT, max_new_tokens=12) + "\n"
        )


def test_chat_streams_the_quantized_models_reply(tiny: Path) -> None:
    done = cli("chat", "--model", str(tiny), "--quantize", "int4", "--max-new-tokens", "10",
               "--device", "cpu", stdin="Name a colour\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    ref = by_hand(tiny, "int4")
    prompt = ref.tokenizer.encode(format_prompt("Name a colour", ""), allow_special=False)
    s = instruct_sampling(Sampling(max_new_tokens=10))
    assert done.stdout == "".join(stream_text(ref.model, prompt, s, ref.tokenizer)) + "\n"


def test_respond_answers_with_the_quantized_model(tiny: Path, tmp_path: Path) -> None:
    entries = [
        {"instruction": "Name a colour", "input": "", "output": "Red"},
        {"instruction": "Add two and two", "input": "", "output": "Four"},
    ]
    data, out = tmp_path / "data.json", tmp_path / "responses.json"
    data.write_text(json.dumps(entries))
    done = cli("respond", "--model", str(tiny), "--data", str(data), "--out", str(out),
               "--quantize", "int8", "--max-new-tokens", "8", "--device", "cpu")  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = [e["model_response"] for e in json.loads(out.read_text())]
    ref = by_hand(tiny, "int8")
    assert got == generate_responses(ref.model, entries, Sampling(max_new_tokens=8))


def test_bench_scores_the_quantized_model(tiny: Path, tmp_path: Path) -> None:
    text = tmp_path / "story.txt"
    text.write_text("Every effort moves you forward, and every step counts. " * 4)
    out = tmp_path / "bench"
    done = cli("bench", "--model", str(tiny), "--tasks", str(text), "--out", str(out),
               "--quantize", "int4", "--device", "cpu")  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads((out / "results.json").read_text())["tasks"]["story.txt"]["metrics"]
    ref = by_hand(tiny, "int4")
    want = bench_model(ref.model, ref.tokenizer, [str(text)], opts=Options(progress=False))
    plain = gptlab.load(tiny, device="cpu")
    fp32 = bench_model(plain.model, plain.tokenizer, [str(text)], opts=Options(progress=False))
    bpb = want["tasks"]["story.txt"]["metrics"]["bits_per_byte"]
    assert got["bits_per_byte"] == pytest.approx(bpb, rel=1e-6)
    assert bpb != fp32["tasks"]["story.txt"]["metrics"]["bits_per_byte"]


def test_serve_answers_and_reports_what_it_holds(tiny: Path) -> None:
    ref = by_hand(tiny, "int4")
    with served(tiny, "--quantize", "int4") as (url, _):
        body = {"model": "tiny", "prompt": PROMPT, "stream": False, "raw": True,
                "options": {"temperature": 0, "num_predict": 10}}  # fmt: skip
        reply = httpx.post(f"{url}/api/generate", json=body, timeout=120).json()
        tags = httpx.get(f"{url}/api/tags", timeout=30).json()["models"][0]
    want = generate_text(ref.model, [PROMPT], Sampling(max_new_tokens=10), ref.tokenizer)[0]
    assert reply["response"] == want
    assert tags["size"] == footprint(ref.model)[1]
    assert tags["details"]["quantization_level"] == "int4"


def test_a_gguf_file_runs_on_its_own_blocks_from_load_and_the_command(
    smollm2_file: Path,
) -> None:
    """On CPU, `gptlab.load(file.gguf, quantize=...)` is load_gguf_quantized with the file's
    tokenizer, and `gptlab generate --quantize int4` prints its greedy tokens; what it holds
    is about the file's size."""
    llm = gptlab.load(smollm2_file, device="cpu", quantize="int4")
    assert isinstance(llm.model.tok_emb, GGUFEmbedding)
    assert llm.model.out_head.layer.repeat == 2  # the Q8_0 head as stored
    model, meta = load_gguf_quantized(smollm2_file, "int4")
    tok = from_gguf_metadata(meta, source=smollm2_file)
    prompt = "The capital of France is"
    s = Sampling(max_new_tokens=8, stop_ids=())
    want = generate_text(model, [prompt], s, tok)[0]
    assert llm.generate(prompt, max_new_tokens=8, stop=()) == want
    weights, size = footprint(llm.model)
    assert weights == 134_515_008  # SmolLM2-135M's parameters, the tied head once
    assert size < 1.5 * smollm2_file.stat().st_size
    done = cli("generate", "--model", str(smollm2_file), "--prompt", prompt, "--quantize",
               "int4", "--max-new-tokens", "8", "--no-stop", "--device", "cpu")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == prompt + want + "\n"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--quantize", "int3"], "invalid choice: 'int3'"),
        (["--quantize", "int4", "--device", "mps"], "--device mps"),
    ],
)
def test_bad_choices_are_one_line(tiny: Path, args: list[str], fragment: str) -> None:
    done = cli("generate", "--model", str(tiny), "--prompt", PROMPT, *args)
    assert done.returncode == 2
    assert fragment in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_device_without_the_kernel_is_refused_before_loading() -> None:
    with pytest.raises(GptlabError, match="torch has no int4 kernel on mps; use int8 or none"):
        check_device("int4", torch.device("mps"))
    with pytest.raises(GptlabError, match="no int8-dynamic kernel on mps; use int8 or int4"):
        check_device("int8-dynamic", torch.device("mps"))
    check_device("int8", torch.device("mps"))  # widened per call where torch has no kernel
    with pytest.raises(GptlabError, match="unknown quantization 'int2'"):
        check_device("int2", torch.device("cpu"))
