"""Llama-family models (Llama 3, SmolLM2-like, Qwen3) as first-class gptlab models: config.json
names the family (GPT-2 folders unchanged), model folders and training checkpoints round-trip
exactly, Hugging Face Llama / Qwen3 folders (single and sharded) and .gguf files resolve like
any --model, `convert --to hf` writes folders transformers loads to the same logits, LoRA
applies and merges, generation with the KV cache (through the numpy decode path) equals the
uncached reference, the training loss and its gradient equal the plain ones, and every bad
input is one GptlabError line naming its file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptlab import families
from gptlab.checkpoints import (
    build_model,
    load_model_folder,
    read_safetensors,
    save_checkpoint,
    save_model,
)
from gptlab.commands import convert
from gptlab.config import GPTConfig, LlamaConfig, get_preset
from gptlab.cpu import decode as cpu_decode
from gptlab.cpu import head_loss
from gptlab.errors import GptlabError
from gptlab.formats.hf import export_hf
from gptlab.formats.hf_llama import hf_llama_config
from gptlab.formats.llama_names import from_hf
from gptlab.generation import generate
from gptlab.hub import base_language_model, resolve_model
from gptlab.llama import Llama
from gptlab.lora import LoRALinear, apply_lora, merge_lora
from gptlab.model import GPT, IGNORE_INDEX
from gptlab.settings import ConvertConfig, Sampling
from tests.test_gguf import QWEN3 as GGUF_QWEN3
from tests.test_gguf import write_file
from tests.test_llama import CONFIGS, hf_model

# A Llama 3 (scaled rope, separate head, GQA 4:2) and a tied Qwen3 (q/k norm, head_dim 32).
LLAMA = CONFIGS["llama3-untied"]
QWEN = CONFIGS["qwen3-tied"]
TINY = {"llama": LLAMA, "qwen3": QWEN, "llama-bias": CONFIGS["llama-bias"]}


def ids(cfg: LlamaConfig, shape: tuple[int, int] = (2, 20), seed: int = 1) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def tiny(cfg: LlamaConfig, seed: int = 0) -> Llama:
    """A random model whose norms are not all ones (so a lost norm weight shows)."""
    torch.manual_seed(seed)
    model = Llama(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.1)
    return model


def mapped_file(t: torch.Tensor) -> str | None:
    """The file whose memory mapping holds `t`'s data (Linux's /proc/self/maps), if any."""
    ptr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(a, 16) for a in fields[0].split("-"))
        if lo <= ptr < hi:
            return fields[5] if len(fields) == 6 else None
    return None


def one_line(call, *args, **kwargs) -> str:
    with pytest.raises(GptlabError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---- the family key ---------------------------------------------------------------------------


def test_family_key_only_for_llama_and_old_sections_load() -> None:
    gpt2 = GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_layers=1, n_heads=2)
    assert families.config_to_dict(gpt2) == gpt2.to_dict()  # GPT-2 sections unchanged
    assert families.config_from_dict(gpt2.to_dict()) == gpt2  # no family: gpt2
    assert families.config_from_dict({"family": "gpt2", **gpt2.to_dict()}) == gpt2
    for cfg in (LLAMA, QWEN):  # Qwen3 is the llama family with qk_norm
        data = families.config_to_dict(cfg)
        assert data["family"] == "llama"
        assert families.config_from_dict(json.loads(json.dumps(data))) == cfg
        assert families.model_class(cfg) is Llama
    assert families.model_class(gpt2) is GPT
    assert "unknown model family 'mamba'" in one_line(
        families.config_from_dict, {"family": "mamba"}, "x/config.json"
    )
    msg = one_line(families.config_from_dict, {"family": "llama", "n_embd": 3}, "x/config.json")
    assert msg.startswith("x/config.json: unknown model config field(s): n_embd")
    assert get_preset("qwen3-micro").qk_norm
    assert get_preset("gpt-nano") == GPTConfig(context_length=64, emb_dim=32, n_layers=2, n_heads=2)


# ---- model folders and checkpoints ------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY))
@torch.no_grad()
def test_save_load_round_trip_is_exact(tmp_path: Path, name: str) -> None:
    cfg = TINY[name]
    model = tiny(cfg)
    save_model(model, tmp_path / "m", {"task": "lm"})
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model"]["family"] == "llama" and config["task"] == "lm"
    loaded, meta = load_model_folder(tmp_path / "m")
    assert isinstance(loaded, Llama) and loaded.cfg == cfg and meta["task"] == "lm"
    assert loaded.tied == cfg.tie_weights
    if loaded.tied:
        assert loaded.out_head.weight is loaded.tok_emb.weight
        assert "out_head.weight" not in read_safetensors(tmp_path / "m" / "model.safetensors")
    x = ids(cfg)
    assert torch.equal(loaded(x), model(x))
    # resolve_model: the folder itself, and a run folder holding it
    again, _ = resolve_model(tmp_path / "m")
    assert torch.equal(again(x), model(x))


def test_gpt2_folders_are_written_as_before(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_layers=1, n_heads=2))
    save_model(model, tmp_path / "g")
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    assert config == {"format": "gptlab", "model": model.cfg.to_dict()}  # no "family" key
    loaded, _ = load_model_folder(tmp_path / "g")
    assert type(loaded) is GPT and loaded.cfg == model.cfg


def test_build_model_checks_every_key_and_shape() -> None:
    state = {k: v.clone() for k, v in tiny(LLAMA).state_dict().items()}
    missing = dict(state)
    del missing["blocks.1.ff.up.weight"]
    assert "tensor blocks.1.ff.up.weight missing" in one_line(build_model, LLAMA, missing, "src")
    wrong = {**state, "blocks.0.attn.k.weight": torch.zeros(64, 64)}
    msg = one_line(build_model, LLAMA, wrong, "src")
    assert "blocks.0.attn.k.weight has shape (64, 64), the config implies (32, 64)" in msg
    extra = {**state, "blocks.0.attn.q_norm.weight": torch.ones(16)}
    assert "unexpected tensor blocks.0.attn.q_norm.weight" in one_line(
        build_model, LLAMA, extra, "src"
    )


def test_training_checkpoint_of_a_llama_resumes_and_resolves(tmp_path: Path) -> None:
    model = tiny(QWEN)
    run = tmp_path / "run"
    ckpt = save_checkpoint(run, 3, model, {"step": 3}, {"task": "lm"}, keep=1)
    loaded, meta = load_model_folder(ckpt)
    assert meta["task"] == "lm" and meta["model"]["family"] == "llama"
    x = ids(QWEN)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # training's --resume reads the weights into a fresh model of the same config
    fresh = tiny(QWEN, seed=5)
    fresh.load_state_dict(read_safetensors(ckpt / "model.safetensors"), strict=False)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
        by_run, _ = resolve_model(run)  # a run folder: its latest checkpoint
        assert torch.equal(by_run(x), model(x))


def test_base_language_model_random_llama_preset() -> None:
    model = base_language_model("random", "llama-micro", seed=3)
    assert isinstance(model, Llama) and model.cfg == get_preset("llama-micro")
    again = base_language_model("random", "llama-micro", seed=3)
    assert torch.equal(model.blocks[0].attn.q.weight, again.blocks[0].attn.q.weight)
    assert "has no pretrained weights" in one_line(resolve_model, "qwen3-micro")


# ---- Hugging Face folders ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "qwen3"])
@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@torch.no_grad()
def test_hf_folder_reads_to_transformers_logits(tmp_path: Path, name: str, sharded: bool) -> None:
    cfg = TINY[name]
    torch.manual_seed(0)
    hf = hf_model(cfg)
    folder = tmp_path / "hf"
    hf.save_pretrained(folder, max_shard_size="40KB" if sharded else "1GB")
    shards = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    if sharded:
        assert len(shards) > 2 and (folder / "model.safetensors.index.json").is_file()
        assert not (folder / "model.safetensors").exists()
    else:
        assert not shards and (folder / "model.safetensors").is_file()
    model, meta = resolve_model(folder)
    assert isinstance(model, Llama) and model.cfg == cfg
    # read memory-mapped: the weights lie in mappings of the weight files themselves
    files = {str(p.resolve()) for p in folder.glob("*.safetensors")}
    assert mapped_file(model.tok_emb.weight) in files
    assert mapped_file(model.blocks[-1].ff.down.weight) in files
    assert meta["model"]["family"] == "llama" and meta["source"] == str(folder)
    x = ids(cfg, (3, 30))
    diff = (model(x) - hf(x).logits).abs().max().item()
    print(f"{name} {'sharded' if sharded else 'single'}: max |logit diff| {diff:.3g}")
    assert diff < 1e-4
    # converted to a gptlab folder, it reads back to the same logits
    convert.run(ConvertConfig(source=str(folder), out=tmp_path / "g", to="gptlab"))
    again, meta = load_model_folder(tmp_path / "g")
    assert torch.equal(again(x), model(x)) and meta["source"] == str(folder)


@torch.no_grad()
def test_hf_folder_in_bfloat16_reads_as_float32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf = hf_model(LLAMA)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model, _ = resolve_model(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x = ids(LLAMA)
    diff = (model(x) - hf.float()(x).logits).abs().max().item()  # the bf16 values, in fp32
    assert diff < 1e-4


def test_hf_config_reads_both_rope_spellings() -> None:
    base = {
        "model_type": "llama",
        "vocab_size": 97,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    }
    s = LLAMA.rope_scaling
    scaling = {
        "rope_type": "llama3",
        "factor": s.factor,
        "low_freq_factor": s.low_freq_factor,
        "high_freq_factor": s.high_freq_factor,
        "original_max_position_embeddings": s.original_context_length,
    }
    v4 = {**base, "rope_theta": 500000.0, "rope_scaling": scaling}
    v5 = {**base, "rope_parameters": {**scaling, "rope_theta": 500000.0}}
    assert hf_llama_config(v4, "c") == hf_llama_config(v5, "c") == LLAMA
    # both spellings, disagreeing: rope_scaling wins, as in transformers 5
    both = {**v4, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}
    assert hf_llama_config(both, "c") == LLAMA
    plain = {**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    assert hf_llama_config(plain, "c") == LLAMA.replace(rope_base=1e6, rope_scaling=None)


# ---- export to Hugging Face -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY))
@torch.no_grad()
def test_export_loads_in_transformers_with_the_same_logits(tmp_path: Path, name: str) -> None:
    from transformers import AutoModelForCausalLM

    cfg = TINY[name]
    model = tiny(cfg)
    save_model(model, tmp_path / "g")
    convert.run(ConvertConfig(source=str(tmp_path / "g"), out=tmp_path / "hf", to="hf"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == ("qwen3" if cfg.qk_norm else "llama")
    assert config["head_dim"] == cfg.head_dim
    assert config["tie_word_embeddings"] == cfg.tie_weights
    assert config["rope_theta"] == cfg.rope_base
    assert (config["rope_scaling"] is None) == (cfg.rope_scaling is None)
    theirs, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensor
    theirs.eval()
    assert theirs.config.tie_word_embeddings == cfg.tie_weights
    assert type(theirs).__name__ == ("Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM")
    x = ids(cfg, (3, 30))
    diff = (theirs(x).logits - model(x)).abs().max().item()
    print(f"{name}: exported, transformers' logits max |diff| {diff:.3g}")
    assert diff < 1e-4
    # and gptlab reads its own export back exactly
    back, _ = resolve_model(tmp_path / "hf")
    assert torch.equal(back(x), model(x))


def test_classifier_does_not_export(tmp_path: Path) -> None:
    model = tiny(LLAMA.replace(n_classes=3))
    assert "not a classifier" in one_line(export_hf, model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ---- GGUF -------------------------------------------------------------------------------------


@torch.no_grad()
def test_gguf_file_resolves_like_any_model(tmp_path: Path) -> None:
    cfg = GGUF_QWEN3
    torch.manual_seed(0)
    state = from_hf(hf_model(cfg).state_dict(), cfg)
    path = tmp_path / "tiny.gguf"
    expected = write_file(path, cfg, state, {}, "qwen3")  # F32 throughout: exact values
    model, meta = resolve_model(path)
    assert isinstance(model, Llama) and model.cfg == cfg and meta["source"] == str(path)
    for name, value in expected.items():
        assert torch.equal(model.state_dict()[name], value), name
    convert.run(ConvertConfig(source=str(path), out=tmp_path / "g", to="gptlab"))
    again, saved = load_model_folder(tmp_path / "g")
    x = ids(cfg)
    assert torch.equal(again(x), model(x)) and saved["source"] == str(path)
    assert "no such file" in one_line(resolve_model, tmp_path / "missing.gguf")


def test_real_smollm2_gguf_through_resolve_model(smollm2_file: Path) -> None:
    model, meta = resolve_model(smollm2_file)
    assert model.cfg == get_preset("smollm2-135m")
    assert meta["model"] == families.config_to_dict(model.cfg)
    assert model.num_params() == 134_515_008


# ---- LoRA -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "qwen3"])
@torch.no_grad()
def test_lora_apply_and_merge_on_a_llama(name: str) -> None:
    cfg = TINY[name]
    model = tiny(cfg)
    x = ids(cfg)
    base = model(x)
    names = set(model.state_dict())
    added = apply_lora(model, rank=4, alpha=8.0, targets=("qkv", "attn_proj", "fc", "ff_proj"))
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    assert wrapped == sorted(
        f"blocks.{i}.{layer}"
        for i in range(cfg.n_layers)
        for layer in ("attn.q", "attn.k", "attn.v", "attn.o", "ff.gate", "ff.up", "ff.down")
    )
    layers = [m for m in model.blocks[0].modules() if isinstance(m, LoRALinear)]
    per_block = sum(4 * (m.base.in_features + m.base.out_features) for m in layers)
    assert added == per_block * cfg.n_layers
    assert torch.equal(model(x), base)  # B starts at zero
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora_b.normal_(0.0, 0.05)
    adapted = model(x)
    assert (adapted - base).abs().max() > 1e-3
    merge_lora(model)
    assert set(model.state_dict()) == names
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert (model(x) - adapted).abs().max().item() < 1e-5
    if model.tied:
        assert model.out_head.weight is model.tok_emb.weight


def test_lora_targets_per_family() -> None:
    model = tiny(LLAMA)
    apply_lora(model, rank=2, alpha=4.0, targets=("attn.q", "attn.v", "qkv"))  # q, v once
    wrapped = {n.split(".", 2)[2] for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert wrapped == {"attn.q", "attn.k", "attn.v"}
    msg = one_line(apply_lora, tiny(LLAMA), 2, 4.0, ("attn.qkv",))
    assert "unknown LoRA target 'attn.qkv'" in msg and "ff.gate" in msg
    gpt = GPT(GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_layers=1, n_heads=2))
    apply_lora(gpt, rank=2, alpha=4.0)  # GPT-2's defaults are unchanged
    wrapped = {n.split(".", 2)[2] for n, m in gpt.named_modules() if isinstance(m, LoRALinear)}
    assert wrapped == {"attn.qkv", "attn.proj", "ff.fc", "ff.proj"}
    assert "unknown LoRA target 'attn.q'" in one_line(apply_lora, gpt, 2, 4.0, ("attn.q",))


# ---- generation and training ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_generate_cached_equals_uncached_through_numpy_decode(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TINY[name]
    model = tiny(cfg)
    calls = []
    real = cpu_decode.linear
    monkeypatch.setattr(cpu_decode, "enabled", True)
    monkeypatch.setattr(cpu_decode, "linear", lambda *a: calls.append(a[1].shape) or real(*a))
    prompts = [[5, 9, 2, 7, 1], [3], [11, 12, 13]]  # left-padded into one batch
    s = Sampling(max_new_tokens=12, temperature=0.0, stop_ids=())
    cached = generate(model, prompts, s)
    assert calls, "the decode steps' products did not go through numpy"
    assert (cfg.n_kv_heads * cfg.head_dim, cfg.emb_dim) in calls  # k and v: GQA shapes
    assert all(
        type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear)
    )
    uncached = generate(model, prompts, s, use_cache=False)
    assert cached == uncached and all(len(row) == 12 for row in cached)
    # the reference: greedy over full forward passes, one prompt at a time
    with torch.no_grad():
        for prompt, row in zip(prompts, cached, strict=True):
            seq = list(prompt)
            for _ in range(12):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
            assert seq[len(prompt) :] == row


def test_generation_slides_past_the_context() -> None:
    cfg = QWEN.replace(context_length=16)
    model = tiny(cfg)
    s = Sampling(max_new_tokens=30, temperature=0.0, stop_ids=())
    assert generate(model, [[1, 2, 3]], s) == generate(model, [[1, 2, 3]], s, use_cache=False)


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_training_loss_and_backward_with_the_chunked_head(name: str) -> None:
    cfg = TINY[name]
    x, y = ids(cfg, (2, 24), seed=2), ids(cfg, (2, 24), seed=3)
    y[0, :5] = IGNORE_INDEX
    plain, fast = tiny(cfg).train(), tiny(cfg).train()
    head_loss.install(fast)
    assert fast.head_loss is head_loss.chunked
    ref = F.cross_entropy(plain(x).flatten(0, 1), y.flatten(), reduction="sum")
    loss = fast(x, targets=y)
    assert abs(loss.item() - ref.item()) < 1e-3
    ref.backward()
    loss.backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), fast.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), n
    fast.gradient_checkpointing = True  # the same loss with checkpointed blocks
    assert abs(fast(x, targets=y).item() - loss.item()) < 1e-4


# ---- bad inputs -------------------------------------------------------------------------------


def test_bad_inputs_are_one_line_naming_the_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf = hf_model(LLAMA)
    good = tmp_path / "hf"
    hf.save_pretrained(good, max_shard_size="40KB")
    config = json.loads((good / "config.json").read_text())

    def variant(name: str, **changes) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for p in good.iterdir():
            (folder / p.name).symlink_to(p)
        (folder / "config.json").unlink()
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        return folder

    rope = variant("rope", rope_parameters={"rope_type": "yarn", "factor": 2.0})
    assert str(rope / "config.json") in one_line(resolve_model, rope)
    assert "unsupported rope type 'yarn'" in one_line(resolve_model, rope)
    act = variant("act", hidden_act="gelu")
    assert "hidden_act must be silu" in one_line(resolve_model, act)
    no_layers = dict(config)
    del no_layers["num_hidden_layers"]
    folder = tmp_path / "fields"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(no_layers))
    assert "missing field 'num_hidden_layers'" in one_line(resolve_model, folder)

    shard = sorted(good.glob("model-*.safetensors"))[1]
    lost = variant("lost")
    (lost / shard.name).unlink()
    msg = one_line(resolve_model, lost)
    assert str(lost / shard.name) in msg and "not found" in msg
    cut = variant("cut")
    (cut / shard.name).unlink()
    (cut / shard.name).write_bytes(shard.read_bytes()[:1000])
    msg = one_line(resolve_model, cut)
    assert str(cut / shard.name) in msg and "truncated" in msg
    bigger = variant("bigger", num_hidden_layers=3)
    assert "model.layers.2." in one_line(resolve_model, bigger)
    wider = variant("wider", intermediate_size=128)
    assert "has shape" in one_line(resolve_model, wider)

    # a gptlab folder with a family gptlab does not build
    save_model(tiny(QWEN), tmp_path / "g")
    meta = json.loads((tmp_path / "g" / "config.json").read_text())
    meta["model"]["family"] = "rwkv"
    (tmp_path / "g" / "config.json").write_text(json.dumps(meta))
    msg = one_line(resolve_model, tmp_path / "g")
    assert str(tmp_path / "g" / "config.json") in msg and "unknown model family 'rwkv'" in msg

    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    assert f"{text}: not a GGUF file" in one_line(resolve_model, text)
