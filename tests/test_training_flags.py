"""The speed flags of TrainConfig change speed or memory, never what training computes."""

from pathlib import Path

import pytest
import torch

from gptlab.config import get_preset
from gptlab.data import ResumableBatches, SlidingWindowDataset, read_corpus, tokenize_corpus
from gptlab.model import GPT
from gptlab.runs import RunDir
from gptlab.training import Plan, TrainConfig, flops_per_token, make_optimizer, train

# A small vocabulary (token ids folded into it) keeps the output layer from dominating.
CFG = get_preset("gpt-nano").replace(context_length=16, vocab_size=512)


@pytest.fixture(scope="module")
def dataset() -> SlidingWindowDataset:
    return SlidingWindowDataset(tokenize_corpus(read_corpus(None))[:1500] % 512, 16, 16)


def trained(ds: SlidingWindowDataset, out: Path, dropout: float = 0.0, **flags) -> GPT:
    torch.manual_seed(0)
    model = GPT(CFG.replace(drop_rate=dropout))
    cfg = TrainConfig.of(max_steps=3, eval_interval=3, eval_batches=1, lr=1e-3, **flags)
    batches = ResumableBatches(ds, 4, shuffle=True, seed=1)
    out.mkdir()
    plan = Plan(model, batches, ResumableBatches(ds, 4, False), cfg.max_steps)
    train(plan, cfg, RunDir(out), torch.device("cpu"))
    return model


def max_diff(a: GPT, b: GPT) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


def test_gradient_checkpointing_same_result_fewer_saved_activations(dataset, tmp_path: Path):
    plain = trained(dataset, tmp_path / "a", dropout=0.1)
    ckpt = trained(dataset, tmp_path / "b", dropout=0.1, gradient_checkpointing=True)
    assert ckpt.gradient_checkpointing and not plain.gradient_checkpointing
    assert max_diff(plain, ckpt) < 1e-6  # dropout masks are replayed exactly in recompute

    def saved_bytes(model: GPT) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        x = torch.randint(0, CFG.vocab_size, (4, 16))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x).sum().backward()
        return total

    plain.train()
    ckpt.train()
    assert saved_bytes(ckpt) < 0.5 * saved_bytes(plain)


def test_fused_adamw_matches_the_loop_implementation(dataset, tmp_path: Path):
    fused = trained(dataset, tmp_path / "a", fused_adamw=True)
    loop = trained(dataset, tmp_path / "b", fused_adamw=False)
    assert max_diff(fused, loop) < 1e-6
    assert max_diff(fused, GPT(CFG)) > 0  # training did move the weights
    cpu = torch.device("cpu")
    assert make_optimizer(fused, TrainConfig.of(max_steps=1), cpu).defaults["fused"]
    assert not make_optimizer(fused, TrainConfig.of(max_steps=1, fused_adamw=False), cpu).defaults[
        "fused"
    ]


@pytest.mark.slow
def test_compiled_training_matches_eager(dataset, tmp_path: Path):
    eager = trained(dataset, tmp_path / "a")
    compiled = trained(dataset, tmp_path / "b", compile=True, compile_backend="aot_eager")
    assert compiled._compiled_call_impl is not None
    assert max_diff(eager, compiled) < 1e-5


def test_throughput_and_mfu_are_logged(dataset, tmp_path: Path):
    trained(dataset, tmp_path / "run", peak_tflops=1.0)
    rec = [r for r in RunDir(tmp_path / "run").metrics() if r["kind"] == "train"]
    assert len(rec) == 3
    for r in rec:
        expected = r["tokens_per_s"] * flops_per_token(GPT(CFG), 16) / 1e12
        assert r["mfu"] == pytest.approx(expected, rel=1e-2) and r["mfu"] > 0


def test_flops_per_token_follows_the_palm_estimate():
    with torch.device("meta"):  # shapes only, no 124M random weights
        model = GPT(get_preset("gpt2-small"))
    # 124M parameters: 6 * N plus attention 12 * 12 layers * 768 * 1024.
    assert flops_per_token(model, 1024) == 6 * 124_439_808 + 12 * 12 * 768 * 1024
