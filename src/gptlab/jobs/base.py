"""The skeleton every training job runs on, written once.

A job (pretraining, classification, instruction fine-tuning) says only what differs: what it
checks and loads before its run folder exists (`prepare`), the model and batches it trains
(`build`, a gptlab.training.Plan), what it does at each evaluation (`on_eval`), its plots,
and its final results.
`TrainingJob.run` does the rest, in this order, for all of them: join torchrun's processes
and pick the device; check the global batch; `prepare` (a mistake here leaves nothing
behind); write config.json (rank 0; refused over an existing run unless resuming); `build`;
`gptlab.training.train`; gather the final weights (a collective under FSDP); then, on rank 0,
the plots and, for a finished run only, results.json as the very last file; then its
checkpoints go, but for the newest --keep-checkpoints N (none by default): the final model
stays in RUN/model.

--resume continues the run in the folder only with the settings it was started with, apart
from those declared resumable (gptlab.settings.resume_conflicts): any other difference is
refused before anything is written, naming each setting. With no run there, it says so and
starts one. A new run that fails before its first checkpoint removes its config.json again,
so the next try, with or without --resume, is not refused.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch

from gptlab import distributed
from gptlab.checkpoints import has_checkpoint, prune_checkpoints, save_model
from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.io import atomic_write_json, read_json_object
from gptlab.lora import apply_lora, merge_lora
from gptlab.model import Decoder
from gptlab.runs import CONFIG, MODEL, RESULTS, RunDir, has_run
from gptlab.settings import resume_conflicts
from gptlab.training import Plan, TrainConfig, TrainResult, train

C = TypeVar("C")

log = logging.getLogger("gptlab")


@dataclass
class Session:
    """One invocation of a job: its processes, device and run folder."""

    d: distributed.Dist
    device: torch.device
    run: RunDir
    resume: bool


class TrainingJob(ABC, Generic[C]):
    """A training job; `c` is its settings (gptlab.settings), with `out`, `train`, `speed`
    and `runtime` fields."""

    task: ClassVar[str]
    loss_title: ClassVar[str]

    def __init__(self, c: C) -> None:
        self.c = c

    def prepare(self, s: Session) -> dict[str, Any]:
        """Check and load what the job needs before its run folder exists; returns the
        sections config.json records beside the settings."""
        return {}

    @abstractmethod
    def build(self, s: Session) -> Plan:
        """The model, batches and step count, once the run folder exists."""

    def on_eval(self, s: Session, plan: Plan, step: int, metrics: dict[str, Any]) -> None:
        """After each evaluation, on every process (FSDP needs all of them in a forward);
        `metrics` are what the plan's EvalMetrics measured (none without)."""

    def plots(self, s: Session) -> None:
        s.run.plot(
            "loss.png",
            {
                "train (per step)": ("train", "loss"),
                "train": ("eval", "train_loss"),
                "validation": ("eval", "val_loss"),
            },
            "cross-entropy loss",
            self.loss_title,
        )

    @abstractmethod
    def results(
        self, s: Session, plan: Plan, result: TrainResult, weights: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """results.json of a finished run (rank 0); `weights` is the full final state."""

    def run(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Run (or resume) the job in its run folder; returns results.json, or {} on other
        ranks and when `stop_after` ended the run early, after that step's checkpoint, as an
        interruption would."""
        # `prepare` and `build` may resolve settings (self.c), so each step reads them anew.
        c: Any = self.c
        with distributed.session(pick_device(c.runtime.device)) as (d, device):
            run = RunDir(c.out)
            fresh = not has_run(run.path)
            if resume and fresh and d.is_main:
                log.warning("--resume: no run in %s yet; starting a new one", run.path)
            s = Session(d, device, run, resume and not fresh)
            distributed.check_global_batch(c.train.batch_size, d)
            sections = self.prepare(s)
            if s.resume:
                self.check_resume(run)
                if (run.path / RESULTS).is_file() and not has_checkpoint(run.path):
                    raise GptlabError(
                        f"{run.path}: this run is finished and kept no checkpoint to continue "
                        "from (--keep-checkpoints 0); start a new run with another --out, "
                        f"from --base {run.path}"
                    )
            distributed.barrier()  # every rank has read the old config.json before it changes
            if d.is_main:
                config = {"task": self.task, "settings": self.c.to_json(), **sections}  # type: ignore[attr-defined]
                run.prepare({**config, "device": str(device), "processes": d.world}, s.resume)
            distributed.barrier()
            try:
                return self.fit(s, stop_after)
            except BaseException:
                if fresh and d.is_main and not has_checkpoint(run.path):
                    (run.path / CONFIG).unlink(missing_ok=True)  # nothing to resume yet
                raise

    def check_resume(self, run: RunDir) -> None:
        """Refuse settings that differ from the saved run's where they change what it trains
        (see gptlab.settings.resume_conflicts)."""
        saved = read_json_object(run.path / CONFIG).get("settings", {})
        if isinstance(saved.get("out"), str):
            saved = moved(saved, Path(saved["out"]), run.path)
        conflicts = resume_conflicts(saved, self.c)  # type: ignore[arg-type]
        if conflicts:
            raise GptlabError(
                f"{run.path / CONFIG}: --resume keeps the saved run's settings: "
                f"{'; '.join(conflicts)} (drop these flags, or choose another --out for a "
                "new run)"
            )

    def fit(self, s: Session, stop_after: int | None) -> dict[str, Any]:
        """`build`, train, and on rank 0 the plots and the results of a finished run."""
        d = s.d
        plan = self.build(s)
        c: Any = self.c
        cfg = TrainConfig(plan.max_steps, c.train, c.speed, c.runtime.precision)
        result = train(
            plan,
            cfg,
            s.run,
            s.device,
            resume=s.resume,
            on_eval=lambda step, metrics: self.on_eval(s, plan, step, metrics),
            stop_after=stop_after,
        )
        finished = result.step >= plan.max_steps
        weights = distributed.model_state(plan.model) if finished else {}
        if not d.is_main:
            return {}
        self.plots(s)
        if not finished:
            return {}
        results = self.results(s, plan, result, weights)
        atomic_write_json(s.run.path / RESULTS, results)
        prune_checkpoints(s.run.path, c.train.keep_checkpoints)
        return results


def add_lora(model: Decoder, c: Any) -> dict[str, Any] | None:
    """LoRA adapters as the fine-tuning settings `c` ask (`lora_rank`, `lora_alpha`,
    `lora_targets`; seeded by the run's seed), and what config.json records of them; None
    without `lora_rank`."""
    if c.lora_rank is None:
        return None
    torch.manual_seed(c.train.seed)
    adapters = apply_lora(model, c.lora_rank, c.lora_alpha, c.lora_targets)
    log.info("LoRA: %s adapter parameters", f"{adapters:,}")
    return {"rank": c.lora_rank, "alpha": c.lora_alpha, "targets": list(c.lora_targets)}


def save_final_model(
    s: Session,
    plan: Plan,
    weights: dict[str, torch.Tensor],
    meta: dict[str, Any],
    lora: dict[str, Any] | None,
) -> Path:
    """RUN/model, the run's final model with its tokenizer and `meta`: with LoRA, the
    adapters merged into the weights first (a plain model, as every verb loads one)."""
    if lora is not None:
        merge_lora(plan.model)
        weights = {}  # the merged model's own state, without adapters
    return save_model(
        plan.model, s.run.path / MODEL, meta, weights or None, tokenizer=plan.tokenizer
    )


def moved(saved: Any, was: Path, now: Path) -> Any:
    """The saved settings of a run started in folder `was` that is now in `now`, its paths
    moved with it: a run folder copied or moved elsewhere (with the folders around it that
    the paths share, such as a pipeline's data) resumes as if it had stayed."""
    old, new = was.parts, now.parts
    tail = 0  # the parts both locations end with
    while tail < min(len(old), len(new)) and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    old_root, new_root = old[: len(old) - tail], new[: len(new) - tail]
    if not old_root or old_root == new_root:
        return saved

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        if isinstance(value, str) and Path(value).parts[: len(old_root)] == old_root:
            return str(Path(*new_root, *Path(value).parts[len(old_root) :]))
        return value

    return rewrite(saved)
