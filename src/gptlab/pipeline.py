"""The main job: the whole journey of a small LLM in one resumable run folder.

RUN/config.json     the pipeline's configuration (a rerun must use the same base, seed, size)
RUN/data/           the data subsets of a --tiny run (a full run uses the bundled files)
RUN/base/           the base model: a from-scratch pretraining run in base/pretrain/ (with its
                    corpus), or a pointer to OpenAI's GPT-2 weights; samples.json
RUN/classify/       SMS spam classification fine-tuning (gptlab.classify)
RUN/instruct/       instruction fine-tuning (gptlab.instruct); the test split in test.json
RUN/respond/        the instruction model's responses to the test split (responses.json)
RUN/judge/          the judge's scores (gptlab.judge), or skipped.json when no judge answered
RUN/report.md       every stage's metrics, plots, samples, timings, hardware, commands
RUN/results.json    the headline metrics, written last: its presence means the job finished

A stage is complete iff its folder holds results.json, which each stage writes atomically as
its last step, so a killed stage is never taken for a finished one. Running the same command
again skips complete stages and resumes the others from their checkpoints (training) or
progress files (responses); `force` reruns a stage and the stages built on it.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptlab.classify import ClassifierConfig, balance, finetune_classifier, load_sms_spam, split
from gptlab.config import OPENAI_SIZES
from gptlab.data import bundled
from gptlab.errors import GptlabError, Interrupted
from gptlab.generation import Sampling, generate_text
from gptlab.hub import ensure_pretrained, resolve_model
from gptlab.instruct import (
    InstructConfig,
    entry_prompt,
    finetune_instruct,
    load_entries,
    respond,
    split_entries,
)
from gptlab.io import atomic_write_json, atomic_write_text, read_json, read_json_object, read_utf8
from gptlab.judge import JudgeConfig, JudgeUnavailable, evaluate_responses
from gptlab.pretrain import PretrainConfig, pretrain
from gptlab.report import write_report
from gptlab.runs import RunDir
from gptlab.training import pick_device

log = logging.getLogger("gptlab")

STAGES = ("base", "classify", "instruct", "respond", "judge")
# Each stage's inputs: forcing a stage also reruns the stages built on it.
NEEDS = {"classify": "base", "instruct": "base", "respond": "instruct", "judge": "respond"}
BASES = ("auto", "scratch", *OPENAI_SIZES)
RESULTS = "results.json"


@dataclass(frozen=True)
class Recipe:
    """The settings of every stage for one kind of run."""

    # base (scratch only): pretraining on the bundled story plus the tasks' training text
    scratch_preset: str = "gpt-micro"
    pretrain_epochs: int = 2
    pretrain_max_steps: int | None = None  # overrides the epochs
    pretrain_batch_size: int = 8
    pretrain_context: int = 256
    pretrain_lr: float = 1e-3
    pretrain_eval_interval: int = 50
    pretrain_eval_batches: int | None = 20
    # spam classification
    classify_epochs: int = 5
    classify_batch_size: int = 8
    classify_lr: float = 5e-5
    classify_trainable: str = "last-block"
    # instruction fine-tuning and responses
    instruct_epochs: int = 2
    instruct_max_steps: int | None = None
    instruct_batch_size: int = 8
    instruct_lr: float = 5e-5
    instruct_eval_interval: int = 50
    response_tokens: int = 256
    sample_tokens: int = 30
    # data subsets of tiny runs (other runs use every example)
    spam_per_class: int = 0
    instructions: int = 0


# The book's recipe for OpenAI's weights (chapters 6 and 7).
PRETRAINED = Recipe()
# From scratch on a 2-core CPU: the whole pipeline in under 45 minutes (docs/pipeline.md).
SCRATCH = Recipe(
    pretrain_epochs=1,
    pretrain_eval_interval=20,
    pretrain_eval_batches=10,
    classify_epochs=3,
    classify_lr=3e-4,
    classify_trainable="all",
    instruct_epochs=2,
    instruct_lr=5e-4,
    response_tokens=64,
)
# Seconds per stage: for tests and a first look at every artifact.
TINY = Recipe(
    scratch_preset="gpt-nano",
    pretrain_epochs=1,
    pretrain_max_steps=8,
    pretrain_batch_size=4,
    pretrain_context=64,
    pretrain_eval_interval=4,
    pretrain_eval_batches=2,
    classify_epochs=2,
    classify_batch_size=4,
    classify_lr=1e-3,
    instruct_max_steps=6,
    instruct_batch_size=4,
    instruct_lr=1e-3,
    instruct_eval_interval=3,
    response_tokens=8,
    sample_tokens=8,
    spam_per_class=20,
    instructions=40,
)
SAMPLE_PROMPTS = ("Every effort moves you", "Hey, are we still on for")


@dataclass
class PipelineConfig:
    out: Path = Path("runs/pipeline")
    base: str = "auto"  # auto, scratch, or an OpenAI GPT-2 size
    tiny: bool = False
    seed: int = 123
    device: str = "auto"
    judge_model: str = "llama3.1:8b"
    judge_url: str = "http://localhost:11434"
    judge_api: str = "ollama"
    weights_cache: Path | None = None  # None: the weights module's default cache
    weights_url: str | None = None  # None: OpenAI's public bucket
    force: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise GptlabError(f"unknown --base {self.base!r}; choose one of {', '.join(BASES)}")
        for stage in self.force:
            if stage not in STAGES:
                raise GptlabError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")

    def to_json(self) -> dict[str, Any]:
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(self).items()
        }


# What a rerun must keep: the rest (device, judge, cache) may change between invocations.
IDENTITY = ("base", "tiny", "seed")


@dataclass
class Context:
    """What the stages of one invocation share."""

    c: PipelineConfig
    run: RunDir
    device: torch.device
    spam: Path | None  # None: the bundled collection
    instructions: Path | None  # None: the bundled instruction data

    @property
    def out(self) -> Path:
        return self.run.path

    def recipe(self, base: str) -> Recipe:
        if self.c.tiny:
            return TINY
        return SCRATCH if base == "scratch" else PRETRAINED

    def base_results(self) -> dict[str, Any]:
        return read_results(self.out / "base")


def read_results(stage_dir: Path) -> dict[str, Any]:
    return read_json_object(stage_dir / RESULTS)


def is_done(stage_dir: Path) -> bool:
    return (stage_dir / RESULTS).is_file()


def with_dependents(stages: Sequence[str]) -> list[str]:
    """The given stages plus every stage that (transitively) needs one of them."""
    chosen = set(stages)
    for stage in STAGES:
        if NEEDS.get(stage) in chosen:
            chosen.add(stage)
    return [s for s in STAGES if s in chosen]


# ---- data ------------------------------------------------------------------------------------


def write_tiny_data(out: Path, per_class: int, n_entries: int) -> tuple[Path, Path]:
    """The first `per_class` messages of each spam class and the first `n_entries` instruction
    entries, as files in RUN/data, so a tiny run exercises the real loaders on little data."""
    spam_path, instr_path = out / "data" / "sms.tsv", out / "data" / "instructions.json"
    if not spam_path.is_file():
        with bundled("SMSSpamCollection") as p:
            lines = read_utf8(p).splitlines()
        counts: Counter[str] = Counter()
        rows = []
        for line in lines:
            label = line.split("\t", 1)[0]
            if counts[label] < per_class:
                counts[label] += 1
                rows.append(line)
        atomic_write_text(spam_path, "\n".join(rows) + "\n")
    if not instr_path.is_file():
        atomic_write_json(instr_path, load_entries(None)[:n_entries])
    return spam_path, instr_path


def task_texts(spam: Path | None, instructions: Path | None, seed: int) -> list[str]:
    """The unlabelled text the downstream tasks may train on, split exactly as they split it:
    the spam training messages and the ham left out by class balancing, and the formatted
    instruction training entries. Never a validation or test example."""
    data = load_sms_spam(spam)
    kept, left_out = balance(data.examples, seed)
    train_ex, _, _ = split(kept, seed)
    train_entries, _, _ = split_entries(load_entries(instructions), seed)
    texts = [text for text, _ in train_ex + left_out]
    texts += [entry_prompt(e) + e["output"] for e in train_entries]
    return texts


# ---- stages ----------------------------------------------------------------------------------


def resolve_base(ctx: Context) -> tuple[str, str]:
    """(base, note): `auto` becomes gpt2-small when its weights are cached or downloadable,
    otherwise scratch, saying why. The choice is kept in RUN/base/choice.json so a rerun
    never switches base halfway."""
    choice_path = ctx.out / "base" / "choice.json"
    if choice_path.is_file():
        choice = read_json_object(choice_path)
        return choice["base"], choice["note"]
    base, note = ctx.c.base, ""
    if base == "auto":
        try:
            ensure_pretrained("gpt2-small", ctx.c.weights_cache, ctx.c.weights_url)
            base, note = "gpt2-small", "auto: gpt2-small weights are available"
        except GptlabError as exc:
            base = "scratch"
            note = f"auto: gpt2-small weights unavailable ({exc}); pretrained from scratch instead"
            print(f"gptlab pipeline: {note}")
    atomic_write_json(choice_path, {"requested": ctx.c.base, "base": base, "note": note})
    return base, note


def stage_base(ctx: Context) -> dict[str, Any]:
    base, note = resolve_base(ctx)
    recipe = ctx.recipe(base)
    stage = ctx.out / "base"
    results: dict[str, Any] = {"task": "base", "base": base, "note": note}
    if base == "scratch":
        pre = stage / "pretrain"
        corpus = pre / "corpus.txt"
        resume = (pre / "config.json").is_file()
        if not resume:
            with bundled("the-verdict.txt") as p:
                story = read_utf8(p)
            texts = task_texts(ctx.spam, ctx.instructions, ctx.c.seed)
            random.Random(ctx.c.seed).shuffle(texts)
            atomic_write_text(corpus, "<|endoftext|>".join([story, *texts]))
        if not is_done(pre):
            pretrain(
                PretrainConfig(
                    out=pre,
                    corpus=corpus,
                    preset=recipe.scratch_preset,
                    context=recipe.pretrain_context,
                    batch_size=recipe.pretrain_batch_size,
                    epochs=recipe.pretrain_epochs,
                    max_steps=recipe.pretrain_max_steps,
                    lr=recipe.pretrain_lr,
                    warmup_steps=recipe.pretrain_eval_interval,
                    eval_interval=recipe.pretrain_eval_interval,
                    eval_batches=recipe.pretrain_eval_batches,
                    sample_tokens=recipe.sample_tokens,
                    seed=ctx.c.seed,
                    device=str(ctx.device),
                ),
                resume=resume,
            )
        model_dir = pre / "model"
        results.update(
            {k: v for k, v in read_results(pre).items() if k != "task"}, corpus=str(corpus)
        )
    else:
        model_dir = ensure_pretrained(base, ctx.c.weights_cache, ctx.c.weights_url)
    model, _ = resolve_model(model_dir, device=str(ctx.device))
    sampling = Sampling(max_new_tokens=recipe.sample_tokens)
    continuations = generate_text(model.to(ctx.device), list(SAMPLE_PROMPTS), sampling)
    samples = [{"prompt": p, "text": t} for p, t in zip(SAMPLE_PROMPTS, continuations, strict=True)]
    atomic_write_json(stage / "samples.json", samples)
    results.update(model=str(model_dir), params=model.num_params())
    return results


def stage_classify(ctx: Context) -> dict[str, Any]:
    base = ctx.base_results()
    recipe = ctx.recipe(base["base"])
    out = ctx.out / "classify"
    return finetune_classifier(
        ClassifierConfig(
            out=out,
            base=base["model"],
            data=ctx.spam,
            epochs=recipe.classify_epochs,
            batch_size=recipe.classify_batch_size,
            lr=recipe.classify_lr,
            trainable=recipe.classify_trainable,
            seed=ctx.c.seed,
            device=str(ctx.device),
        ),
        resume=(out / "config.json").is_file(),
    )


def stage_instruct(ctx: Context) -> dict[str, Any]:
    base = ctx.base_results()
    recipe = ctx.recipe(base["base"])
    out = ctx.out / "instruct"
    return finetune_instruct(
        InstructConfig(
            out=out,
            base=base["model"],
            data=ctx.instructions,
            epochs=recipe.instruct_epochs,
            max_steps=recipe.instruct_max_steps,
            batch_size=recipe.instruct_batch_size,
            lr=recipe.instruct_lr,
            eval_interval=recipe.instruct_eval_interval,
            sample_tokens=recipe.sample_tokens,
            seed=ctx.c.seed,
            device=str(ctx.device),
        ),
        resume=(out / "config.json").is_file(),
    )


def stage_respond(ctx: Context) -> dict[str, Any]:
    recipe = ctx.recipe(ctx.base_results()["base"])
    instruct = ctx.out / "instruct"
    path = respond(
        str(instruct / "model"),
        instruct / "test.json",
        ctx.out / "respond" / "responses.json",
        Sampling(max_new_tokens=recipe.response_tokens),
        device=str(ctx.device),
    )
    entries = read_json(path)
    words = [len(e["model_response"].split()) for e in entries]
    return {
        "task": "respond",
        "responses": str(path),
        "n_responses": len(entries),
        "max_new_tokens": recipe.response_tokens,
        "mean_response_words": sum(words) / max(len(words), 1),
        "empty_responses": words.count(0),
    }


def judge_command(c: PipelineConfig) -> str:
    """The command that (re)runs the judge stage of this run folder."""
    return (
        f"gptlab pipeline --out {c.out} --judge-model {c.judge_model} "
        f"--judge-url {c.judge_url} --judge-api {c.judge_api}"
    )


def stage_judge(ctx: Context) -> dict[str, Any] | None:
    """The judge's scores, or None (skipped, with the reason in judge/skipped.json) when no
    judge answers: the next run of the pipeline tries again. Scores already received are kept
    in judge/scores.jsonl, so an interrupted judge only asks about the rest."""
    stage = ctx.out / "judge"
    # The judge logs one record per finished scoring; one from an attempt killed before its
    # results.json would be a duplicate (the scores themselves are kept in scores.jsonl).
    (stage / "metrics.jsonl").unlink(missing_ok=True)
    try:
        results = evaluate_responses(
            JudgeConfig(
                responses=ctx.out / "respond" / "responses.json",
                judge_model=ctx.c.judge_model,
                url=ctx.c.judge_url,
                api=ctx.c.judge_api,
                seed=ctx.c.seed,
                scores=stage / "scores.jsonl",
                out=stage,
            )
        )
    except JudgeUnavailable as exc:
        skipped = {"reason": str(exc), "command": judge_command(ctx.c)}
        atomic_write_json(stage / "skipped.json", skipped)
        print(f"gptlab pipeline: judge skipped ({exc}); once a judge runs: {skipped['command']}")
        return None
    (stage / "skipped.json").unlink(missing_ok=True)
    return results


RUNNERS: dict[str, Callable[[Context], dict[str, Any] | None]] = {
    "base": stage_base,
    "classify": stage_classify,
    "instruct": stage_instruct,
    "respond": stage_respond,
    "judge": stage_judge,
}

# ---- the job ---------------------------------------------------------------------------------


def prepare(c: PipelineConfig) -> RunDir:
    """Create or reopen the run folder; a rerun must keep the base, seed and size."""
    run = RunDir(c.out)
    stored_path = c.out / "config.json"
    if stored_path.is_file():
        stored = read_json_object(stored_path).get("pipeline", {})
        for key in IDENTITY:
            if key in stored and stored[key] != getattr(c, key):
                raise GptlabError(
                    f"{stored_path}: this run was started with {key}={stored[key]!r}, not "
                    f"{getattr(c, key)!r}; rerun with the same flags or choose another --out"
                )
    settings = {k: v for k, v in c.to_json().items() if k != "force"}  # force is for one run
    config = {"task": "pipeline", "pipeline": settings, "judge_command": judge_command(c)}
    run.prepare(config, resume=True)
    return run


def run_pipeline(c: PipelineConfig) -> dict[str, Any]:
    """Run every stage that is not complete yet, then write report.md and results.json."""
    run = prepare(c)
    remove_leftovers(c.out)
    for stage in with_dependents(c.force):
        log.info("--force: rerunning stage %s", stage)
        if (c.out / stage).exists():
            shutil.rmtree(c.out / stage)
    if c.force:
        (c.out / RESULTS).unlink(missing_ok=True)
    spam, instructions = (None, None)
    if c.tiny:
        spam, instructions = write_tiny_data(c.out, TINY.spam_per_class, TINY.instructions)
    ctx = Context(c, run, pick_device(c.device), spam, instructions)
    for stage in STAGES:
        stage_dir = c.out / stage
        if is_done(stage_dir):
            print(f"gptlab pipeline: stage {stage} already complete")
            continue
        print(f"gptlab pipeline: stage {stage} ...")
        stage_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            results = RUNNERS[stage](ctx)
        except Interrupted:
            run.log(time_record(stage, "interrupted", start))
            raise Interrupted(
                f"stopped in stage {stage} after saving its progress; run the same command "
                "again to continue"
            ) from None
        if results is None:
            run.log(time_record(stage, "skipped", start))
            continue
        run.log(time_record(stage, "done", start))
        atomic_write_json(stage_dir / RESULTS, results)
    summary = summarize(c.out)
    write_report(c.out, summary)
    atomic_write_json(c.out / RESULTS, summary)
    return summary


def remove_leftovers(out: Path) -> None:
    """Delete what writes killed halfway left behind: the temporary files of atomic writes and
    checkpoint folders never renamed into place (nothing reads them; they only take space)."""
    for tmp in out.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    for partial in out.rglob(".step-*.partial"):
        shutil.rmtree(partial, ignore_errors=True)


def time_record(stage: str, status: str, start: float) -> dict[str, Any]:
    return {
        "kind": "stage",
        "stage": stage,
        "status": status,
        "seconds": round(time.perf_counter() - start, 3),
    }


# Headline metrics of each stage, as they appear in RUN/results.json.
HEADLINE = {
    "base": ("base", "steps", "val_loss", "val_ppl", "params"),
    "classify": ("test_accuracy", "precision", "recall", "f1", "best_val_accuracy"),
    "instruct": ("steps", "train_loss", "val_loss", "val_ppl"),
    "respond": ("n_responses", "mean_response_words", "empty_responses"),
    "judge": ("judge", "average", "median", "scored", "invalid"),
}


def stage_seconds(out: Path) -> dict[str, float]:
    """Wall seconds per stage, summed over the invocations that ran it (a killed attempt
    logs nothing, so its time is not counted)."""
    seconds: dict[str, float] = {}
    for r in RunDir(out).metrics():
        if r.get("kind") == "stage":
            seconds[r["stage"]] = seconds.get(r["stage"], 0.0) + r["seconds"]
    return seconds


def summarize(out: Path) -> dict[str, Any]:
    stages: dict[str, Any] = {}
    for stage in STAGES:
        if is_done(out / stage):
            results = read_results(out / stage)
            metrics = {k: results[k] for k in HEADLINE[stage] if k in results}
            stages[stage] = {"status": "done", **metrics}
        elif (out / stage / "skipped.json").is_file():
            stages[stage] = {"status": "skipped", **read_json_object(out / stage / "skipped.json")}
        else:
            stages[stage] = {"status": "not run"}
    return {"task": "pipeline", "stages": stages, "seconds": stage_seconds(out)}
