"""The training loop shared by pretraining and fine-tuning.

AdamW (weight decay on matrices only), linear warm-up then cosine decay to `min_lr_ratio`,
gradient clipping and accumulation, bf16 autocast on GPU, periodic evaluation of train and
validation loss (and perplexity), atomic checkpoints, and exact resume: the data order depends
only on (seed, epoch), and the checkpoint holds the optimizer, RNG states and step, so a run
resumed from step k ends with the same weights as one never interrupted. SIGINT finishes the
current step, saves, and stops.

Under torchrun the same loop runs data-parallel (see gptlab.distributed): each process trains
on its rows of the global batch, only rank 0 logs and checkpoints. Speed flags (TrainConfig):
TF32 matmuls, fused AdamW, pinned-memory asynchronous batch copies (all on by default, each a
no-op where it does not apply), and opt-in `torch.compile`, gradient checkpointing (activation
memory for compute) and FSDP. Throughput is logged as tokens/s and, where the accelerator's
peak is known, model FLOPs utilisation (MFU).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from gptlab import distributed
from gptlab.checkpoints import (
    latest_checkpoint,
    load_train_state,
    read_safetensors,
    save_checkpoint,
)
from gptlab.cpu import head_loss
from gptlab.device import autocast, peak_flops, to_device
from gptlab.errors import GptlabError, Interrupted
from gptlab.model import GPT, IGNORE_INDEX
from gptlab.runs import RunDir
from gptlab.settings import SpeedFlags, TrainArgs

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, int]]

log = logging.getLogger("gptlab")


class BatchSource(Protocol):
    """What `train` reads batches from: gptlab.data.ResumableBatches or
    gptlab.shards.RandomWindows."""

    per_epoch: int

    def iterate(self, position: int = 0) -> Iterator[Any]: ...

    def first(self, n_batches: int | None) -> Iterator[Any]: ...


@dataclass(frozen=True)
class TrainConfig:
    """What `train` runs: a job's training and speed groups, its precision, and the number of
    optimizer steps the job resolved from its epochs (or --max-steps)."""

    max_steps: int
    train: TrainArgs = field(default_factory=TrainArgs)
    speed: SpeedFlags = field(default_factory=SpeedFlags)
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise GptlabError(f"training needs at least one step, got {self.max_steps}")

    @classmethod
    def of(cls, max_steps: int, precision: str = "auto", **values: Any) -> TrainConfig:
        """From the command line's flat names (`lr`, `grad_accum`, `fused_adamw`...)."""
        groups = {}
        for name, group in (("train", TrainArgs), ("speed", SpeedFlags)):
            names = {f.name for f in fields(group)}
            groups[name] = group(**{k: values.pop(k) for k in list(values) if k in names})
        if values:
            raise GptlabError(f"TrainConfig: unknown setting(s): {', '.join(sorted(values))}")
        return cls(max_steps, precision=precision, **groups)

    @property
    def eval_interval(self) -> int:
        """Evaluations (and checkpoints) come at least once, at the last step."""
        return min(self.train.eval_interval, self.max_steps)

    @property
    def log_interval(self) -> int:
        return min(self.train.log_interval, self.max_steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_steps": self.max_steps,
            "train": self.train.to_json(),
            "speed": self.speed.to_json(),
            "precision": self.precision,
        }


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    warmup, floor = cfg.train.warmup_steps, cfg.train.min_lr_ratio
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, cfg.max_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over trainable parameters; biases and LayerNorm gains get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise GptlabError("the model has no trainable parameters")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = cfg.speed.fused_adamw and device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.95), fused=fused or None)


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the targets that are not IGNORE_INDEX, and their
    count. The model computes it in its forward pass (see GPT.head_loss); a batch
    without targets (prompts cut by --max-length and masked) gives 0, not NaN.

    Under torchrun each process holds some rows of the global batch, and instruction rows hold
    different numbers of targets: the loss is scaled so that DDP's average over processes is
    the mean over all the global batch's targets, as one process would compute it."""
    x, y = batch
    n = int((y != IGNORE_INDEX).sum())
    world = distributed.current().world
    return model(x, targets=y) * (world / max(distributed.global_sum(n), 1)), n


def flops_per_token(model: GPT, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward and backward matmuls) plus the
    attention scores, 12 * layers * width * sequence (PaLM's appendix B estimate)."""
    c = model.cfg
    return 6 * model.num_params() + 12 * c.n_layers * c.emb_dim * seq_len


def apply_speed_flags(model: GPT, cfg: TrainConfig, device: torch.device) -> None:
    """Process-wide and model settings for the flags that need no wrapping, and the CPU
    head loss (gptlab.cpu.head_loss: the same loss, computed faster; it steps aside on GPU)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.speed.tf32
        torch.backends.cudnn.allow_tf32 = cfg.speed.tf32
    model.gradient_checkpointing = cfg.speed.gradient_checkpointing
    head_loss.install(model)


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


def say_resumed(run: RunDir, step: int, cfg: TrainConfig, per_epoch: int, found: bool) -> None:
    """Where --resume picks up: the checkpoint's step and epoch, or that there was none."""
    if not found:
        log.warning("--resume: no checkpoint in %s yet; training from step 0", run.path)
        return
    epochs = cfg.train.grad_accum / max(per_epoch, 1)  # epochs per optimizer step
    log.info(
        "--resume: continuing from checkpoint step-%06d: step %d of %d, epoch %.2f of %.2f",
        step,
        step,
        cfg.max_steps,
        step * epochs,
        cfg.max_steps * epochs,
    )
    if step >= cfg.max_steps:
        log.info("--resume: the run is already finished (raise --epochs or --max-steps to go on)")


def train(
    model: GPT,
    train_batches: BatchSource,
    val_batches: BatchSource,
    cfg: TrainConfig,
    run: RunDir,
    device: torch.device,
    loss_fn: LossFn = lm_loss,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    on_eval: Callable[[int], None] | None = None,
    stop_after: int | None = None,
    language_model: bool = True,
    tokenizer: Any = None,
) -> TrainResult:
    """Train `model` for `cfg.max_steps` optimizer steps, evaluating and checkpointing every
    `cfg.eval_interval` steps. `stop_after` ends the call early at that step, after its
    checkpoint, as an interruption would (used to split a run in two). Under torchrun every
    process calls this; `on_eval` runs on all of them (FSDP needs every rank in a forward).
    Perplexity is logged only for a `language_model`: of a classifier's loss it means nothing.
    Checkpoints hold `tokenizer` (a gptlab.text tokenizer other than GPT-2's) beside the model."""
    d = distributed.current()
    torch.manual_seed(cfg.train.seed + d.rank)  # ranks draw different dropout masks
    apply_speed_flags(model, cfg, device)
    model.to(device).train()
    # Every weight contiguous: fused AdamW copies other layouts at each step and FSDP refuses
    # them (a model read from a Hugging Face file holds transposed views of it).
    for p in model.parameters():
        if not p.is_contiguous():
            p.data = p.data.contiguous()
    step, tokens_seen, elapsed = 0, 0, 0.0
    last_eval = (float("nan"), float("nan"))
    state = None
    if resume and (ckpt := latest_checkpoint(run.path)) is not None:
        state = load_train_state(ckpt)
        model.load_state_dict(read_safetensors(ckpt / "model.safetensors"), strict=False)
    wrapped = distributed.wrap(model, device, cfg.speed.fsdp)
    optimizer = make_optimizer(model, cfg, device)
    if state is not None:
        distributed.load_optimizer_state(model, optimizer, state["optimizer"])
        if d.is_main:  # the saved RNG state is rank 0's; other ranks keep their own seeds
            _set_rng_state(state["rng"])
        step, tokens_seen, elapsed = state["step"], state["tokens_seen"], state["elapsed"]
        last_eval = tuple(state["last_eval"])  # type: ignore[assignment]
    if d.is_main:  # forget what an attempt logged after its last checkpoint (or its first)
        run.truncate_metrics(step)
        run.truncate_samples(step)
        if resume:
            say_resumed(run, step, cfg, train_batches.per_epoch, state is not None)
    if step >= cfg.max_steps:
        return TrainResult(step, tokens_seen, *last_eval, elapsed)
    if cfg.speed.compile:
        model.compile(backend=cfg.speed.compile_backend)
    record_metric = run.log if d.is_main else lambda record: None
    peak = peak_flops(device, cfg.speed.peak_tflops)

    def checkpoint() -> None:
        weights = distributed.model_state(model)  # collective under FSDP
        opt_state = distributed.optimizer_state(model, optimizer)
        if d.is_main:
            state = {
                "step": step,
                "tokens_seen": tokens_seen,
                "elapsed": elapsed,
                "last_eval": list(last_eval),
                "optimizer": opt_state,
                "rng": _rng_state(),
                "train_config": cfg.to_json(),
            }
            save_checkpoint(
                run.path,
                step,
                model,
                state,
                meta,
                keep=cfg.train.keep_checkpoints,
                weights=weights,
                tokenizer=tokenizer,
            )
        distributed.barrier()

    def next_batch() -> Any:
        return to_device(distributed.rows(next(batches), d), device, cfg.speed.pin_memory)

    def evaluate(source: BatchSource) -> float:
        # Every process evaluates the same batches, so all agree without communication.
        return evaluate_loss(
            wrapped, source.first(cfg.train.eval_batches), loss_fn, device, cfg.precision
        )

    batches = train_batches.iterate(step * cfg.train.grad_accum)
    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not d.is_main,
    )
    window_tokens, window_start = 0, time.perf_counter()
    pending = next_batch()
    with sigint_flag() as interrupted, bar:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = cfg.train.lr * lr_factor(step, cfg)
            step_loss = torch.zeros((), device=device)
            for micro in range(cfg.train.grad_accum):
                batch = pending
                last = micro == cfg.train.grad_accum - 1
                with (
                    nullcontext() if last else distributed.no_grad_sync(wrapped),
                    autocast(device, cfg.precision),
                ):
                    loss, _n = loss_fn(wrapped, batch)
                    (loss / cfg.train.grad_accum).backward()
                # Read the next batch while the accelerator works through this one.
                pending = next_batch()
                step_loss += loss.detach().float() / cfg.train.grad_accum
                # ids (B, T) or hidden states (B, T, D); every process holds B / world rows
                n_tokens = math.prod(batch[0].shape[:2]) * d.world
                tokens_seen += n_tokens
                window_tokens += n_tokens
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            mean_loss, stop = distributed.reduce_step(float(step_loss), interrupted.is_set())
            elapsed += time.perf_counter() - t0
            if not math.isfinite(mean_loss):
                raise GptlabError(f"training loss became {mean_loss} at step {step}; lower --lr")
            if step % cfg.log_interval == 0:
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0, now
                record = {
                    "kind": "train",
                    "step": step,
                    "loss": mean_loss,
                    "lr": optimizer.param_groups[0]["lr"],
                    "tokens": tokens_seen,
                    "tokens_per_s": round(tps, 1),
                }
                if peak:
                    seq = batch[0].shape[1]
                    mfu = tps * flops_per_token(model, seq) / (peak * d.world)
                    record["mfu"] = float(f"{mfu:.4g}")
                record_metric(record)
                bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tps:,.0f}")
            bar.update(1)
            # Evaluate on the fixed schedule only, so an interrupted and resumed run logs
            # exactly what an uninterrupted one does; checkpoint there and when stopping.
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                train_loss, val_loss = evaluate(train_batches), evaluate(val_batches)
                last_eval = (train_loss, val_loss)
                record = {
                    "kind": "eval",
                    "step": step,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                }
                line = f"step {step}: train loss {train_loss:.3f}, val loss {val_loss:.3f}"
                if language_model:
                    record["train_ppl"] = perplexity(train_loss)
                    record["val_ppl"] = perplexity(val_loss)
                    line += f" (ppl {perplexity(val_loss):.1f})"
                record_metric({**record, "tokens": tokens_seen})
                if d.is_main:
                    bar.write(line)
                if on_eval is not None:
                    on_eval(step)
                checkpoint()
            elif stop or step == stop_after:
                checkpoint()
            if stop:
                raise Interrupted(
                    f"interrupted at step {step}; checkpoint saved in "
                    f"{run.path}/checkpoints (rerun with --resume to continue)"
                )
            if step == stop_after:
                break
    return TrainResult(step, tokens_seen, last_eval[0], last_eval[1], elapsed)
