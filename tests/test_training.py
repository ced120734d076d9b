from pathlib import Path

import pytest
import torch

from gptlab.checkpoints import read_safetensors
from gptlab.config import GPTConfig
from gptlab.data import ResumableBatches, SlidingWindowDataset
from gptlab.jobs.pretrain import pretrain
from gptlab.model import GPT
from gptlab.runs import SAMPLE_STEP, RunDir
from gptlab.settings import PretrainConfig
from gptlab.training import Plan, TrainConfig, lr_factor, train

CFG = GPTConfig(
    vocab_size=50257, context_length=16, emb_dim=32, n_layers=2, n_heads=2, drop_rate=0.1
)


def test_lr_schedule_warmup_then_cosine() -> None:
    cfg = TrainConfig.of(max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.55)
    assert lr_factor(110, cfg) == pytest.approx(0.1)


def _batches(seed: int = 0) -> tuple[ResumableBatches, ResumableBatches]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 300, (400,), generator=g)
    train_ds = SlidingWindowDataset(ids[:320], 16, 8)
    val_ds = SlidingWindowDataset(ids[320:], 16, 8)
    return (
        ResumableBatches(train_ds, 4, shuffle=True, seed=1),
        ResumableBatches(val_ds, 4, shuffle=False, drop_last=False),
    )


def _run(
    path: Path,
    max_steps: int,
    resume: bool = False,
    stop_after: int | None = None,
    keep: int = 0,
    minutes: float = 0.0,  # checkpoint at every evaluation
) -> GPT:
    torch.manual_seed(0)
    model = GPT(CFG)
    train_b, val_b = _batches()
    run = RunDir(path)
    run.prepare({"test": True}, resume=resume)
    cfg = TrainConfig.of(
        max_steps=max_steps,
        lr=3e-3,
        warmup_steps=2,
        grad_accum=2,
        eval_interval=3,
        eval_batches=2,
        keep_checkpoints=keep,
        checkpoint_minutes=minutes,
    )
    plan = Plan(model, train_b, val_b, max_steps)
    train(plan, cfg, run, torch.device("cpu"), resume=resume, stop_after=stop_after)
    return model


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = _run(tmp_path / "a", max_steps=8)
    _run(tmp_path / "b", max_steps=8, stop_after=5)
    resumed = _run(tmp_path / "b", max_steps=8, resume=True)
    for (name, p), q in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    a, b = RunDir(tmp_path / "a").metrics(), RunDir(tmp_path / "b").metrics()
    strip = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in b]


def test_final_checkpoint_holds_final_weights(tmp_path: Path) -> None:
    model = _run(tmp_path, max_steps=4, keep=1)
    state = read_safetensors(tmp_path / "checkpoints" / "step-000004" / "model.safetensors")
    torch.testing.assert_close(state["tok_emb.weight"], model.tok_emb.weight)
    # Keeping none, the last step writes no checkpoint: the one before stays for a resume.
    _run(tmp_path / "none", max_steps=4)
    assert sorted(p.name for p in (tmp_path / "none" / "checkpoints").iterdir()) == [
        "LATEST",
        "step-000003",
    ]


def test_checkpoints_are_spaced_by_minutes_and_a_stop_always_saves(tmp_path: Path) -> None:
    # Within its 30 minutes, a run evaluates at steps 3 and 6 but writes no checkpoint...
    straight = _run(tmp_path / "a", max_steps=8, minutes=30)
    assert not (tmp_path / "a" / "checkpoints").exists()
    # ...except when it stops (here at step 5, between evaluations), and resumes from there.
    _run(tmp_path / "b", max_steps=8, stop_after=5, minutes=30)
    assert (tmp_path / "b" / "checkpoints" / "LATEST").read_text().strip() == "step-000005"
    resumed = _run(tmp_path / "b", max_steps=8, resume=True, minutes=30)
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_tiny_model_overfits_a_short_text(tmp_path: Path) -> None:
    corpus = tmp_path / "poem.txt"
    corpus.write_text(
        "Every effort moves you forward, and every step counts. " * 20, encoding="utf-8"
    )
    config = PretrainConfig.flat(
        out=tmp_path / "run",
        corpus=corpus,
        preset="gpt-nano",
        context=16,
        stride=4,
        batch_size=8,
        max_steps=60,
        lr=1e-2,
        dropout=0.0,
        eval_interval=30,
        sample_prompt="Every effort",
        sample_tokens=6,
        device="cpu",
    )
    result = pretrain(config)
    assert result["train_loss"] < 1.0  # from ln(50257) = 10.8 at the start
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {
        "config.json",
        "metrics.jsonl",
        "loss.png",
        "samples.txt",
        "model",
        "results.json",
    } <= files
    assert "checkpoints" not in files  # a finished run keeps its model, not its checkpoints
    assert "Every effort moves you forward" in (tmp_path / "run" / "samples.txt").read_text()


def _pretrain_samples(out: Path, corpus: Path, stop_after: int | None = None) -> str:
    config = PretrainConfig.flat(
        out=out,
        corpus=corpus,
        preset="gpt-nano",
        context=16,
        max_steps=6,
        eval_interval=2,
        sample_prompt="One\ntwo",  # a newline: the sample must still be one line
        sample_tokens=4,
        device="cpu",
    )
    pretrain(config, resume=(out / "config.json").exists(), stop_after=stop_after)
    return (out / "samples.txt").read_text(encoding="utf-8")


def test_samples_are_kept_as_made_and_cut_at_the_resumed_checkpoint(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 30, encoding="utf-8")
    straight = _pretrain_samples(tmp_path / "a", corpus)
    lines = straight.splitlines()
    assert [SAMPLE_STEP.match(line)[1] for line in lines] == ["2", "4", "6"]  # type: ignore[index]
    assert all(line.split("] ", 1)[1].startswith("One\\ntwo") for line in lines)
    # Stopped after step 5: the samples of steps 2 and 4 are on disk already.
    interrupted = _pretrain_samples(tmp_path / "b", corpus, stop_after=5)
    assert interrupted == "".join(line + "\n" for line in lines[:2])
    # As if killed after step 6's sample, before its checkpoint, mid-way through another.
    with open(tmp_path / "b" / "samples.txt", "a", encoding="utf-8") as f:
        f.write("[step 6] lost with its checkpoint\n[step 8] cut sho")
    assert _pretrain_samples(tmp_path / "b", corpus) == straight
