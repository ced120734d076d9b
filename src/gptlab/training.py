"""The training loop shared by pretraining and fine-tuning.

AdamW (weight decay on matrices only), linear warm-up then cosine decay to `min_lr_ratio`,
gradient clipping and accumulation, bf16 autocast on GPU, periodic evaluation of train and
validation loss (and perplexity), atomic checkpoints, and exact resume: the data order depends
only on (seed, epoch), and the checkpoint holds the optimizer, RNG states and step, so a run
resumed from step k ends with the same weights as one never interrupted. SIGINT finishes the
current step, saves, and stops.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from gptlab.checkpoints import (
    latest_checkpoint,
    load_train_state,
    read_safetensors,
    save_checkpoint,
)
from gptlab.data import ResumableBatches
from gptlab.errors import GptlabError, Interrupted
from gptlab.model import GPT
from gptlab.runs import RunDir

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, int]]


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        try:
            return torch.device(name)
        except RuntimeError:
            raise GptlabError(f"unknown device {name!r}") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """bf16 autocast where it pays (GPU, precision auto or bf16); plain fp32 otherwise."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return nullcontext()
    if precision not in ("auto", "bf16"):
        raise GptlabError(f"unknown precision {precision!r}; use auto, fp32 or bf16")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass
class TrainConfig:
    max_steps: int
    lr: float = 4e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    eval_interval: int = 10
    eval_batches: int | None = None
    log_interval: int = 1
    seed: int = 123
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise GptlabError(f"training needs at least one step, got {self.max_steps}")
        if self.lr <= 0:
            raise GptlabError(f"learning rate must be positive, got {self.lr}")
        if self.grad_accum < 1 or self.eval_interval < 1 or self.log_interval < 1:
            raise GptlabError("grad_accum, eval_interval and log_interval must be positive")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over trainable parameters; biases and LayerNorm gains get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise GptlabError("the model has no trainable parameters")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(0.9, 0.95), fused=device.type in ("cuda", "cpu")
    )


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy; targets of -100 are ignored. Returns (mean loss, targets)."""
    x, y = batch
    logits = model(x)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)
    return loss, int((y != -100).sum())


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, batches: Iterator[Any], loss_fn: LossFn, device: torch.device, precision: str
) -> float:
    """Mean loss per target token over the given batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        with autocast(device, precision):
            loss, n = loss_fn(model, to_device(batch, device))
        total += float(loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


@contextmanager
def sigint_flag() -> Iterator[threading.Event]:
    """While active, Ctrl-C sets the event instead of raising, so a step can end cleanly."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda *_: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainResult:
    step: int
    tokens_seen: int
    train_loss: float
    val_loss: float
    seconds: float


def train(
    model: GPT,
    train_batches: ResumableBatches,
    val_batches: ResumableBatches,
    cfg: TrainConfig,
    run: RunDir,
    device: torch.device,
    loss_fn: LossFn = lm_loss,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    on_eval: Callable[[int], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train `model` for `cfg.max_steps` optimizer steps, evaluating and checkpointing every
    `cfg.eval_interval` steps. `stop_after` ends the call early at that step, after its
    checkpoint, as an interruption would (used to split a run in two)."""
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg, device)
    step, tokens_seen, elapsed = 0, 0, 0.0
    last_eval = (float("nan"), float("nan"))
    if resume and (ckpt := latest_checkpoint(run.path)) is not None:
        state = load_train_state(ckpt)
        model.load_state_dict(read_safetensors(ckpt / "model.safetensors"), strict=False)
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        step, tokens_seen, elapsed = state["step"], state["tokens_seen"], state["elapsed"]
        last_eval = tuple(state["last_eval"])  # type: ignore[assignment]
    if resume:  # also forgets the records of an attempt killed before its first checkpoint
        run.truncate_metrics(step)
    if step >= cfg.max_steps:
        return TrainResult(step, tokens_seen, *last_eval, elapsed)

    def checkpoint() -> None:
        state = {
            "step": step,
            "tokens_seen": tokens_seen,
            "elapsed": elapsed,
            "last_eval": list(last_eval),
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(),
            "train_config": asdict(cfg),
        }
        save_checkpoint(run.path, step, model, state, meta)

    batches = train_batches.iterate(step * cfg.grad_accum)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    window_tokens, window_start = 0, time.perf_counter()
    with sigint_flag() as interrupted, bar:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, cfg)
            step_loss = 0.0
            for _ in range(cfg.grad_accum):
                batch = to_device(next(batches), device)
                with autocast(device, cfg.precision):
                    loss, _n = loss_fn(model, batch)
                (loss / cfg.grad_accum).backward()
                step_loss += float(loss.detach()) / cfg.grad_accum
                n_tokens = math.prod(batch[0].shape[:2])  # ids (B, T) or hidden states (B, T, D)
                tokens_seen += n_tokens
                window_tokens += n_tokens
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed += time.perf_counter() - t0
            if not math.isfinite(step_loss):
                raise GptlabError(f"training loss became {step_loss} at step {step}; lower --lr")
            if step % cfg.log_interval == 0:
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0, now
                run.log(
                    {
                        "kind": "train",
                        "step": step,
                        "loss": step_loss,
                        "lr": optimizer.param_groups[0]["lr"],
                        "tokens": tokens_seen,
                        "tokens_per_s": round(tps, 1),
                    }
                )
                bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tps:,.0f}")
            bar.update(1)
            # Evaluate on the fixed schedule only, so an interrupted and resumed run logs
            # exactly what an uninterrupted one does; checkpoint there and when stopping.
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                train_loss = evaluate_loss(
                    model, train_batches.first(cfg.eval_batches), loss_fn, device, cfg.precision
                )
                val_loss = evaluate_loss(
                    model, val_batches.first(cfg.eval_batches), loss_fn, device, cfg.precision
                )
                last_eval = (train_loss, val_loss)
                run.log(
                    {
                        "kind": "eval",
                        "step": step,
                        "train_loss": train_loss,
                        "val_loss": val_loss,
                        "train_ppl": perplexity(train_loss),
                        "val_ppl": perplexity(val_loss),
                        "tokens": tokens_seen,
                    }
                )
                bar.write(
                    f"step {step}: train loss {train_loss:.3f}, val loss {val_loss:.3f} "
                    f"(ppl {perplexity(val_loss):.1f})"
                )
                if on_eval is not None:
                    on_eval(step)
                checkpoint()
            elif interrupted.is_set() or step == stop_after:
                checkpoint()
            if interrupted.is_set():
                raise Interrupted(
                    f"interrupted at step {step}; checkpoint saved in "
                    f"{run.path}/checkpoints (rerun with --resume to continue)"
                )
            if step == stop_after:
                break
    return TrainResult(step, tokens_seen, last_eval[0], last_eval[1], elapsed)
