"""`gptlab pipeline --base FILE.gguf`: a tiny random Llama written as a GGUF file with SmolLM2's
real tokenizer metadata runs the whole --tiny pipeline; the base stage records the file, its
family and tokenizer, every stage reads and writes that tokenizer's ids, and report.md names
the base honestly. A --base path that does not exist is one line, before any run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from gptlab import text
from gptlab.checkpoints import TOKENIZER
from gptlab.cli import main
from gptlab.config import LlamaConfig
from gptlab.formats.gguf import read_gguf_metadata
from gptlab.generation import generate_text
from gptlab.hub import load_tokenizer, resolve_model
from gptlab.llama import Llama
from gptlab.pipeline import SAMPLE_PROMPTS, TINY
from gptlab.settings import Sampling
from tests.test_gguf import write_file
from tests.test_pipeline import DEAD

TINY_LLAMA = LlamaConfig(
    vocab_size=49152,
    context_length=256,
    emb_dim=32,
    n_layers=2,
    hidden_dim=64,
    n_heads=4,
    n_kv_heads=1,
    rope_base=100000.0,
)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiny_gguf(smollm2_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random SmolLM2-shaped model in float32 with SmolLM2's tokenizer (and chat template)."""
    tokenizer = {
        k: v for k, v in read_gguf_metadata(smollm2_file).items() if k.startswith("tokenizer.")
    }
    torch.manual_seed(0)
    state = Llama(TINY_LLAMA).state_dict()
    path = tmp_path_factory.mktemp("base") / "tiny-smollm2.gguf"
    write_file(path, TINY_LLAMA, state, {}, "llama", tokenizer=tokenizer)
    return path


@pytest.fixture(scope="module")
def run(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pipe") / "run"
    args = ["pipeline", "--base", str(tiny_gguf), "--tiny", "--out", str(out),
            "--judge-url", DEAD, "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    return out


def test_base_stage_records_the_file_its_family_and_tokenizer(run: Path, tiny_gguf: Path) -> None:
    base = load_json(run / "base" / "results.json")
    assert base["base"] == base["model"] == str(tiny_gguf.resolve())
    assert (base["family"], base["tokenizer"], base["chat_template"]) == (
        "llama",
        str(tiny_gguf.resolve()),
        True,
    )
    model, _ = resolve_model(tiny_gguf)
    assert base["params"] == model.num_params()
    tok = text.from_gguf(tiny_gguf)
    expected = generate_text(model, list(SAMPLE_PROMPTS), Sampling(max_new_tokens=8), tok)
    assert [s["text"] for s in load_json(run / "base" / "samples.json")] == expected
    assert TINY.sample_tokens == 8


def test_every_stage_uses_the_bases_tokenizer(run: Path, tiny_gguf: Path) -> None:
    smol = text.from_gguf(tiny_gguf)
    stages = load_json(run / "results.json")["stages"]
    assert {k: v["status"] for k, v in stages.items()} == {
        "base": "done",
        "classify": "done",
        "instruct": "done",
        "respond": "done",
        "preference": "done",
        "preference-respond": "done",
        "judge": "skipped",  # nothing listens at DEAD
        "bench": "skipped",  # no benchmark data in the tests' cache, and no index
    }
    for stage in ("classify", "instruct", "preference"):
        assert (run / stage / "model" / TOKENIZER).is_file(), stage
        tok = load_tokenizer(run / stage)
        assert (tok.vocab_size, tok.pad_id, tok.chat_template) == (
            smol.vocab_size,
            smol.pad_id,
            smol.chat_template,
        )
        assert tok.encode("Hi <|im_end|> there") == smol.encode("Hi <|im_end|> there")
    responses = load_json(run / "respond" / "responses.json")
    assert len(responses) == len(load_json(run / "instruct" / "test.json"))


def test_report_names_the_base_and_family(run: Path, tiny_gguf: Path) -> None:
    report = (run / "report.md").read_text(encoding="utf-8")
    assert f"Base model: `{tiny_gguf.resolve()}`, a llama-family model" in report
    assert "with a chat template" in report
    assert f"gptlab pipeline --base {tiny_gguf} " in report or str(tiny_gguf.resolve()) in report
    assert "gpt2-small" not in report.split("## Hardware")[0]


def test_a_missing_base_path_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    status = main(["pipeline", "--base", str(tmp_path / "none.gguf"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err and "none.gguf: no such file or folder" in err
    assert not out.exists()
