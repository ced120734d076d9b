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

A job hands `train` a `Plan` (model, batches, step count, loss, checkpoint metadata and an
optional `EvalMetrics`, the numbers an evaluation measures beside its losses); the run's
position is a `TrainState` that saves itself into each checkpoint and restores itself from
one. Device facts (the device, autocast, batch moves, peak FLOP/s) are gptlab.device's.
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
from functools import partial
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
from gptlab.model import IGNORE_INDEX, Decoder
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
    count. The model computes it in its forward pass (see Decoder.head_loss); a batch
    without targets (prompts cut by --max-length and masked) gives 0, not NaN.

    Under torchrun each process holds some rows of the global batch, and instruction rows hold
    different numbers of targets: the loss is scaled so that DDP's average over processes is
    the mean over all the global batch's targets, as one process would compute it."""
    x, y = batch
    n = int((y != IGNORE_INDEX).sum())
    world = distributed.current().world
    return model(x, targets=y) * (world / max(distributed.global_sum(n), 1)), n


def flops_per_token(model: Decoder, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward and backward matmuls) plus the
    attention scores, 12 * layers * width * sequence (PaLM's appendix B estimate)."""
    c = model.cfg
    return 6 * model.num_params() + 12 * c.n_layers * c.emb_dim * seq_len


def apply_speed_flags(model: Decoder, cfg: TrainConfig, device: torch.device) -> None:
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

    def lm_results(self) -> dict[str, Any]:
        """What a language model's results.json says of its training."""
        return {
            "steps": self.step,
            "tokens_seen": self.tokens_seen,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_ppl": perplexity(self.val_loss),
            "train_seconds": self.seconds,
        }


class EvalMetrics(Protocol):
    """Named numbers an evaluation measures beside its losses, from the same forward passes
    (a classifier's accuracy per split; later DPO's reward margins). In evaluation, `loss`
    stands in for the plan's loss function on the batches of `split` ("train", then "val")
    and tallies what it sees; `collect` then returns the numbers and starts the tallies over.
    The loop logs them to metrics.jsonl as one record of kind `kind` and hands them to the
    job's `on_eval`. Every process evaluates the same batches, so their tallies agree."""

    kind: str

    def loss(self, model: nn.Module, batch: Any, split: str) -> tuple[torch.Tensor, int]: ...

    def collect(self, step: int) -> dict[str, Any]: ...


@dataclass
class Plan:
    """What a job hands the training loop."""

    model: Decoder
    train_batches: BatchSource
    val_batches: BatchSource
    max_steps: int  # the job's step count (from its epochs or --max-steps): TrainConfig's
    meta: dict[str, Any] = field(default_factory=dict)  # model folder metadata, in checkpoints
    loss_fn: LossFn = lm_loss
    language_model: bool = True  # its loss is next-token cross-entropy: perplexity means something
    tokenizer: Any = None  # saved in every checkpoint (a gptlab.text tokenizer; None: GPT-2's)
    eval_metrics: EvalMetrics | None = None


OnEval = Callable[[int, dict[str, Any]], None]  # (step, the evaluation's EvalMetrics numbers)


@dataclass
class TrainState:
    """Where a run stands, saved in every checkpoint (train_state.pt, with the optimizer and
    RNG states and the TrainConfig) and restored from it on --resume, so a resumed run goes on
    exactly as one never interrupted."""

    step: int = 0
    tokens_seen: int = 0
    elapsed: float = 0.0  # seconds spent in optimizer steps
    last_eval: tuple[float, float] = (math.nan, math.nan)  # (train, val) loss

    @classmethod
    def restore(
        cls, saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> TrainState:
        """The state a checkpoint's train_state.pt holds; puts its optimizer state into
        `optimizer` and, on rank 0, its RNG state into torch (the saved RNG state is rank 0's;
        other ranks keep their own seeds)."""
        distributed.load_optimizer_state(model, optimizer, saved["optimizer"])
        if distributed.current().is_main:
            _set_rng_state(saved["rng"])
        return cls(saved["step"], saved["tokens_seen"], saved["elapsed"], tuple(saved["last_eval"]))

    def save(
        self, run: RunDir, plan: Plan, optimizer: torch.optim.Optimizer, cfg: TrainConfig
    ) -> None:
        """Checkpoint this step: every process takes part (a collective under FSDP), rank 0
        writes checkpoints/step-NNNNNN/ (see gptlab.checkpoints.save_checkpoint)."""
        weights = distributed.model_state(plan.model)
        opt_state = distributed.optimizer_state(plan.model, optimizer)
        if distributed.current().is_main:
            saved = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "elapsed": self.elapsed,
                "last_eval": list(self.last_eval),
                "optimizer": opt_state,
                "rng": _rng_state(),
                "train_config": cfg.to_json(),
            }
            keep = max(1, cfg.train.keep_checkpoints)  # the newest, for --resume
            save_checkpoint(
                run.path, self.step, plan.model, saved, plan.meta, keep=keep, weights=weights,
                tokenizer=plan.tokenizer,
            )  # fmt: skip
        distributed.barrier()

    def result(self) -> TrainResult:
        return TrainResult(self.step, self.tokens_seen, *self.last_eval, self.elapsed)


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
    plan: Plan,
    cfg: TrainConfig,
    run: RunDir,
    device: torch.device,
    *,
    resume: bool = False,
    on_eval: OnEval | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train `plan.model` for `cfg.max_steps` optimizer steps, evaluating every
    `cfg.eval_interval` steps and checkpointing there when due (`_Loop.checkpoint_due`).
    `stop_after` ends the call early at that step, after its checkpoint, as an interruption
    would (used to split a run in two). Under torchrun every
    process calls this; `on_eval` runs on all of them (FSDP needs every rank in a forward).
    Perplexity is logged only for a `plan.language_model`: of a classifier's loss it means
    nothing. Checkpoints hold `plan.tokenizer` (one other than GPT-2's) beside the model."""
    d, model = distributed.current(), plan.model
    _place(model, cfg, device, d.rank)
    checkpoint = latest_checkpoint(run.path) if resume else None
    saved = load_train_state(checkpoint) if checkpoint is not None else None
    if checkpoint is not None:
        model.load_state_dict(read_safetensors(checkpoint / "model.safetensors"), strict=False)
    wrapped = distributed.wrap(model, device, cfg.speed.fsdp)
    optimizer = make_optimizer(model, cfg, device)
    state = TrainState() if saved is None else TrainState.restore(saved, model, optimizer)
    if d.is_main:  # forget what an attempt logged after its last checkpoint (or its first)
        run.truncate_metrics(state.step)
        run.truncate_samples(state.step)
        if resume:
            say_resumed(run, state.step, cfg, plan.train_batches.per_epoch, checkpoint is not None)
    if state.step >= cfg.max_steps:
        return state.result()
    if cfg.speed.compile:
        model.compile(backend=cfg.speed.compile_backend)
    return _Loop(plan, cfg, run, device, wrapped, optimizer, state).run(on_eval, stop_after)


def _place(model: Decoder, cfg: TrainConfig, device: torch.device, rank: int) -> None:
    """Seed, speed flags, and the model on `device` in training mode with contiguous weights."""
    torch.manual_seed(cfg.train.seed + rank)  # ranks draw different dropout masks
    apply_speed_flags(model, cfg, device)
    model.to(device).train()
    # Every weight contiguous: fused AdamW copies other layouts at each step and FSDP refuses
    # them (a model read from a Hugging Face file holds transposed views of it).
    for p in model.parameters():
        if not p.is_contiguous():
            p.data = p.data.contiguous()


class _Loop:
    """The steps of one `train` call, from `state.step` to the plan's last (or `stop_after`):
    its parts share the plan, the wrapped model, the optimizer and the state."""

    def __init__(
        self,
        plan: Plan,
        cfg: TrainConfig,
        run: RunDir,
        device: torch.device,
        wrapped: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: TrainState,
    ) -> None:
        self.plan, self.cfg, self.run_dir, self.device = plan, cfg, run, device
        self.wrapped, self.optimizer, self.state = wrapped, optimizer, state
        self.d = distributed.current()
        self.peak = peak_flops(device, cfg.speed.peak_tflops)
        self.batches = plan.train_batches.iterate(state.step * cfg.train.grad_accum)
        self.pending = self.next_batch()  # read ahead, while the accelerator works
        self.window_tokens, self.window_start = 0, time.perf_counter()  # tokens/s window
        self.seq_len = 0  # of the latest batch, for MFU
        self.saved_at = state.elapsed  # training seconds at the last checkpoint (or the start)

    def log(self, record: dict[str, Any]) -> None:
        if self.d.is_main:
            self.run_dir.log(record)

    def next_batch(self) -> Any:
        rows = distributed.rows(next(self.batches), self.d)
        return to_device(rows, self.device, self.cfg.speed.pin_memory)

    def run(self, on_eval: OnEval | None, stop_after: int | None) -> TrainResult:
        cfg, state = self.cfg, self.state
        bar = tqdm(
            total=cfg.max_steps,
            initial=state.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not self.d.is_main,
        )
        with sigint_flag() as interrupted, bar:
            while state.step < cfg.max_steps:
                loss, stop = self.step(interrupted.is_set())
                if state.step % cfg.log_interval == 0:
                    self.log_train(loss, bar)
                bar.update(1)
                # Evaluate on the fixed schedule only, so an interrupted and resumed run logs
                # exactly what an uninterrupted one does; checkpoint there when due, and when
                # stopping.
                if state.step % cfg.eval_interval == 0 or state.step == cfg.max_steps:
                    self.evaluate(bar, on_eval)
                    if self.checkpoint_due(stop or state.step == stop_after):
                        self.save()
                elif stop or state.step == stop_after:
                    self.save()
                if stop:
                    raise Interrupted(
                        f"interrupted at step {state.step}; checkpoint saved in "
                        f"{self.run_dir.path}/checkpoints"
                    )
                if state.step == stop_after:
                    break
        return state.result()

    def checkpoint_due(self, stopping: bool) -> bool:
        """At an evaluation: always when stopping; at the end only for a run that keeps
        checkpoints (one killed before its results resumes, exactly, from the one before);
        otherwise once --checkpoint-minutes of training have passed since the last. Every
        process decides alike (a checkpoint is a collective under FSDP)."""
        cfg, state = self.cfg, self.state
        if stopping:
            return True
        if state.step == cfg.max_steps:
            return bool(cfg.train.keep_checkpoints)
        due = state.elapsed - self.saved_at >= cfg.train.checkpoint_minutes * 60
        return distributed.global_sum(int(due)) > 0

    def save(self) -> None:
        self.state.save(self.run_dir, self.plan, self.optimizer, self.cfg)
        self.saved_at = self.state.elapsed

    def step(self, interrupted: bool) -> tuple[float, bool]:
        """One optimizer step over `grad_accum` micro-batches: (its loss, the mean over every
        process, and whether any process was interrupted)."""
        cfg, state = self.cfg, self.state
        t0 = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.train.lr * lr_factor(state.step, cfg)
        step_loss = torch.zeros((), device=self.device)
        for micro in range(cfg.train.grad_accum):
            step_loss += self.micro_step(last=micro == cfg.train.grad_accum - 1)
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.plan.model.parameters(), cfg.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        mean_loss, stop = distributed.reduce_step(float(step_loss), interrupted)
        state.elapsed += time.perf_counter() - t0
        if not math.isfinite(mean_loss):
            raise GptlabError(f"training loss became {mean_loss} at step {state.step}; lower --lr")
        return mean_loss, stop

    def micro_step(self, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch (gradients synchronised on the `last`);
        its share of the step's loss."""
        batch, accum = self.pending, self.cfg.train.grad_accum
        with (
            nullcontext() if last else distributed.no_grad_sync(self.wrapped),
            autocast(self.device, self.cfg.precision),
        ):
            loss, _n = self.plan.loss_fn(self.wrapped, batch)
            (loss / accum).backward()
        self.pending = self.next_batch()
        # ids (B, T) or hidden states (B, T, D); every process holds B / world rows
        n_tokens = math.prod(batch[0].shape[:2]) * self.d.world
        self.state.tokens_seen += n_tokens
        self.window_tokens += n_tokens
        self.seq_len = batch[0].shape[1]
        return loss.detach().float() / accum

    def log_train(self, loss: float, bar: tqdm) -> None:
        """The training record: loss, learning rate, tokens, throughput (and MFU) since the
        last one."""
        now = time.perf_counter()
        tps = self.window_tokens / max(now - self.window_start, 1e-9)
        self.window_tokens, self.window_start = 0, now
        record = {
            "kind": "train",
            "step": self.state.step,
            "loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "tokens": self.state.tokens_seen,
            "tokens_per_s": round(tps, 1),
        }
        if self.peak:
            mfu = tps * flops_per_token(self.plan.model, self.seq_len) / (self.peak * self.d.world)
            record["mfu"] = float(f"{mfu:.4g}")
        self.log(record)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")

    def evaluate(self, bar: tqdm, on_eval: OnEval | None) -> None:
        """Train and validation loss (and the plan's EvalMetrics), logged and shown; then
        the job's `on_eval`."""
        plan, state, step = self.plan, self.state, self.state.step
        train_loss, val_loss = self.eval_loss("train"), self.eval_loss("val")
        state.last_eval = (train_loss, val_loss)
        record = {"kind": "eval", "step": step, "train_loss": train_loss, "val_loss": val_loss}
        line = f"step {step}: train loss {train_loss:.3f}, val loss {val_loss:.3f}"
        if plan.language_model:
            record["train_ppl"] = perplexity(train_loss)
            record["val_ppl"] = perplexity(val_loss)
            line += f" (ppl {perplexity(val_loss):.1f})"
        self.log({**record, "tokens": state.tokens_seen})
        if self.d.is_main:
            bar.write(line)
        extra, metrics = plan.eval_metrics, {}
        if extra is not None:
            metrics = extra.collect(step)
            self.log({"kind": extra.kind, "step": step, **metrics})
        if on_eval is not None:
            on_eval(step, metrics)

    def eval_loss(self, split: str) -> float:
        """Mean loss over the split's first `eval_batches` batches. Every process evaluates
        the same batches, so all agree without communication."""
        source = self.plan.train_batches if split == "train" else self.plan.val_batches
        extra = self.plan.eval_metrics
        loss_fn = self.plan.loss_fn if extra is None else partial(extra.loss, split=split)
        batches = source.first(self.cfg.train.eval_batches)
        return evaluate_loss(self.wrapped, batches, loss_fn, self.device, self.cfg.precision)
