"""`gptlab pipeline`: base model, spam classifier, instruction model, judge, report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gptlab.commands.common import add_command
from gptlab.pipeline import BASES, STAGES, PipelineConfig, run_pipeline

DEFAULTS = PipelineConfig()


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "pipeline",
        run,
        "the whole journey in one resumable command, ending with report.md",
        "Build a base model (OpenAI's GPT-2, or a small model pretrained from scratch), "
        "fine-tune it to classify SMS spam and to follow instructions, answer the "
        "instruction test split, have a judge score the answers, and write report.md. "
        "Running the same command again continues where it stopped.",
    )
    p.add_argument(
        "--base",
        default=DEFAULTS.base,
        choices=BASES,
        help="auto: gpt2-small when its weights are cached or downloadable, else scratch",
    )
    p.add_argument("--out", type=Path, default=DEFAULTS.out, help="run folder")
    p.add_argument(
        "--tiny", action="store_true", help="tiny model and data: every stage in seconds"
    )
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--device", default=DEFAULTS.device, help="cuda, mps, cpu, or auto")
    p.add_argument(
        "--force",
        action="append",
        default=[],
        choices=STAGES,
        metavar="STAGE",
        help=f"rerun STAGE and the stages built on it (repeatable; one of {', '.join(STAGES)})",
    )
    g = p.add_argument_group("judge")
    g.add_argument("--judge-model", default=DEFAULTS.judge_model)
    g.add_argument("--judge-url", default=DEFAULTS.judge_url)
    g.add_argument("--judge-api", default=DEFAULTS.judge_api, choices=["ollama", "openai"])
    g = p.add_argument_group("pretrained weights")
    g.add_argument("--weights-cache", type=Path, default=None, help="default: the user cache")
    g.add_argument("--weights-url", default=None, help="mirror of OpenAI's GPT-2 files")


def run(args: argparse.Namespace) -> int:
    config = PipelineConfig(
        out=args.out,
        base=args.base,
        tiny=args.tiny,
        seed=args.seed,
        device=args.device,
        judge_model=args.judge_model,
        judge_url=args.judge_url,
        judge_api=args.judge_api,
        weights_cache=args.weights_cache,
        weights_url=args.weights_url,
        force=tuple(args.force),
    )
    summary = run_pipeline(config)
    for stage, info in summary["stages"].items():
        print(f"{stage:9s} {info['status']}")
    print(f"report: {config.out / 'report.md'}")
    return 0
