"""The main job: the whole journey of a small LLM in one resumable run folder.

RUN/config.json     the pipeline's configuration (a rerun must use the same base, seed, size)
RUN/data/           the data subsets of a --tiny run (a full run uses the bundled files)
RUN/base/           the base model: a from-scratch pretraining run in base/pretrain/ (with its
                    corpus), or a pointer to OpenAI's GPT-2 weights or to the given model (a
                    .gguf file, a Hugging Face or gptlab folder, of either family, whose own
                    tokenizer every later stage uses); samples.json
RUN/classify/       SMS spam classification fine-tuning (gptlab.jobs.classify)
RUN/instruct/       instruction fine-tuning (gptlab.jobs.instruct); the test split in test.json
RUN/respond/        the instruction model's responses to the test split (responses.json)
RUN/preference/     preference tuning (DPO) of the instruction model on the book's pairs
                    (gptlab.jobs.preference), or skipped.json with --no-preference
RUN/preference-respond/  the preference-tuned model's responses to the same test split
RUN/judge/          the judge's scores (gptlab.judge), or skipped.json when no judge answered
RUN/report.md       every stage's metrics, plots, samples, timings, hardware, commands
RUN/results.json    the headline metrics, written last: its presence means the job finished

Each stage is a small object (`Stage`) that runs one job and asks the other jobs for what it
needs (the texts a base may pretrain on, a finished stage's results). A stage is complete iff
its folder holds results.json (gptlab.runs.is_complete), which each stage writes atomically as
its last step, so a killed stage is never taken for a finished one. Running the same command
again skips complete stages and resumes the others from their checkpoints (training) or
progress files (responses); `force` reruns a stage and the stages built on it.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from gptlab.bench import Options as BenchOptions
from gptlab.bench import at_chance, bench_model, headline
from gptlab.data import bundled
from gptlab.device import pick_device
from gptlab.errors import GptlabError, Interrupted
from gptlab.hub import ensure_pretrained
from gptlab.instructions import load_entries, training_texts
from gptlab.io import atomic_write_json, atomic_write_text, read_json, read_json_object, read_utf8
from gptlab.jobs.classify import finetune_classifier
from gptlab.jobs.instruct import finetune_instruct
from gptlab.jobs.preference import finetune_preference
from gptlab.jobs.pretrain import pretrain_on_texts
from gptlab.judge import JudgeUnavailable
from gptlab.judge_local import evaluate
from gptlab.judge_model import cached_judge
from gptlab.labelled import load_splits
from gptlab.llm import load
from gptlab.preferences import BUNDLED_PAIRS
from gptlab.report import pipeline_command, quote, table, write_report
from gptlab.respond import answer_stats, respond
from gptlab.runs import CONFIG, MODEL, RESULTS, SAMPLES, RunDir, has_run, is_complete
from gptlab.settings import (
    BASES,
    JUDGE_NAME,
    STAGES,
    ClassifierConfig,
    Inference,
    InstructConfig,
    JudgeConfig,
    PipelineConfig,
    PreferenceConfig,
    PretrainConfig,
    Runtime,
    Sampling,
    TrainArgs,
)
from gptlab.tasks.data import DataUnavailable

log = logging.getLogger("gptlab")


@dataclass(frozen=True)
class Recipe:
    """The settings of every stage for one kind of run: the jobs' own argument groups."""

    scratch_preset: str = "gpt-micro"
    pretrain_context: int = 256
    pretrain: TrainArgs = field(
        default_factory=lambda: TrainArgs(
            epochs=2, batch_size=8, lr=1e-3, warmup_steps=50, eval_interval=50, eval_batches=20
        )
    )
    classify_trainable: str = "last-block"
    classify: TrainArgs = field(default_factory=lambda: ClassifierConfig().train)
    instruct: TrainArgs = field(default_factory=lambda: InstructConfig().train)
    instruct_lora_lr: float = 2e-4  # with --instruct-lora (docs/families.md: SmolLM2-135M)
    # DPO on LoRA adapters of this rank (alpha 2 x rank; None: all weights): 160 pairs, a few
    # minutes on a 2-core CPU for SmolLM2-135M (docs/preference.md); one evaluation, at the
    # end, over every held-out pair (14 batches of 8 hold the 109)
    preference: TrainArgs = field(
        default_factory=lambda: PreferenceConfig().train.replace(
            max_steps=20, lr=3e-4, eval_interval=20, eval_batches=14
        )
    )
    preference_lora: int | None = 16
    response_tokens: int = 256
    sample_tokens: int = 30
    bench_limit: int = 50  # documents per benchmark task: about 10% of the pipeline's time
    # data subsets of tiny runs (other runs use every example)
    spam_per_class: int = 0
    instructions: int = 0


# The book's recipe for OpenAI's weights (chapters 6 and 7).
PRETRAINED = Recipe()
# From scratch on a 2-core CPU: the whole pipeline in under 45 minutes (docs/pipeline.md).
SCRATCH = Recipe(
    pretrain=PRETRAINED.pretrain.replace(
        epochs=1, warmup_steps=20, eval_interval=20, eval_batches=10
    ),
    classify=PRETRAINED.classify.replace(epochs=3, lr=3e-4),
    classify_trainable="all",
    instruct=PRETRAINED.instruct.replace(epochs=2, lr=5e-4),
    response_tokens=64,
    bench_limit=100,
)
# A pretrained model from disk (a .gguf file, a Hugging Face or gptlab folder): the book's
# recipe, with the classifier's learning rate that took SmolLM2-135M to 97.0% (5e-5: 96.3%;
# docs/families.md).
MODEL_FILE = replace(PRETRAINED, classify=PRETRAINED.classify.replace(lr=1e-4))
# Seconds per stage: for tests and a first look at every artifact.
TINY = Recipe(
    scratch_preset="gpt-nano",
    pretrain_context=64,
    pretrain=PRETRAINED.pretrain.replace(
        epochs=1, max_steps=8, batch_size=4, warmup_steps=4, eval_interval=4, eval_batches=2
    ),
    classify=PRETRAINED.classify.replace(epochs=2, batch_size=4, lr=1e-3),
    instruct=PRETRAINED.instruct.replace(max_steps=6, batch_size=4, lr=1e-3, eval_interval=3),
    instruct_lora_lr=1e-3,
    preference=PRETRAINED.preference.replace(
        max_steps=4, batch_size=4, eval_interval=2, eval_batches=2, lr=1e-3
    ),
    preference_lora=4,
    response_tokens=8,
    sample_tokens=8,
    bench_limit=4,
    spam_per_class=20,
    instructions=40,
)
SAMPLE_PROMPTS = ("Every effort moves you", "Hey, are we still on for")


def is_model_path(base: str) -> bool:
    """Whether `--base` names a model on disk (a .gguf file, a model or run folder) rather than
    one of the named bases (auto, scratch, OpenAI's GPT-2 sizes)."""
    return base not in BASES


def check_base(base: str) -> None:
    """A `--base` path that does not exist is one line, before any run folder is written."""
    if is_model_path(base) and not Path(base).exists():
        raise GptlabError(
            f"{base}: no such file or folder; --base takes {', '.join(BASES)}, a .gguf file "
            "or a model folder"
        )


def recipe_for(c: PipelineConfig, base: str) -> Recipe:
    """The stages' settings for the chosen base."""
    if c.tiny:
        return TINY
    if base == "scratch":
        return SCRATCH
    return MODEL_FILE if is_model_path(base) else PRETRAINED


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

    def base(self) -> dict[str, Any]:
        """The base stage's results (every later stage builds on it)."""
        return read_json_object(BaseStage(self).results)

    def recipe(self) -> Recipe:
        return recipe_for(self.c, self.base()["base"])

    def runtime(self) -> Runtime:
        return Runtime(device=str(self.device))

    def train_args(self, recipe: TrainArgs) -> TrainArgs:
        """A stage's training settings: its recipe with this run's seed and checkpoints."""
        return recipe.replace(
            seed=self.c.seed,
            keep_checkpoints=self.c.keep_checkpoints,
            checkpoint_minutes=self.c.checkpoint_minutes,
        )


class Stage(ABC):
    """One step of the pipeline, in its own folder RUN/<name>/. Each stage declares the files
    it writes as properties (results.json, and the stage's own), and its neighbours and the
    report read them there, never by a name of their own."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # forcing one of these reruns this stage too
    headline: ClassVar[tuple[str, ...]]  # the metrics RUN/results.json keeps

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @property
    def folder(self) -> Path:
        return self.ctx.out / self.name

    @property
    def results(self) -> Path:
        """Written last, atomically: the stage is complete when it exists."""
        return self.folder / RESULTS

    @property
    def skipped(self) -> Path:
        """Why a stage that may be skipped was, and the command that runs it later."""
        return self.folder / "skipped.json"

    def skip(self, reason: str, **settings: Any) -> None:
        """Record in skipped.json why the stage did not run and the command that runs it (the
        same run with `settings` changed); the next run of the pipeline tries again."""
        command = pipeline_command({**self.ctx.c.to_json(), **settings})
        atomic_write_json(self.skipped, {"reason": reason, "command": command})
        print(f"gptlab pipeline: {self.name} skipped ({reason}); to run it: {command}")

    @abstractmethod
    def run(self) -> dict[str, Any] | None:
        """Run (or resume) the stage; its results, or None when it was skipped."""

    def report_lines(self) -> list[str]:
        """Samples for report.md beyond the stage's metrics and plots."""
        return []


class BaseStage(Stage):
    name = "base"
    headline = ("base", "family", "steps", "val_loss", "val_ppl", "params")

    @property
    def choice(self) -> Path:
        """The base `auto` became, kept so a rerun never switches base halfway."""
        return self.folder / "choice.json"

    @property
    def pretrain_run(self) -> Path:
        """The pretraining run of a from-scratch base (its model in pretrain/model)."""
        return self.folder / "pretrain"

    @property
    def samples(self) -> Path:
        """The base model's greedy continuations of SAMPLE_PROMPTS."""
        return self.folder / "samples.json"

    def choose(self) -> tuple[str, str]:
        """(base, note): `auto` becomes gpt2-small when its weights are cached or
        downloadable, otherwise scratch, saying why. The choice is kept in choice.json so a
        rerun never switches base halfway."""
        c, choice_path = self.ctx.c, self.choice
        if choice_path.is_file():
            choice = read_json_object(choice_path)
            return choice["base"], choice["note"]
        base, note = c.base, ""
        if is_model_path(base):
            base = str(Path(base).resolve())  # later stages may run from another directory
        elif base == "auto":
            try:
                ensure_pretrained("gpt2-small", c.weights_cache, c.weights_url)
                base, note = "gpt2-small", "auto: gpt2-small weights are available"
            except GptlabError as exc:
                base = "scratch"
                note = f"auto: gpt2-small weights unavailable ({exc}); pretrained from scratch "
                note += "instead"
                print(f"gptlab pipeline: {note}")
        atomic_write_json(choice_path, {"requested": c.base, "base": base, "note": note})
        return base, note

    def corpus_texts(self) -> list[str]:
        """The bundled story plus the unlabelled text the downstream jobs may train on, as
        they split it themselves: never a validation or test example."""
        ctx = self.ctx
        seed = ctx.c.seed
        with bundled("the-verdict.txt") as p:
            story = read_utf8(p)
        spam = load_splits(ClassifierConfig(data=ctx.spam, train=TrainArgs(seed=seed)))
        texts = spam.unlabelled_texts()
        texts += training_texts(InstructConfig(data=ctx.instructions, train=TrainArgs(seed=seed)))
        random.Random(seed).shuffle(texts)
        return [story, *texts]

    def pretrain_scratch(self, recipe: Recipe) -> dict[str, Any]:
        config = PretrainConfig(
            out=self.folder / "pretrain",
            preset=recipe.scratch_preset,
            context=recipe.pretrain_context,
            sample_tokens=recipe.sample_tokens,
            train=self.ctx.train_args(recipe.pretrain),
            runtime=self.ctx.runtime(),
        )
        results = pretrain_on_texts(config, self.corpus_texts)
        return {
            **{k: v for k, v in results.items() if k != "task"},
            "corpus": str(config.out / "corpus.txt"),
        }

    def run(self) -> dict[str, Any]:
        ctx = self.ctx
        base, note = self.choose()
        recipe = recipe_for(ctx.c, base)
        results: dict[str, Any] = {"task": "base", "base": base, "note": note}
        if base == "scratch":
            results.update(self.pretrain_scratch(recipe))
            model_dir: str | Path = self.pretrain_run / MODEL
        elif is_model_path(base):
            model_dir = base
        else:
            model_dir = ensure_pretrained(base, ctx.c.weights_cache, ctx.c.weights_url)
        llm = load(model_dir, device=ctx.device, quantize=ctx.c.device.quantize)
        prompts = list(SAMPLE_PROMPTS)
        continuations = llm.generate(prompts, max_new_tokens=recipe.sample_tokens)
        samples = [{"prompt": p, "text": t} for p, t in zip(prompts, continuations, strict=True)]
        atomic_write_json(self.samples, samples)
        return {
            **results,
            "model": str(model_dir),
            "family": llm.family,
            "tokenizer": llm.tokenizer.name,
            "chat_template": llm.tokenizer.chat_template is not None,
            "params": llm.model.num_params(),
        }

    def report_lines(self) -> list[str]:
        if not self.samples.is_file():
            return []
        samples = read_json(self.samples)
        base = self.ctx.base()
        lines = []
        if is_model_path(base["base"]):
            template = "with" if base["chat_template"] else "without"
            lines += [
                f"Base model: `{base['model']}`, a {base['family']}-family model of "
                f"{base['params']:,} parameters; every stage uses its own tokenizer "
                f"({base['tokenizer']}, {template} a chat template).",
                "",
            ]
        lines += ["Greedy continuations of the base model:", ""]
        for s in samples:
            lines += [quote(f"**{s['prompt']}**{s['text']}"), ""]
        stats = answer_stats([s["text"] for s in samples])
        return lines + degenerate_remark(stats, "continuations", base["base"])


class ClassifyStage(Stage):
    name = "classify"
    needs = ("base",)
    headline = ("test_accuracy", "precision", "recall", "f1", "best_val_accuracy", "useless")

    def report_lines(self) -> list[str]:
        """A plain sentence when the classifier learned nothing usable (see
        gptlab.classifier.uselessness)."""
        useless = (
            read_json_object(self.results).get("useless") if is_complete(self.folder) else None
        )
        if not useless:
            return []
        return [f"**This classifier learned nothing usable:** {useless}.", ""]

    def run(self) -> dict[str, Any]:
        ctx = self.ctx
        recipe = ctx.recipe()
        config = ClassifierConfig(
            out=self.folder,
            base=ctx.base()["model"],
            data=ctx.spam,
            trainable=recipe.classify_trainable,
            train=ctx.train_args(recipe.classify),
            runtime=ctx.runtime(),
        )
        return finetune_classifier(config, resume=has_run(self.folder))


class InstructStage(Stage):
    name = "instruct"
    needs = ("base",)
    headline = ("steps", "train_loss", "val_loss", "val_ppl")

    @property
    def model(self) -> Path:
        """The instruction-tuned model folder."""
        return self.folder / MODEL

    @property
    def test_data(self) -> Path:
        """The test split of the instruction data, which the model never trained on."""
        return self.folder / "test.json"

    @property
    def samples(self) -> Path:
        """The sample answers written at each evaluation."""
        return self.folder / SAMPLES

    def run(self) -> dict[str, Any]:
        ctx = self.ctx
        recipe = ctx.recipe()
        base = ctx.base()
        rank, train, lora = ctx.c.instruct_lora, recipe.instruct, {}
        if rank is not None:
            train = train.replace(lr=recipe.instruct_lora_lr)
            lora = {"lora_rank": rank, "lora_alpha": 2.0 * rank}
        config = InstructConfig(
            out=self.folder,
            base=base["model"],
            data=ctx.instructions,
            # a base with a chat template was tuned to it: keep it (respond reads it back)
            prompt_format="chat" if base.get("chat_template") else "alpaca",
            sample_tokens=recipe.sample_tokens,
            train=ctx.train_args(train),
            runtime=ctx.runtime(),
            **lora,
        )
        return finetune_instruct(config, resume=has_run(self.folder))

    def report_lines(self) -> list[str]:
        if not self.samples.is_file() or not is_complete(self.folder):
            return []
        results = read_json_object(self.results)
        lora = results.get("lora")
        trained = (
            f"LoRA adapters of rank {lora['rank']} (alpha {lora['alpha']:g}) on "
            f"{', '.join(lora['targets'])}, merged into the saved model"
            if lora
            else "all weights"
        )
        lines = [
            f"Trained: {trained}; {results['trainable_params']:,} of "
            f"{results['total_params']:,} parameters.",
            "",
        ]
        last = read_utf8(self.samples).strip().splitlines()[-2:]
        return [*lines, "Samples during training (validation entry):", "", "```", *last, "```", ""]


SAMPLE_RESPONSES = 3  # responses shown in report.md


class RespondStage(Stage):
    name = "respond"
    needs = ("instruct",)
    headline = (
        "n_responses",
        "distinct_responses",
        "mean_response_words",
        "empty_responses",
        "degenerate",
    )

    @property
    def responses(self) -> Path:
        """The test split's entries, each with the model's `model_response`."""
        return self.folder / "responses.json"

    def model(self) -> Path:
        """The model that answers."""
        return InstructStage(self.ctx).model

    def run(self) -> dict[str, Any] | None:
        ctx = self.ctx
        tokens = ctx.recipe().response_tokens
        instruct = InstructStage(ctx)
        path = respond(
            str(self.model()),
            instruct.test_data,
            self.responses,
            Sampling(max_new_tokens=tokens),
            device=str(ctx.device),
            quantize=ctx.c.device.quantize,
        )
        stats = answer_stats([e["model_response"] for e in json.loads(read_utf8(path))])
        return {
            "task": "respond",
            "responses": str(path),
            "n_responses": stats["n"],
            "distinct_responses": stats["distinct"],
            "max_new_tokens": tokens,
            "mean_response_words": stats["mean_words"],
            "empty_responses": stats["empty"],
            "degenerate": stats["degenerate"],
        }

    def report_lines(self) -> list[str]:
        if not self.responses.is_file():
            return []
        entries = read_json(self.responses)
        stats = answer_stats([e["model_response"] for e in entries])
        lines = degenerate_remark(stats, "answers", self.ctx.base()["base"])
        lines += ["First responses on the test split:", ""]
        for e in entries[:SAMPLE_RESPONSES]:
            instruction = e["instruction"] + (f"\n{e['input']}" if e.get("input") else "")
            lines += ["Instruction:", "", quote(instruction), ""]
            lines += ["Expected:", "", quote(e.get("output", "")), ""]
            lines += ["Model:", "", quote(e["model_response"]), ""]
        return lines


class PreferenceStage(Stage):
    name = "preference"
    needs = ("instruct",)
    headline = ("steps", "val_accuracy", "val_margin", "val_loss", "train_seconds")

    @property
    def model(self) -> Path:
        """The preference-tuned model folder."""
        return self.folder / MODEL

    @property
    def tiny_pairs(self) -> Path:
        """A tiny run's pairs: the first of the bundled ones, as many as its instructions."""
        return self.folder / "pairs.json"

    def run(self) -> dict[str, Any] | None:
        """DPO of the instruction model on the book's pairs, prompted as it was tuned; or
        None (skipped.json) with --no-preference."""
        ctx = self.ctx
        if not ctx.c.preference:
            return self.skip("turned off by --no-preference", preference=True)
        self.skipped.unlink(missing_ok=True)
        recipe, data = ctx.recipe(), None
        if ctx.c.tiny:
            if not self.tiny_pairs.is_file():
                with bundled(BUNDLED_PAIRS) as p:
                    atomic_write_json(self.tiny_pairs, read_json(p)[: recipe.instructions])
            data = self.tiny_pairs
        rank = recipe.preference_lora
        lora = {} if rank is None else {"lora_rank": rank, "lora_alpha": 2.0 * rank}
        config = PreferenceConfig(
            out=self.folder,
            base=str(InstructStage(ctx).model),
            data=data,
            sample_tokens=recipe.sample_tokens,
            train=ctx.train_args(recipe.preference),
            runtime=ctx.runtime(),
            **lora,
        )
        return finetune_preference(config, resume=has_run(self.folder))

    def report_lines(self) -> list[str]:
        if not is_complete(self.folder):
            return []
        r = read_json_object(self.results)
        return [
            f"DPO (beta {r['beta']:g}) of the instruction model on {r['pairs']['train']:,} "
            f"pairs: on the {r['pairs']['val']} held-out pairs (the test split's instructions) "
            f"the chosen response earns the higher reward for {r['val_accuracy']:.0%}, by a "
            f"mean margin of {r['val_margin']:.2f}.",
            "",
        ]


class PreferenceRespondStage(RespondStage):
    name = "preference-respond"
    needs = ("preference",)

    def model(self) -> Path:
        return PreferenceStage(self.ctx).model

    def run(self) -> dict[str, Any] | None:
        """The preference model's answers to the test split; skipped with its stage."""
        preference = PreferenceStage(self.ctx)
        if not is_complete(preference.folder):
            atomic_write_json(self.skipped, read_json_object(preference.skipped))
            return None
        self.skipped.unlink(missing_ok=True)
        return super().run()


def degenerate_remark(stats: dict[str, Any], what: str, base: str) -> list[str]:
    """A plain sentence for report.md when `stats` (gptlab.respond.answer_stats) show that the
    model's output says nothing, with what would improve it; nothing otherwise."""
    if not stats["degenerate"]:
        return []
    if base == "scratch":
        fix = (
            "a pretrained base (`--base gpt2-small`, or `gpt2-medium` as in the book's chapter "
            "7) gives real text"
        )
    elif is_model_path(base):
        fix = "a larger pretrained base does better"
    else:
        fix = "a larger pretrained base (`--base gpt2-medium` or larger) does better"
    return [
        f"**These {what} are degenerate:** {stats['distinct']} distinct among {stats['n']}, "
        f"{stats['mean_words']:.1f} words on average, {stats['empty']} empty. The base model "
        f"has learned too little language to say anything useful; {fix}.",
        "",
    ]


class JudgeStage(Stage):
    name = "judge"
    needs = ("respond", "preference-respond")
    headline = (
        "judge",
        "protocol",
        "average",
        "median",
        "scored",
        "invalid",
        "preference_win_rate",
    )

    @property
    def scores(self) -> Path:
        """The judge's reply to each response, appended as they arrive (a rerun asks only
        about the rest)."""
        return self.folder / "scores.jsonl"

    def run(self) -> dict[str, Any] | None:
        """The judge's scores, or None (skipped, with the reason in judge/skipped.json) when
        no judge answers: the next run of the pipeline tries again. Scores already received
        are kept in judge/scores.jsonl, so an interrupted judge only asks about the rest.
        In-process (gptlab.judge_local) with --judge, or with the cached judge when no server
        is named; else the server."""
        c = self.ctx.c
        # The judge logs one record per finished scoring; one from an attempt killed before
        # its results.json would be a duplicate (the scores themselves are in scores.jsonl).
        RunDir(self.folder).metrics_path.unlink(missing_ok=True)
        judge = in_process_judge(c)
        preference = PreferenceRespondStage(self.ctx)
        try:
            results = evaluate(
                JudgeConfig(
                    responses=RespondStage(self.ctx).responses,
                    # the preference model's answers to the same instructions, side by side
                    compare=preference.responses if is_complete(preference.folder) else None,
                    judge=judge,
                    protocol=c.judge_protocol if judge else "score",
                    device=Inference(str(self.ctx.device), c.device.quantize),
                    judge_model=c.judge_model,
                    url=c.judge_url,
                    api=c.judge_api,
                    seed=c.seed,
                    scores=self.scores,
                    out=self.folder,
                )
            )
        except JudgeUnavailable as exc:
            return self.skip(f"{exc}; or judge in-process: {JUDGE_HINT}")
        self.skipped.unlink(missing_ok=True)
        if "compare" in results:  # how often the preference model's answer scored higher
            results["preference_win_rate"] = results["compare"]["win_rate"]
        return results

    def report_lines(self) -> list[str]:
        if not is_complete(self.folder):
            return []
        results = read_json_object(self.results)
        lines = []
        if results.get("scored") == 0:
            lines += [
                f"None of the judge's replies to the {results.get('n')} answers held a score "
                "from 0 to 100, so there is no average and no histogram; its replies are in "
                f"{self.scores.relative_to(self.ctx.out).as_posix()}.",
                "",
            ]
        if (versus := results.get("compare")) and versus.get("win_rate") is not None:
            low, high = versus["interval"]
            lines += [
                f"The preference model's answer scored higher than the instruction model's on "
                f"{versus['b_wins']} of {versus['both_scored']} instructions, lower on "
                f"{versus['a_wins']}, equal on {versus['ties']}: a win rate of "
                f"{versus['win_rate']:.2f} (95% interval {low:.2f}-{high:.2f}, a tie counting "
                "half).",
                "",
            ]
        lowest = results.get("lowest", [])[:SAMPLE_RESPONSES]
        lines += ["Lowest-scored responses:", ""] if lowest else []
        for e in lowest:
            lines += [f"Score {e['score']}: {e['instruction']}", "", quote(e["model_response"]), ""]
        return lines


class BenchStage(Stage):
    """Standard benchmarks (gptlab.bench) of the base and of each tuned model, one row each
    in BENCH/<model>/ (results.json and one TASK.jsonl per task, as `gptlab bench --out`
    writes them), so that report.md shows what each stage changed."""

    name = "bench"
    needs = ("base", "instruct", "preference")
    headline = ("tasks", "limit", "average")

    def models(self) -> dict[str, str]:
        """Row label -> the model it scores, in pipeline order (the preference model when that
        stage ran)."""
        models = {"base": self.ctx.base()["model"], "instruct": str(InstructStage(self.ctx).model)}
        preference = PreferenceStage(self.ctx)
        if is_complete(preference.folder):
            models["preference"] = str(preference.model)
        return models

    def limit(self) -> int:
        return self.ctx.c.bench_limit or self.ctx.recipe().bench_limit

    def run(self) -> dict[str, Any] | None:
        """Each row not benchmarked yet (a rerun keeps finished rows), or None (skipped, with
        the reason in bench/skipped.json) when --no-bench or the data cannot be had."""
        c = self.ctx.c
        if not c.bench:
            return self.skip("turned off by --no-bench", bench=True)
        try:
            average = {label: self.bench_row(label, spec) for label, spec in self.models().items()}
        except DataUnavailable as exc:
            return self.skip(str(exc))
        self.skipped.unlink(missing_ok=True)
        return {
            "task": "bench",
            "tasks": list(c.bench_tasks),
            "limit": self.limit(),
            "average": average,
        }

    def bench_row(self, label: str, spec: str) -> float:
        """The mean headline metric of model `spec` over the tasks, benchmarking it first
        unless its row is already complete."""
        row = self.folder / label
        if not is_complete(row):
            llm = load(spec, device=str(self.ctx.device), quantize=self.ctx.c.device.quantize)
            opts = BenchOptions(data_dir=self.ctx.c.bench_data)
            bench_model(
                llm.model, llm.tokenizer, self.ctx.c.bench_tasks, 0, self.limit(), row, opts
            )
        results = read_json_object(row / RESULTS)["tasks"]
        values = [headline(r)[1] for r in results.values()]
        return sum(values) / len(values)

    def report_lines(self) -> list[str]:
        """One table: rows = models, columns = tasks, each cell with its standard error, the
        change from the base, and the cells at chance marked."""
        rows = {
            label: read_json_object(self.folder / label / RESULTS)["tasks"]
            for label in self.models()
            if is_complete(self.folder / label)
        }
        if not rows or not is_complete(self.folder):
            return []
        return bench_table(rows)


def bench_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """report.md's benchmark table of `rows` (model label -> results.json's "tasks")."""
    base = next(iter(rows.values()))
    tasks = list(base)
    header = ("model", *(f"{t} ({headline(base[t])[0]})" for t in tasks))
    table_rows, chance = [], {}
    for label, results in rows.items():
        cells = [label]
        for t in tasks:
            _, value, stderr = headline(results[t])
            cell = f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")
            if results is not base:
                cell += f" ({value - headline(base[t])[1]:+.3f})"
            if at_chance(results[t]):
                cell += " chance"
                chance.setdefault(label, []).append(t)
            cells.append(cell)
        table_rows.append(tuple(cells))
    first = base[tasks[0]]
    lines = [
        f"{first['documents']} documents per task, {first['shots']}-shot; ± one standard "
        "error; in brackets the change from the base. Each model's documents and scores are in "
        "bench/MODEL/.",
        "",
        table(table_rows, header),
        "",
    ]
    if chance:
        where = [
            f"{label} on {'every task' if len(ts) == len(tasks) else ', '.join(ts)}"
            for label, ts in chance.items()
        ]
        lines += [
            f"**At chance** (within two standard errors of guessing): {'; '.join(where)}. "
            "A score there says nothing about the model; more documents (--bench-limit) or a "
            "stronger model do.",
            "",
        ]
    return lines


JUDGE_HINT = (
    f"`gptlab download judge` fetches {JUDGE_NAME} (1.1 GB) into the cache, which the next run "
    "uses, or name any instruction model with --judge MODEL"
)


def in_process_judge(c: PipelineConfig) -> str | None:
    """The model the judge stage runs itself: --judge, else the cached judge unless a server
    was named (--judge-url, --judge-model or --judge-api set); None: the server."""
    if c.judge is not None:
        return c.judge
    default = PipelineConfig()
    named = (c.judge_url, c.judge_model, c.judge_api)
    if named != (default.judge_url, default.judge_model, default.judge_api):
        return None
    return JUDGE_NAME if cached_judge() is not None else None


PIPELINE: tuple[type[Stage], ...] = (
    BaseStage,
    ClassifyStage,
    InstructStage,
    RespondStage,
    PreferenceStage,
    PreferenceRespondStage,
    JudgeStage,
    BenchStage,
)
assert tuple(s.name for s in PIPELINE) == STAGES


def with_dependents(stages: Sequence[str]) -> list[str]:
    """The given stages plus every stage that (transitively) needs one of them."""
    chosen = set(stages)
    for stage in PIPELINE:
        if chosen.intersection(stage.needs):
            chosen.add(stage.name)
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


# ---- the job ---------------------------------------------------------------------------------


# Settings that only one stage (and those built on it) reads: a rerun may change one when it
# reruns that stage.
STAGE_SETTINGS = {
    "instruct_lora": "instruct",
    "bench_tasks": "bench",
    "bench_limit": "bench",
}


def prepare(c: PipelineConfig) -> RunDir:
    """Create or reopen the run folder; a rerun must keep the base, seed and size, and a
    stage's own settings unless it reruns that stage."""
    run = RunDir(c.out)
    stored_path = c.out / CONFIG
    if stored_path.is_file():
        stored = read_json_object(stored_path).get("pipeline", {})
        for key, value in c.identity().items():
            if key in stored and stored[key] != value:
                raise GptlabError(
                    f"{stored_path}: this run was started with {key}={stored[key]!r}, not "
                    f"{value!r}; rerun with the same flags or choose another --out"
                )
        rerun = with_dependents(c.force)
        now_json = c.to_json()
        for key, stage in STAGE_SETTINGS.items():
            before, now = stored.get(key), now_json[key]
            if before != now and stage not in rerun and (c.out / stage).exists():
                flag = "--" + key.replace("_", "-")
                raise GptlabError(
                    f"{stored_path}: stage {stage} of this run was made with {flag} "
                    f"{before}, not {now}; add --force {stage} to redo it that way, or "
                    "choose another --out"
                )
    settings = {k: v for k, v in c.to_json().items() if k != "force"}  # force is for one run
    config = {"task": "pipeline", "pipeline": settings, "judge_command": pipeline_command(settings)}
    run.prepare(config, resume=True)
    return run


def run_pipeline(c: PipelineConfig) -> dict[str, Any]:
    """Run every stage that is not complete yet, then write report.md and results.json."""
    device = pick_device(c.device.device)  # a missing GPU: one line, and no run folder yet
    check_base(c.base)
    run = prepare(c)
    remove_leftovers(c.out)
    for stage in with_dependents(c.force):
        log.info("--force: rerunning stage %s", stage)
        if (c.out / stage).exists():
            shutil.rmtree(c.out / stage)
        run.log({"kind": "stage", "stage": stage, "status": "forced", "seconds": 0.0})
    if c.force:
        (c.out / RESULTS).unlink(missing_ok=True)
    spam, instructions = (None, None)
    if c.tiny:
        spam, instructions = write_tiny_data(c.out, TINY.spam_per_class, TINY.instructions)
    ctx = Context(c, run, device, spam, instructions)
    stages = [cls(ctx) for cls in PIPELINE]
    for stage in stages:
        if is_complete(stage.folder):
            print(f"gptlab pipeline: stage {stage.name} already complete")
            continue
        print(f"gptlab pipeline: stage {stage.name} ...")
        stage.folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            results = stage.run()
        except Interrupted:
            run.log(time_record(stage.name, "interrupted", start))
            raise Interrupted(
                f"in stage {stage.name}, after saving its progress; continue with: "
                f"{pipeline_command(c.to_json())}"
            ) from None
        if results is None:
            run.log(time_record(stage.name, "skipped", start))
            continue
        run.log(time_record(stage.name, "done", start))
        atomic_write_json(stage.results, results)
    summary = summarize(c.out, stages)
    write_report(c.out, summary, {stage.name: stage.report_lines() for stage in stages})
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


def stage_seconds(out: Path) -> dict[str, float]:
    """Wall seconds per stage, summed over the invocations that ran it since it was last
    forced (a killed attempt logs nothing, so its time is not counted; the time of results
    that --force threw away is not either)."""
    seconds: dict[str, float] = {}
    for r in RunDir(out).metrics():
        if r.get("kind") == "stage":
            before = 0.0 if r["status"] == "forced" else seconds.get(r["stage"], 0.0)
            seconds[r["stage"]] = before + r["seconds"]
    return seconds


def summarize(out: Path, stages: Sequence[Stage]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for stage in stages:
        if is_complete(stage.folder):
            results = read_json_object(stage.results)
            metrics = {k: results[k] for k in stage.headline if k in results}
            summary[stage.name] = {"status": "done", **metrics}
        elif stage.skipped.is_file():
            skipped = read_json_object(stage.skipped)
            summary[stage.name] = {"status": "skipped", **skipped}
        else:
            summary[stage.name] = {"status": "not run"}
    return {"task": "pipeline", "stages": summary, "seconds": stage_seconds(out)}
