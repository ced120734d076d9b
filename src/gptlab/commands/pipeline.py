"""`gptlab pipeline`: base model, spam classifier, instruction model, judge, report."""

from __future__ import annotations

from gptlab.pipeline import run_pipeline
from gptlab.settings import PipelineConfig


def run(c: PipelineConfig) -> int:
    summary = run_pipeline(c)
    for stage, info in summary["stages"].items():
        note = " (the answers are degenerate: see the report)" if info.get("degenerate") else ""
        if info.get("useless"):
            note = " (the classifier learned nothing usable: see the report)"
        print(f"{stage:9s} {info['status']}{note}")
    print(f"report: {c.out / 'report.md'}")
    return 0
