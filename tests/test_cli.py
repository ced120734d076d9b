"""The command line as a user meets it: real subprocesses, exit codes, one-line errors."""

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
