"""report.md as a reader sees it, rendered from a synthetic pipeline run folder; and the
pretraining loss plot, drawn by a real (tiny) pretraining run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.axes
import pytest

from gptlab.jobs.pretrain import pretrain
from gptlab.report import render
from gptlab.settings import PretrainConfig

PIPELINE = {
    "base": "scratch",
    "out": "runs/first",
    "seed": 123,
    "judge_model": "llama3.1:8b",
    "judge_url": "http://localhost:11434",
    "judge_api": "ollama",
}
BASE = {"task": "base", "base": "scratch", "note": "", "family": "gpt2", "params": 7259008}
RESPOND = {
    "task": "respond",
    "n_responses": 110,
    "distinct_responses": 10,
    "mean_response_words": 4.61,
    "empty_responses": 2,
    "degenerate": True,
}
INSTRUCT = {"task": "instruct", "steps": 232, "trainable_params": 4884480, "total_params": 7259008}


def synthetic_run(out: Path) -> dict[str, Any]:
    """A finished run folder's files, as far as report.md reads them; returns the summary."""
    (out / "config.json").parent.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"task": "pipeline", "pipeline": PIPELINE}))
    stages: dict[str, dict[str, Any]] = {}
    for name, results, headline in (
        ("base", BASE, ("base", "family", "params")),
        ("instruct", INSTRUCT, ("steps",)),
        ("respond", RESPOND, tuple(k for k in RESPOND if k != "task")),
    ):
        (out / name).mkdir()
        (out / name / "results.json").write_text(json.dumps(results))
        stages[name] = {"status": "done", **{k: results[k] for k in headline}}
    return {"task": "pipeline", "stages": stages, "seconds": {"base": 90.0}}


def test_report_writes_numbers_and_flags_for_a_reader(tmp_path: Path) -> None:
    out = tmp_path / "run"
    report = render(out, synthetic_run(out), {})
    assert "| note |" not in report  # an empty value is no row
    assert "| params | 7.3M |" in report and "params 7.3M" in report
    assert "| trainable_params | 4.9M |" in report
    assert "7259008" not in report and "True" not in report
    assert "| degenerate | yes: 10 distinct among 110, 2 empty |" in report
    assert "degenerate yes: 10 distinct among 110, 2 empty" in report  # the summary row
    RESPOND["degenerate"] = False
    try:
        again = render(tmp_path / "run2", synthetic_run(tmp_path / "run2"), {})
    finally:
        RESPOND["degenerate"] = True
    assert "| degenerate | no |" in again


def test_pretraining_loss_plot_draws_every_logged_training_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: dict[str, int] = {}
    plot = matplotlib.axes.Axes.plot

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:  # the real plot, its sizes noted
        drawn[kwargs.get("label", "")] = len(args[0])
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 30, encoding="utf-8")
    config = PretrainConfig.flat(
        out=tmp_path / "run",
        corpus=corpus,
        preset="gpt-nano",
        context=16,
        max_steps=12,
        eval_interval=6,
        sample_tokens=0,
        device="cpu",
    )
    pretrain(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 12 and sum(r["kind"] == "eval" for r in records) == 2
    assert drawn["train (per step)"] == len(train)
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"
