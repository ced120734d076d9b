"""The command line as a user meets it: real subprocesses, exit codes, one-line errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


def gptlab(
    *args: str, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "gptlab", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def assert_user_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["pretrain", "--corpus", "nope.txt"], ["nope.txt: file not found"]),
        (["pretrain", "--corpus", "bad.txt"], ["bad.txt:1: not valid UTF-8"]),
        (["pretrain", "--corpus", "short.txt"], ["short.txt", "fewer than one window"]),
        (["generate", "--model", "gpt5-huge", "--prompt", "hi"], ["gpt5-huge: no such model"]),
        (["generate", "--model", "emptydir", "--prompt", "hi"], ["emptydir: no model here"]),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    (tmp_path / "short.txt").write_text("Just a few words.", encoding="utf-8")
    (tmp_path / "emptydir").mkdir()
    assert_user_error(gptlab(*args, cwd=tmp_path), *fragments)


def test_bad_flag_values_are_rejected_by_argparse(tmp_path: Path) -> None:
    for args in (
        ["pretrain", "--preset", "gpt5"],
        ["pretrain", "--batch-size", "0"],
        ["generate", "--model", "x", "--prompt", "p", "--temperature", "-1"],
    ):
        proc = gptlab(*args, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "error: argument" in proc.stderr


def test_pretrain_generate_and_resume(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 30, encoding="utf-8")
    common = [
        "--corpus",
        str(corpus),
        "--preset",
        "gpt-nano",
        "--context",
        "16",
        "--out",
        "run",
        "--device",
        "cpu",
        "--eval-interval",
        "3",
    ]
    first = gptlab("pretrain", *common, "--max-steps", "3", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "sample: [step 3] Every effort moves you" in first.stdout
    again = gptlab("pretrain", *common, "--max-steps", "3", cwd=tmp_path)
    assert_user_error(again, "already holds a run", "--resume")
    gen = gptlab(
        "generate",
        "--model",
        "run",
        "--prompt",
        "the quick",
        "--max-new-tokens",
        "5",
        "--no-stop",
        cwd=tmp_path,
    )
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("the quick") and len(gen.stdout.strip()) > len("the quick")


def test_convert_names_a_missing_tf_index(tmp_path: Path) -> None:
    """A folder with a TF checkpoint's other files but no model.ckpt.index: the error says the
    index is missing (not "no model here"), in one line, exit status 2."""
    tf = tmp_path / "tf"
    shutil.copytree(Path(__file__).parent / "fixtures" / "tf_gpt2", tf)
    (tf / "model.ckpt.index").unlink()
    proc = gptlab("convert", str(tf), str(tmp_path / "out"), cwd=tmp_path)
    assert_user_error(proc, "model.ckpt.index: checkpoint index not found")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()


def save_random_classifier(folder: Path) -> None:
    """A 2-way classifier folder with random weights, as finetune-classifier saves one."""
    import torch

    from gptlab.checkpoints import save_model
    from gptlab.config import GPTConfig
    from gptlab.model import GPT

    torch.manual_seed(0)
    config = GPTConfig(context_length=8, emb_dim=8, n_layers=1, n_heads=1, n_classes=2)
    save_model(GPT(config), folder, {"task": "classify", "labels": ["ham", "spam"]})


def test_generate_with_a_classifier_fails_before_printing_the_prompt(tmp_path: Path) -> None:
    save_random_classifier(tmp_path / "spam")
    proc = gptlab("generate", "--model", "spam", "--prompt", "Hello there", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stdout == ""  # not "Hello there" and then an error
    assert proc.stderr == "gptlab generate: error: spam: is a classifier; it cannot generate text\n"


def test_classify_input_takes_stdin_and_a_final_blank_line(tmp_path: Path) -> None:
    save_random_classifier(tmp_path / "spam")
    (tmp_path / "texts.txt").write_text("win a prize\nsee you at 5\n\n", encoding="utf-8")
    from_file = gptlab("classify", "--model", "spam", "--input", "texts.txt", cwd=tmp_path)
    assert from_file.returncode == 0, from_file.stderr
    rows = from_file.stdout.splitlines()
    assert rows[0] == "text,label,probability" and len(rows) == 3
    assert [r.split(",")[0] for r in rows[1:]] == ["win a prize", "see you at 5"]
    assert all(r.split(",")[1] in ("ham", "spam") for r in rows[1:])
    from_stdin = gptlab(
        "classify",
        "--model",
        "spam",
        "--input",
        "-",
        cwd=tmp_path,
        stdin="win a prize\nsee you at 5\n\n",
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == from_file.stdout
    gap = gptlab("classify", "--model", "spam", "--input", "-", cwd=tmp_path, stdin="a\n\nb\n")
    assert_user_error(gap, "-:2: empty line (expected one text per line)")


@pytest.mark.parametrize("verb", ["finetune-classifier", "finetune-instruct"])
def test_a_classifier_is_refused_as_a_base_and_leaves_no_run(tmp_path: Path, verb: str) -> None:
    save_random_classifier(tmp_path / "clf")
    proc = gptlab(verb, "--base", "clf", "--out", "run", cwd=tmp_path)
    assert_user_error(proc, "clf: is a classifier; pass a language model as --base")
    assert not (tmp_path / "run").exists()


def _absent_devices() -> list[tuple[str, str]]:
    """(flag value, name in the message) of the accelerators this machine lacks."""
    import torch

    absent = [] if torch.cuda.is_available() else [("cuda", "CUDA")]
    mps = getattr(torch.backends, "mps", None)
    return absent + ([] if mps and mps.is_available() else [("mps", "MPS")])


# Every verb that takes --device, with what it needs to get as far as choosing one.
DEVICE_VERBS = {
    "pretrain": ["--out", "run"],
    "finetune-classifier": ["--out", "run"],
    "finetune-instruct": ["--out", "run"],
    "pipeline": ["--out", "run", "--tiny", "--base", "scratch"],
    "generate": ["--model", "nowhere", "--prompt", "hi"],
    "respond": ["--model", "nowhere", "--data", "entries.json", "--out", "run/responses.json"],
    "chat": ["--model", "nowhere"],
    "classify": ["--model", "nowhere", "some text"],
    "serve": ["--model", "nowhere", "--port", "0"],
}


@pytest.mark.parametrize("verb", DEVICE_VERBS)
def test_a_missing_device_is_one_line_and_leaves_nothing(tmp_path: Path, verb: str) -> None:
    import torch

    (tmp_path / "entries.json").write_text('[{"instruction": "Say hi.", "input": ""}]')
    for flag, name in _absent_devices():
        proc = gptlab(verb, *DEVICE_VERBS[verb], "--device", flag, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines() == [
            f"gptlab {verb}: error: --device {flag}: no {name} device is available here "
            f"(torch {torch.__version__}); use --device cpu or auto"
        ]
        assert not (tmp_path / "run").exists()


def test_a_failed_start_does_not_block_the_next_try(tmp_path: Path) -> None:
    """A start that fails before its first checkpoint (here: a learning rate that makes the
    loss overflow at once) leaves no run behind: the corrected command needs no --resume, and
    its metrics hold none of the failed attempt's records."""
    tiny = ["--preset", "gpt-nano", "--context", "16", "--out", "run", "--device", "cpu"]
    failed = gptlab("pretrain", *tiny, "--max-steps", "5", "--lr", "1e30", cwd=tmp_path)
    assert_user_error(failed, "training loss became", "lower --lr")
    proc = gptlab("pretrain", *tiny, "--max-steps", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2, 2]  # train 1, 2; eval 2


def test_resume_says_what_it_resumes_and_refuses_other_settings(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 30, encoding="utf-8")
    common = ["--corpus", str(corpus), "--preset", "gpt-nano", "--context", "16"]
    common += ["--out", "run", "--device", "cpu", "--eval-interval", "1"]
    common += ["--checkpoint-minutes", "0"]  # at every evaluation
    checkpoints = tmp_path / "run" / "checkpoints"
    # Nothing to resume: said plainly, and a new run starts.
    first = gptlab(
        "pretrain", *common, "--max-steps", "3", "--keep-checkpoints", "2", "--resume", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    assert "--resume: no run in run yet; starting a new one" in first.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["LATEST", "step-000002", "step-000003"]
    config = (tmp_path / "run" / "config.json").read_text()
    # Settings that change what is trained: refused, each named with both values.
    changed = gptlab(
        "pretrain",
        *common,
        "--max-steps",
        "3",
        "--lr",
        "0.01",
        "--seed",
        "7",
        "--resume",
        cwd=tmp_path,
    )
    assert_user_error(
        changed,
        "run/config.json: --resume keeps the saved run's settings: ",
        "--lr: 0.0004 in the saved run, 0.01 now; --seed: 123 in the saved run, 7 now",
    )
    assert len(changed.stderr.strip().splitlines()) == 1, changed.stderr
    assert (tmp_path / "run" / "config.json").read_text() == config
    # A finished run: where it stands.
    keep = ["--keep-checkpoints", "1"]
    again = gptlab("pretrain", *common, "--max-steps", "3", *keep, "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "continuing from checkpoint step-000003: step 3 of 3" in again.stderr
    assert "the run is already finished" in again.stderr
    # Extending it (and keeping fewer checkpoints) is allowed.
    longer = gptlab("pretrain", *common, "--max-steps", "6", *keep, "--resume", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    assert "continuing from checkpoint step-000003: step 3 of 6" in longer.stderr
    assert "done: 6 steps" in longer.stdout
    assert sorted(p.name for p in checkpoints.iterdir()) == ["LATEST", "step-000006"]
    # By default a finished run drops its checkpoints; then it cannot be extended, and says so.
    done = gptlab("pretrain", *common, "--max-steps", "6", "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not checkpoints.exists() and (tmp_path / "run" / "model").is_dir()
    more = gptlab("pretrain", *common, "--max-steps", "8", "--resume", cwd=tmp_path)
    assert_user_error(more, "run: this run is finished and kept no checkpoint", "--base run")
