"""report.md: a pipeline run folder told in one Markdown page.

Everything comes from the files of the run folder (each stage's results.json, plots, samples
and responses, RUN/metrics.jsonl for timings), so the report can be rebuilt at any time and
its links are relative: the folder can be moved or published as it is.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from gptlab.cli.flags import command_line
from gptlab.io import atomic_write_text, read_json
from gptlab.runs import CONFIG, RESULTS
from gptlab.settings import PipelineConfig


def hardware() -> dict[str, str]:
    """CPU model, cores, GPU, and the software versions that decide speed and numerics."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = "none"
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return {
        "CPU": cpu,
        "CPU cores": str(os.cpu_count()),
        "GPU": gpu,
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "Python": sys.version.split()[0],
        "OS": platform.platform(),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return f"`{json.dumps(value)}`"
    return str(value).replace("|", "\\|").replace("\n", " ")


def count(n: int) -> str:
    """A parameter count as a reader says it: 7.3M, 1.2B; small counts with separators."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:,}"


def readable(results: dict[str, Any]) -> dict[str, Any]:
    """`results` without empty values, parameter counts as 7.3M, and `degenerate` in words
    with the counts that make it so."""
    shown: dict[str, Any] = {}
    for key, value in results.items():
        if value == "":
            continue
        if key.endswith("params") and isinstance(value, int) and not isinstance(value, bool):
            value = count(value)
        elif key == "degenerate" and value is True and "n_responses" in results:
            value = (
                f"yes: {results['distinct_responses']} distinct among {results['n_responses']}, "
                f"{results['empty_responses']} empty"
            )
        shown[key] = value
    return shown


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            continue  # records (such as the judge's lowest scores) are no table cell
        else:
            flat[prefix + key] = value
    return flat


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def quote(text: str) -> str:
    return "\n".join("> " + line for line in (text.strip() or "(empty)").splitlines())


def _stage_section(out: Path, stage: str, info: dict[str, Any], samples: list[str]) -> list[str]:
    folder = out / stage
    lines = [f"## {stage}", ""]
    if info["status"] == "skipped":
        lines += [
            f"Skipped: {info.get('reason', '')}",
            "",
            "Once a judge is reachable, this command runs it (finished stages are kept):",
            "",
            "```",
            info.get("command", ""),
            "```",
            "",
        ]
        return lines
    if info["status"] != "done":
        return [*lines, "Not run yet.", ""]
    results = readable(_flatten(read_json(folder / RESULTS)))
    rows = [(k, v) for k, v in results.items() if k != "task"]
    lines += [table(rows, ("metric", "value")), ""]
    if (folder / CONFIG).is_file():
        lines += [f"Configuration: [{stage}/{CONFIG}]({stage}/{CONFIG})", ""]
    for png in sorted(folder.rglob("*.png")):
        rel = png.relative_to(out).as_posix()
        lines += [f"![{stage}: {png.stem}]({rel})", ""]
    lines += samples
    return lines


def render(out: Path, summary: dict[str, Any], samples: dict[str, list[str]]) -> str:
    """The page; `samples` holds each stage's own lines (gptlab.pipeline.Stage.report_lines)."""
    config = read_json(out / CONFIG)
    stages: dict[str, dict[str, Any]] = summary["stages"]
    seconds: dict[str, float] = summary["seconds"]
    done = all(info["status"] in ("done", "skipped") for info in stages.values())
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# gptlab pipeline: {out.name}",
        "",
        f"{'Finished' if done else 'Partial'} run, report written {now}.",
        "",
        "## Summary",
        "",
    ]
    rows = []
    for stage, info in stages.items():
        shown = readable({k: v for k, v in info.items() if k != "status"})
        metrics = ", ".join(f"{k} {_fmt(v)}" for k, v in shown.items())
        if info["status"] == "skipped":
            metrics = "no judge reachable"
        rows.append((stage, info["status"], metrics, f"{seconds.get(stage, 0.0):.0f}"))
    lines += [table(rows, ("stage", "status", "headline", "seconds")), ""]
    lines += ["## Configuration", ""]
    lines += [table(list(_flatten(config["pipeline"]).items()), ("setting", "value")), ""]
    for stage, info in stages.items():
        lines += _stage_section(out, stage, info, samples.get(stage, []))
    lines += ["## Timings", ""]
    rows = [(stage, f"{s:.1f}") for stage, s in seconds.items()]
    rows.append(("total", f"{sum(seconds.values()):.1f}"))
    lines += [
        table(rows, ("stage", "wall seconds")),
        "",
        "Wall time of the invocations that ran each stage (an attempt killed outright is not "
        "counted).",
        "",
    ]
    lines += ["## Hardware", "", table(list(hardware().items()), ("", "")), ""]
    lines += ["## Reproduce", "", "```", *reproduce(config["pipeline"]), "```", ""]
    return "\n".join(lines)


def pipeline_command(p: dict[str, Any]) -> str:
    """The command that runs the pipeline of settings `p` (config.json's "pipeline") again:
    it continues that run folder, reruns nothing finished, and keeps every setting that
    differs from its default; base, folder, seed and judge are always spelled out."""
    first = ("--base", "--out", "--seed", "--judge-model", "--judge-url", "--judge-api")
    return command_line("pipeline", PipelineConfig, {**p, "force": []}, first)


def reproduce(p: dict[str, Any]) -> list[str]:
    return [
        "pip install -e .  # from the gptlab repository",
        pipeline_command(p),
        "# the same command continues an interrupted run; --force STAGE reruns a stage",
    ]


def write_report(out: Path, summary: dict[str, Any], samples: dict[str, list[str]]) -> Path:
    path = out / "report.md"
    atomic_write_text(path, render(out, summary, samples))
    return path
