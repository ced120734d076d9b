"""The model's own tokenizer and prompt format, wired through generation, `generate`, `chat`,
`convert` and pretraining of either family (the real SmolLM2-135M-Instruct GGUF where a real
model is needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptlab import config, families, llama, text
from gptlab.checkpoints import save_model
from gptlab.commands import convert
from gptlab.errors import GptlabError
from gptlab.generation import (
    GenerationStats,
    TextStream,
    generate,
    generate_text,
    generate_tokens,
    tokenizer_sampling,
)
from gptlab.hub import load_tokenizer, resolve_model
from gptlab.settings import (
    ClassifierConfig,
    ConvertConfig,
    InstructConfig,
    PretrainConfig,
    Sampling,
)
from gptlab.tokenizer import encode
from tests.test_cli import assert_user_error, gptlab

TEXTS = ("def f(x):\n    return x  # ok", "Café, naïve — 東京 🙂", "a  b\n\n\tc <|im_end|> d")
MICRO = config.LlamaConfig(
    vocab_size=49152, context_length=64, emb_dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
    hidden_dim=64,
)  # fmt: skip


@pytest.fixture(scope="module")
def smollm2(smollm2_file: Path) -> tuple[torch.nn.Module, text.Tokenizer]:
    model, _ = resolve_model(smollm2_file)
    return model.eval(), load_tokenizer(smollm2_file)


# ---- presets -----------------------------------------------------------------------------


def test_preset_names_are_every_family() -> None:
    """The torch-free names settings offers are exactly the presets families builds, of each
    family (Qwen2 and Qwen3 are Llama variants)."""
    built = {families.family_of(config.get_preset(name)) for name in config.PRESET_NAMES}
    assert built == set(config.FAMILIES) == {"gpt2", "llama", "gemma3"}
    for cls in (PretrainConfig, ClassifierConfig, InstructConfig):
        field = next(f for f in cls.__dataclass_fields__.values() if f.name == "preset")
        assert field.metadata["choices"] == config.PRESET_NAMES, cls
    assert PretrainConfig(preset="llama-micro").preset == "llama-micro"
    with pytest.raises(GptlabError):
        PretrainConfig(preset="llama-nano")


def test_pretrain_llama_micro_then_generate(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 30, encoding="utf-8")
    common = ["--corpus", str(corpus), "--context", "16", "--device", "cpu"]
    proc = gptlab(
        "pretrain", *common, "--preset", "llama-micro", "--out", "run", "--max-steps", "3",
        "--eval-interval", "3", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "sample: [step 3] Every effort moves you" in proc.stdout
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["model"]["family"] == "llama" and saved["model"]["n_kv_heads"] == 2
    assert saved["model"]["context_length"] == 16
    model, _ = resolve_model(tmp_path / "run")
    assert type(model) is llama.Llama
    assert isinstance(load_tokenizer(tmp_path / "run"), text.GPT2Tokenizer)
    gen = gptlab(
        "generate", "--model", "run", "--prompt", "the quick", "--max-new-tokens", "5",
        "--no-stop", cwd=tmp_path,
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("the quick") and len(gen.stdout.strip()) > len("the quick")
    # A preset whose vocabulary is not GPT-2's cannot read the GPT-2 corpus: one line.
    bad = gptlab("pretrain", *common, "--preset", "smollm2-135m", "--out", "r2", cwd=tmp_path)
    assert_user_error(bad, "smollm2-135m", "50,257")


# ---- tokenizers from every kind of model spec --------------------------------------------


def test_load_tokenizer_of_each_spec(tmp_path: Path, smollm2_file: Path) -> None:
    gguf = load_tokenizer(smollm2_file)
    assert isinstance(gguf, text.HFTokenizer)
    assert (gguf.vocab_size, gguf.eos_id, gguf.stop_ids) == (49152, 2, (2, 0))
    assert "<|im_start|>" in (gguf.chat_template or "")
    assert isinstance(load_tokenizer("gpt2-small"), text.GPT2Tokenizer)  # nothing downloaded
    torch.manual_seed(0)
    gpt2_folder = save_model(families.new_model(config.PRESETS["gpt-nano"]), tmp_path / "g")
    assert isinstance(load_tokenizer(gpt2_folder), text.GPT2Tokenizer)
    assert not (gpt2_folder / "tokenizer.json").exists()  # GPT-2 folders stay as they were
    # A model folder saved with the GGUF's tokenizer, also inside a run folder.
    model = families.new_model(MICRO)
    folder = save_model(model, tmp_path / "run" / "model", tokenizer=gguf)
    for spec in (folder, tmp_path / "run"):
        back = load_tokenizer(spec)
        assert isinstance(back, text.HFTokenizer)
        assert (back.eos_id, back.pad_id, back.bos_id, back.add_bos, back.stop_ids) == (
            gguf.eos_id, gguf.pad_id, gguf.bos_id, gguf.add_bos, gguf.stop_ids,
        )  # fmt: skip
        assert back.chat_template == gguf.chat_template
        assert back.special_tokens == gguf.special_tokens
        for t in TEXTS:
            assert back.encode(t) == gguf.encode(t)
            assert back.encode(t, allow_special=False) == gguf.encode(t, allow_special=False)
    # An HF Llama folder without tokenizer.json: refused rather than given GPT-2's ids.
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(GptlabError, match="no tokenizer.json"):
        load_tokenizer(hf)


def test_convert_gguf_keeps_its_tokenizer(tmp_path: Path, smollm2_file: Path) -> None:
    out = tmp_path / "smol"
    convert.run(ConvertConfig(source=str(smollm2_file), out=out))
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|im_end|>" and "<|im_start|>" in cfg["chat_template"]
    back, gguf = load_tokenizer(out), load_tokenizer(smollm2_file)
    assert back.stop_ids == gguf.stop_ids and back.chat_template == gguf.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert back.render_chat(messages) == gguf.render_chat(messages)
    assert [back.encode(t) for t in TEXTS] == [gguf.encode(t) for t in TEXTS]


# ---- generation with another tokenizer ---------------------------------------------------


def test_stop_ids_default_to_the_tokenizers(smollm2: tuple) -> None:
    _, tok = smollm2
    s = Sampling()
    assert tokenizer_sampling(s, None) is s and tokenizer_sampling(s, text.gpt2()) is s
    assert tokenizer_sampling(s, tok).stop_ids == (2, 0)
    assert tokenizer_sampling(s.replace(stop_ids=()), tok).stop_ids == ()  # --no-stop


def test_generate_text_with_the_models_tokenizer(smollm2: tuple) -> None:
    model, tok = smollm2
    s = Sampling(max_new_tokens=6)
    out = generate_text(model, ["The capital of France is"], s, tokenizer=tok)[0]
    assert out.startswith(" Paris")
    ids = generate(model, [tok.encode("The capital of France is")], s.replace(stop_ids=(2, 0)))
    assert out == tok.decode(ids[0])
    # GPT-2's default is unchanged: the same ids as gptlab.tokenizer gives.
    torch.manual_seed(0)
    tiny = families.new_model(config.PRESETS["gpt-nano"]).eval()
    assert generate_text(tiny, ["Hello"], s) == generate_text(tiny, ["Hello"], s, text.gpt2())
    assert generate(tiny, [encode("Hello")], s) == generate(
        tiny, [text.gpt2().encode("Hello")], s, tokenizer=text.gpt2()
    )


def test_chat_reply_stops_at_end_of_turn(smollm2: tuple) -> None:
    """A chat prompt in the model's template: the reply ends at <|im_end|> (id 2), a stop id
    the tokenizer gives (GPT-2's 50256 is not even in this vocabulary)."""
    model, tok = smollm2
    prompt = tok.encode(
        tok.render_chat([{"role": "user", "content": "What is the capital of France?"}]),
        add_bos=False,
    )
    stats = GenerationStats()
    steps = list(
        generate_tokens(model, [prompt], Sampling(max_new_tokens=80), stats=stats, tokenizer=tok)
    )
    assert stats.finished == [True] and len(steps) < 80
    assert int(steps[-1][0][0]) in tok.stop_ids
    reply = tok.decode([int(t[0]) for t, active in steps if bool(active[0])])
    assert "Paris" in reply and "<|im_end|>" not in reply


def test_text_stream_with_another_tokenizer(smollm2: tuple) -> None:
    """Pushed one id at a time, the stream gives the decoded text with no broken character,
    and holds back / cuts a stop string as it does for GPT-2."""
    _, tok = smollm2
    for t in TEXTS:
        ids = tok.encode(t)
        stream = TextStream(tokenizer=tok)
        pieces = [stream.push(i) for i in ids] + [stream.flush()]
        assert "".join(pieces) == tok.decode(ids) == t
        assert not any("\ufffd" in p for p in pieces)
    ids = tok.encode("Paris is nice.\n###\nmore")
    stream = TextStream(("###",), tokenizer=tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == "Paris is nice.\n" and stream.stopped


# ---- the commands on the real file -------------------------------------------------------


def test_generate_command_on_a_gguf_file(smollm2_file: Path) -> None:
    proc = gptlab(
        "generate", "--model", str(smollm2_file), "--prompt", "The capital of France is",
        "--temperature", "0", "--max-new-tokens", "8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("The capital of France is")
    assert "Paris" in proc.stdout


def test_chat_command_uses_the_template_and_keeps_the_conversation(smollm2_file: Path) -> None:
    """Two turns on stdin; the second ("And of Germany?") only makes sense with the first."""
    proc = gptlab(
        "chat", "--model", str(smollm2_file), "--max-new-tokens", "40",
        stdin="What is the capital of France?\nAnd of Germany?\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()
    assert "Paris" in first and "Berlin" in second
    assert "<|im" not in proc.stdout and "###" not in proc.stdout
