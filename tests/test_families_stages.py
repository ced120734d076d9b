"""Qwen2 and Gemma 3 through gptlab's generic paths, on tiny random models: a model folder
saved and loaded exactly, `gptlab convert --to hf` read by transformers with the same logits
(and read back by gptlab), LoRA on every role merged back to the adapted model, the training
loss with CPU's chunked head and gradient checkpointing, and greedy generation cached =
uncached in a left-padded batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptlab.checkpoints import load_model_folder, save_model
from gptlab.commands import convert
from gptlab.cpu import head_loss
from gptlab.families import new_model
from gptlab.generation import generate
from gptlab.hub import resolve_model
from gptlab.lora import LoRALinear, apply_lora, merge_lora
from gptlab.model import IGNORE_INDEX, Decoder
from gptlab.settings import ConvertConfig, Sampling
from tests.test_gemma3 import CONFIGS as GEMMA3
from tests.test_llama import CONFIGS as LLAMA

TINY = {"qwen2": LLAMA["qwen2-tied"], "gemma3": GEMMA3["gqa-window8"]}
HF = {"qwen2": ("qwen2", "Qwen2ForCausalLM"), "gemma3": ("gemma3_text", "Gemma3ForCausalLM")}


def tiny(name: str, seed: int = 0) -> Decoder:
    """A random model whose norms and biases are not their initial values."""
    torch.manual_seed(seed)
    model = new_model(TINY[name]).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith(".bias"):
                p.normal_(0.0, 0.2).add_(1.0 if name == "qwen2" and "norm" in n else 0.0)
    return model


def ids(name: str, shape: tuple[int, int] = (2, 20), seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY[name].vocab_size, shape, generator=g)


@pytest.mark.parametrize("name", list(TINY))
@torch.no_grad()
def test_folder_and_hf_export_round_trips(tmp_path: Path, name: str) -> None:
    from transformers import AutoModelForCausalLM

    model, x = tiny(name), ids(name, (3, 30))
    save_model(model, tmp_path / "g", {"task": "lm"})
    family = json.loads((tmp_path / "g" / "config.json").read_text())["model"]["family"]
    assert family == TINY[name].family
    loaded, _ = load_model_folder(tmp_path / "g")
    assert loaded.cfg == model.cfg and torch.equal(loaded(x), model(x))
    convert.run(ConvertConfig(source=str(tmp_path / "g"), out=tmp_path / "hf", to="hf"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == HF[name][0]
    theirs, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info
    assert type(theirs).__name__ == HF[name][1]
    diff = (theirs.eval()(x).logits - model(x)).abs().max().item()
    print(f"{name}: exported, transformers' logits max |diff| {diff:.3g}")
    assert diff < 1e-4
    back, _ = resolve_model(tmp_path / "hf")
    assert back.cfg == model.cfg and torch.equal(back(x), model(x))


@pytest.mark.parametrize("name", list(TINY))
@torch.no_grad()
def test_lora_on_every_role_merges_back(name: str) -> None:
    model, x = tiny(name), ids(name)
    base = model(x)
    apply_lora(model, rank=4, alpha=8.0, targets=("qkv", "attn_proj", "fc", "ff_proj"))
    wrapped = {n.split(".", 2)[2] for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert wrapped == {"attn.q", "attn.k", "attn.v", "attn.o", "ff.gate", "ff.up", "ff.down"}
    assert torch.allclose(model(x), base, atol=1e-6)  # B starts at zero
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora_b.normal_(0.0, 0.1)
    adapted = model(x)
    assert not torch.allclose(adapted, base, atol=1e-3)
    merged = merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert torch.allclose(merged(x), adapted, atol=1e-5)


@pytest.mark.parametrize("name", list(TINY))
def test_training_loss_chunked_head_and_checkpointing(name: str) -> None:
    x, y = ids(name, (2, 24), seed=2), ids(name, (2, 24), seed=3)
    y[0, :5] = IGNORE_INDEX
    plain, fast = tiny(name).train(), tiny(name).train()
    head_loss.install(fast)
    ref = F.cross_entropy(plain(x).flatten(0, 1), y.flatten(), reduction="sum")
    loss = fast(x, targets=y)
    assert abs(loss.item() - ref.item()) < 1e-3
    ref.backward()
    loss.backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), fast.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), n
    fast.gradient_checkpointing = True
    assert abs(fast(x, targets=y).item() - loss.item()) < 1e-4


@pytest.mark.parametrize("name", list(TINY))
@torch.no_grad()
def test_batched_greedy_cached_equals_uncached(name: str) -> None:
    model = tiny(name)
    prompts = [[5, 9, 2, 7, 1, 3, 8, 4, 6, 2, 11], [3], [11, 12, 13]]  # left-padded, > window
    s = Sampling(max_new_tokens=14, stop_ids=())
    batched = generate(model, prompts, s)
    assert batched == generate(model, prompts, s, use_cache=False)
    assert batched == [generate(model, [p], s)[0] for p in prompts]  # each row as alone


@pytest.mark.parametrize("name", list(TINY))
@torch.no_grad()
def test_blocks_run_by_hand_give_the_hidden_states(name: str) -> None:
    """embed + blocks(x, *block_args(x)) + final norm is the model's own uncached pass (what a
    classifier's cached prefix relies on), past Gemma's sliding window too."""
    model, x = tiny(name), ids(name, (2, 30))
    h = model.embed(x)
    extra = model.block_args(h)
    for block in model.blocks:
        h = block(h, *extra)
    assert torch.allclose(model.final_norm(h), model.hidden_states(x), atol=1e-6)
