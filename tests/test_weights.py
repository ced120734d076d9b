"""Pretrained weights: OpenAI's TF checkpoint -> gptlab matches transformers' GPT-2, the HF
round trip is exact, bad files fail in one line, and ensure_pretrained downloads + converts."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from gptlab.cli import main as cli_main
from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.formats.hf import export_hf, load_hf_safetensors
from gptlab.formats.openai_tf import load_tf_checkpoint
from gptlab.generation import generate
from gptlab.hub import OPENAI_FILES, ensure_pretrained, resolve_model
from gptlab.model import GPT
from gptlab.settings import Sampling
from tests.file_server import FileServer, serve

FIXTURE = Path(__file__).parent / "fixtures" / "tf_gpt2"
HPARAMS = json.loads((FIXTURE / "hparams.json").read_text())


def reference_hf_model() -> GPT2LMHeadModel:
    """transformers' GPT-2 holding the values TensorFlow saved, mapped here independently of
    gptlab.formats: Conv1D weights drop their leading 1, names follow HF's scheme."""
    values = np.load(FIXTURE / "values.npz")
    config = GPT2Config(
        vocab_size=HPARAMS["n_vocab"],
        n_positions=HPARAMS["n_ctx"],
        n_embd=HPARAMS["n_embd"],
        n_layer=HPARAMS["n_layer"],
        n_head=HPARAMS["n_head"],
        bos_token_id=None,
        eos_token_id=None,  # generate the full length, as gptlab does with no stop ids
    )
    state = {}
    for name in values.files:
        parts = name.removeprefix("model/").split("/")  # e.g. h0, attn, c_attn, w
        if parts[0][0] == "h" and parts[0][1:].isdigit():
            parts[0] = f"h.{parts[0][1:]}"
        if len(parts) == 1:  # wte, wpe
            parts.append("weight")
        else:
            parts[-1] = {"g": "weight", "w": "weight", "b": "bias"}[parts[-1]]
        value = values[name]
        state[f"transformer.{'.'.join(parts)}"] = torch.from_numpy(
            value[0] if value.ndim == 3 else value
        )
    model = GPT2LMHeadModel(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    return model.eval()


def assert_same_weights(a: GPT, b: GPT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name, tensor in sa.items():
        assert torch.equal(tensor, sb[name]), name


@pytest.fixture(scope="module")
def tf_model() -> GPT:
    return load_tf_checkpoint(FIXTURE)


def test_tf_weights_give_transformers_logits(tf_model: GPT):
    hf = reference_hf_model()
    assert torch.equal(hf.lm_head.weight, tf_model.out_head.weight)  # head tied to wte
    idx = torch.randint(
        0, HPARAMS["n_vocab"], (3, HPARAMS["n_ctx"]), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        ours, theirs = tf_model(idx), hf(idx).logits
    assert ours.abs().max() > 1.0  # weights large enough that a wrong mapping would show
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers(tf_model: GPT):
    prompts = [[5, 17, 42, 3, 88], [1], [60, 61, 62], [90, 2, 2, 7]]
    greedy = Sampling(max_new_tokens=20, stop_ids=())
    # One prompt per call: generation pads batches with <|endoftext|>, absent from this vocab.
    ours = [generate(tf_model, [prompt], greedy)[0] for prompt in prompts]
    hf = reference_hf_model()
    for prompt, tokens in zip(prompts, ours, strict=True):
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([prompt]),
                max_new_tokens=20,
                do_sample=False,
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                pad_token_id=0,
            )
        assert tokens == out[0, len(prompt) :].tolist()
    assert len({t for row in ours for t in row}) > 5  # not one degenerate repetition


def _hf_file(tmp_path: Path, with_config: bool) -> Path:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=48,
        n_layer=2,
        n_head=3,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    if not with_config:
        (tmp_path / "hf" / "config.json").unlink()
    return tmp_path / "hf" / "model.safetensors"


def test_hf_round_trip_is_exact(tmp_path: Path):
    original = _hf_file(tmp_path, with_config=True)
    model = load_hf_safetensors(original)
    assert model.cfg.n_heads == 3 and model.cfg.emb_dim == 48
    export_hf(model, tmp_path / "back")
    before, after = load_file(original), load_file(tmp_path / "back" / "model.safetensors")
    before = {k: v for k, v in before.items() if k != "lm_head.weight"}  # tied: the same as wte
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name
    # And the export is a model transformers loads, with the same logits as gptlab's.
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-5, rtol=0)


def test_export_of_tf_weights_loads_in_transformers(tf_model: GPT, tmp_path: Path):
    export_hf(tf_model, tmp_path / "hf")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.arange(HPARAMS["n_ctx"])[None] % HPARAMS["n_vocab"]
    with torch.no_grad():
        torch.testing.assert_close(tf_model(idx), hf(idx).logits, atol=1e-4, rtol=0)


def test_hf_file_loads_directly_without_copies(tmp_path: Path):
    path = _hf_file(tmp_path, with_config=True)
    model, meta = resolve_model(path)
    assert meta["model"]["emb_dim"] == 48
    # Conv1D weights are transposed views of the memory-mapped file, not copies.
    qkv = model.blocks[0].attn.qkv.weight
    assert not qkv.is_contiguous() and qkv.t().is_contiguous()


def test_hf_file_without_config_needs_a_gpt2_width(tmp_path: Path):
    path = _hf_file(tmp_path, with_config=False)
    with pytest.raises(GptlabError, match=r"model.safetensors: width 48 is not a GPT-2 size"):
        resolve_model(path)


def test_hf_file_with_a_missing_tensor(tmp_path: Path):
    path = _hf_file(tmp_path, with_config=True)
    tensors = load_file(path)
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    from safetensors.torch import save_file

    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(GptlabError, match=r"model.safetensors: tensor h.1.mlp.c_fc.bias missing"):
        load_hf_safetensors(path)


def test_export_refuses_a_classifier():
    model = GPT(
        GPTConfig(vocab_size=64, context_length=8, emb_dim=16, n_layers=1, n_heads=2, n_classes=2)
    )
    with pytest.raises(GptlabError, match="only GPT-2 language models export"):
        export_hf(model, "unused")


# ---- bad TF checkpoints: one line naming the file and the tensor -----------------------------


@pytest.fixture
def tf_copy(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "tf")
    return tmp_path / "tf"


def _set_hparams(folder: Path, **changes: int) -> None:
    (folder / "hparams.json").write_text(json.dumps({**HPARAMS, **changes}))


def test_hparams_that_do_not_match_the_tensors(tf_copy: Path):
    _set_hparams(tf_copy, n_embd=64, n_head=4)
    with pytest.raises(
        GptlabError,
        match=r"model.ckpt.index: tensor model/wte has shape "
        r"\(96, 32\), .*hparams.json implies \(96, 64\)",
    ):
        load_tf_checkpoint(tf_copy)


def test_a_missing_variable(tf_copy: Path):
    _set_hparams(tf_copy, n_layer=3)
    with pytest.raises(GptlabError, match=r"model.ckpt.index: tensor model/h2/ln_1/g missing"):
        load_tf_checkpoint(tf_copy)


def test_a_variable_too_many(tf_copy: Path):
    _set_hparams(tf_copy, n_layer=1)
    with pytest.raises(
        GptlabError,
        match=r"tensor model/h1/attn/c_attn/b is not in a GPT-2 "
        r"with .*n_layer=1",
    ):
        load_tf_checkpoint(tf_copy)


def test_inconsistent_hparams(tf_copy: Path):
    _set_hparams(tf_copy, n_head=5)
    with pytest.raises(
        GptlabError,
        match=r"hparams.json: model config: emb_dim 32 is not "
        "divisible by n_heads 5",
    ):
        load_tf_checkpoint(tf_copy)


def test_missing_hparams(tf_copy: Path):
    (tf_copy / "hparams.json").unlink()
    with pytest.raises(GptlabError, match=r"hparams.json: hparams.json not found"):
        load_tf_checkpoint(tf_copy)


# ---- ensure_pretrained: download, convert once, cache -----------------------------------------


def _openai_mirror(size: str = "124M", data_shard: bytes | None = None) -> dict[str, bytes]:
    files = {
        f"{size}/{f}": (FIXTURE / f).read_bytes() for f in OPENAI_FILES if (FIXTURE / f).is_file()
    }
    files[f"{size}/encoder.json"] = b"{}"  # tokenizer files are fetched but not used
    files[f"{size}/vocab.bpe"] = b"#version: 0.2\n"
    if data_shard is not None:
        files[f"{size}/model.ckpt.data-00000-of-00001"] = data_shard
    return files


@pytest.fixture
def mirror() -> Iterator[FileServer]:
    with serve(_openai_mirror()) as server:
        yield server


def test_ensure_pretrained_downloads_converts_and_caches(
    mirror: FileServer, tmp_path: Path, tf_model: GPT
):
    folder = ensure_pretrained("gpt2-small", tmp_path, base_url=mirror.url)
    assert folder == tmp_path / "models" / "gpt2-small"
    assert sorted(p.name for p in (tmp_path / "openai" / "124M").iterdir()) == sorted(OPENAI_FILES)
    model, meta = resolve_model(folder)
    assert meta["source"] == "openai:gpt2-small"
    assert_same_weights(model, tf_model)
    n_requests = len(mirror.requests)
    assert ensure_pretrained("gpt2-small", tmp_path, base_url=mirror.url) == folder
    assert len(mirror.requests) == n_requests  # converted once, then served from the cache


def test_preset_name_resolves_through_the_cache(
    mirror: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path))
    assert cli_main(["download", "gpt2-small", "--base-url", mirror.url]) == 0
    model, _ = resolve_model("gpt2-small")  # no network from here on: the converted cache
    assert model.cfg.vocab_size == HPARAMS["n_vocab"]


def test_corrupt_download_is_never_used(tmp_path: Path):
    shard = bytearray((FIXTURE / "model.ckpt.data-00000-of-00001").read_bytes())
    shard[1000] ^= 0x10
    with (
        serve(_openai_mirror("355M", bytes(shard))) as server,
        pytest.raises(
            GptlabError, match=r"model.ckpt.data-00000-of-00001: tensor \S+ fails its CRC32C check"
        ),
    ):
        ensure_pretrained("gpt2-medium", tmp_path, base_url=server.url)
    assert not (tmp_path / "models" / "gpt2-medium").exists()


def test_hf_source_downloads_and_infers_the_heads(tmp_path: Path):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=96, n_positions=32, n_embd=768, n_layer=1, n_head=12)
    hf = GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path / "published")
    weights = (tmp_path / "published" / "model.safetensors").read_bytes()
    files = {"openai-community/gpt2/resolve/main/model.safetensors": weights}  # no config.json
    with serve(files) as server:
        folder = ensure_pretrained("gpt2-small", tmp_path / "cache", server.url, source="hf")
    model, _ = resolve_model(folder)
    assert model.cfg.n_heads == 12  # GPT-2's head count for width 768
    idx = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-4, rtol=0)


def test_convert_command_round_trip(tmp_path: Path, tf_model: GPT):
    assert cli_main(["convert", str(FIXTURE), str(tmp_path / "ours")]) == 0
    assert cli_main(["convert", str(tmp_path / "ours"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert cli_main(["convert", str(tmp_path / "hf"), str(tmp_path / "again")]) == 0
    again, _ = resolve_model(tmp_path / "again")
    assert_same_weights(again, tf_model)


def test_unknown_pretrained_name(tmp_path: Path):
    with pytest.raises(GptlabError, match="gpt-nano: not a pretrained GPT-2"):
        ensure_pretrained("gpt-nano", tmp_path)


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    broken = tmp_path / "tf"
    shutil.copytree(FIXTURE, broken)
    (broken / "model.ckpt.data-00000-of-00001").write_bytes(b"\0" * 100)  # truncated
    assert cli_main(["convert", str(broken), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gptlab convert: error: ") and "\n" not in err
    assert "model.ckpt.data-00000-of-00001: tensor model/" in err and "truncated" in err
    assert not (tmp_path / "out").exists()


# ---- --model takes foreign folders directly ---------------------------------------------------


def test_model_flag_takes_tf_and_hf_folders_directly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """The OpenAI TF checkpoint folder and the folder `convert --to hf` writes load through
    --model as they are, with the logits (and greedy text) of the converted gptlab folder."""
    assert cli_main(["convert", str(FIXTURE), str(tmp_path / "ours")]) == 0
    assert cli_main(["convert", str(tmp_path / "ours"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    converted, _ = resolve_model(tmp_path / "ours")
    idx = torch.randint(
        0, HPARAMS["n_vocab"], (2, HPARAMS["n_ctx"]), generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        expected = converted(idx)
    texts = []
    for spec in (tmp_path / "ours", FIXTURE, tmp_path / "hf"):
        model, meta = resolve_model(spec)
        assert meta["format"] == "gptlab" and meta["model"] == converted.cfg.to_dict()
        with torch.no_grad():
            torch.testing.assert_close(model(idx), expected, atol=1e-6, rtol=0)
        capsys.readouterr()
        args = ["generate", "--model", str(spec), "--prompt", "!", "--device", "cpu"]
        assert cli_main([*args, "--max-new-tokens", "12"]) == 0  # "!" is token 0: in the vocab
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] == texts[2] and len(texts[0]) > 2
