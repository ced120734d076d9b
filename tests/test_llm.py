"""`gptlab.load`: the one loader behind every verb and the server, and the README's library
example run for real against a tiny model folder."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gptlab
from gptlab.checkpoints import save_model
from gptlab.errors import GptlabError
from gptlab.formats.hf import export_hf
from gptlab.hub import resolve_model
from gptlab.model import GPT
from tests.serve_process import TINY, gptlab_command, gptlab_env, save_tiny_model

README = Path(__file__).resolve().parents[1] / "README.md"
README_MODEL = "runs/first/instruct/model"


def readme_example() -> str:
    """The code block of README's "Use it from Python" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Use it from Python\n", 1)[1]
    match = re.match(r"\s*```python\n(.*?)\n```", section, re.S)
    assert match is not None, "no python block at the start of the section"
    return match.group(1)


def test_the_readme_example_runs_and_matches_the_cli(tmp_path: Path) -> None:
    """The example as written (only the model path replaced) prints the greedy continuation
    that `gptlab generate` prints, a batch of two texts, and the same continuation streamed."""
    model = save_tiny_model(tmp_path / "model")
    code = readme_example()
    assert code.count(README_MODEL) == 1
    code = code.replace(README_MODEL, str(model))
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=gptlab_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    greedy, batch, streamed = run.stdout.split("\n", 2)
    prompt = "Every effort moves you"
    cli = subprocess.run(
        gptlab_command(
            "generate", "--model", str(model), "--prompt", prompt, "--max-new-tokens", "20"
        ),
        capture_output=True,
        text=True,
        env=gptlab_env(),
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    assert prompt + greedy + "\n" == cli.stdout
    assert greedy.strip()  # a random tiny model still says something
    texts = ast.literal_eval(batch)
    assert isinstance(texts, list) and len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert streamed == greedy


def test_load_is_the_hub_model_with_its_tokenizer_and_metadata(tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "model")
    llm = gptlab.load(folder, device="cpu")
    reference, meta = resolve_model(folder)
    assert llm.metadata == meta and llm.family == "gpt2" and llm.task is None
    assert llm.device == torch.device("cpu") and not llm.model.training
    assert llm.tokenizer.name == "gpt2" and llm.chat_template is None
    for (name, a), (_, b) in zip(
        llm.model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    one = llm.generate("Every effort moves you", max_new_tokens=6)
    both = llm.generate(["Every effort moves you", "Hi"], max_new_tokens=6)
    assert isinstance(one, str) and both[0] == one and len(both) == 2


def test_a_dtype_is_applied_on_load(tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "model")
    llm = gptlab.load(str(folder), device="cpu", dtype="bf16")
    assert {p.dtype for p in llm.model.parameters()} == {torch.bfloat16}
    assert isinstance(llm.generate("Every effort", max_new_tokens=3), str)
    as_is = gptlab.load(str(folder), device="cpu")
    assert {p.dtype for p in as_is.model.parameters()} == {torch.float32}


def test_a_foreign_format_is_placed_on_the_device_asked(tmp_path: Path) -> None:
    """A Hugging Face GPT-2 file, read by its own loader, arrives as the model folder does."""
    torch.manual_seed(0)
    export_hf(GPT(TINY), tmp_path / "hf")
    llm = gptlab.load(tmp_path / "hf" / "model.safetensors", device="cpu", dtype="float16")
    assert {p.device.type for p in llm.model.parameters()} == {"cpu"}
    assert {p.dtype for p in llm.model.parameters()} == {torch.float16}
    assert llm.metadata["source"].endswith("model.safetensors")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantize": "int3"}, "unknown quantization 'int3'; choose from int8, int4"),
        ({"dtype": "int4"}, "dtype 'int4': choose one of float32"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
    ],
)
def test_bad_choices_are_one_line_before_reading(kwargs: dict, message: str) -> None:
    with pytest.raises(GptlabError, match=re.escape(message)):
        gptlab.load("no/such/folder/at/all", **kwargs)


def test_quantize_none_is_the_plain_model(tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "model")
    assert gptlab.load(folder, device="cpu", quantize="none").generate("Hi", max_new_tokens=3)


def test_a_classifier_loads_but_generates_no_text(tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = save_model(GPT(TINY.replace(n_classes=2)), tmp_path / "clf", {"task": "classify"})
    llm = gptlab.load(folder, device="cpu")
    assert llm.task == "classify"
    with pytest.raises(GptlabError, match="is a classifier; it cannot generate text"):
        llm.generate("Hi")


def test_sampling_options_come_one_way(tmp_path: Path) -> None:
    llm = gptlab.load(save_tiny_model(tmp_path / "model"), device="cpu")
    s = llm.sampling(max_new_tokens=5, stop="x")
    assert s.stop_strings == ("x",)
    assert llm.generate("Hi", sampling=s) == llm.generate("Hi", max_new_tokens=5, stop=["x"])
    with pytest.raises(GptlabError, match="give sampling= or max_new_tokens, not both"):
        llm.generate("Hi", sampling=s, max_new_tokens=3)


def first_weight(spec: Path) -> torch.Tensor:
    model, _ = resolve_model(spec)
    return next(model.parameters()).detach()


def test_pipeline_and_stage_folders_mean_the_model_inside(tmp_path: Path) -> None:
    """`--model RUN` of a pipeline is its last tuned language model (instruct's, else the
    base's), `--model RUN/base` the stage's model; a folder of several runs lists them."""
    run = tmp_path / "first"
    run.mkdir()
    (run / "config.json").write_text('{"task": "pipeline", "pipeline": {}}', encoding="utf-8")
    base = save_tiny_model(run / "base" / "pretrain" / "model", seed=1).parent
    save_tiny_model(run / "classify" / "model", seed=2)
    instruct = save_tiny_model(run / "instruct" / "model", seed=3).parent
    assert torch.equal(first_weight(run), first_weight(instruct))
    assert torch.equal(first_weight(run / "base"), first_weight(base))
    shutil.rmtree(instruct)  # an unfinished pipeline: its base is the last model
    assert torch.equal(first_weight(run), first_weight(base))
    # the base stage of a downloaded model names it in its results.json
    given = save_tiny_model(tmp_path / "given", seed=4)
    shutil.rmtree(run / "base")
    (run / "base").mkdir()
    (run / "base" / "results.json").write_text(f'{{"model": "{given}"}}', encoding="utf-8")
    assert torch.equal(first_weight(run), first_weight(given))
    many = tmp_path / "many"
    for i in range(6):
        save_tiny_model(many / f"run{i}" / "model", seed=i)
    with pytest.raises(GptlabError) as exc:
        resolve_model(many)
    listed = f"{many}: no model here (expected model.safetensors + config.json, or a run folder "
    assert str(exc.value).startswith(listed)
    assert str(exc.value).endswith(
        f"models below it: {many / 'run0'}, {many / 'run1'}, {many / 'run2'}, {many / 'run3'} "
        "and 2 more"
    )
