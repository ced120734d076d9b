"""The command line generated from the settings classes: every verb's help shows its defaults
and loads no heavy library; every flag mistake is one line with exit status 2."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import pytest

from gptlab.cli import VERBS, build_parser
from gptlab.cli.flags import Spec, build, is_group, specs, to_argv
from gptlab.errors import GptlabError
from gptlab.settings import (
    ClassifierConfig,
    InstructConfig,
    PretrainConfig,
    TrainArgs,
    resume_conflicts,
)

from .test_cli import SRC, gptlab

HEAVY = ("torch", "fastapi", "matplotlib")
PROBE = """
import contextlib, io, json, sys
from gptlab.cli import VERBS, main
helps = {}
for argv in [[]] + [[verb] for verb in VERBS]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*argv, "--help"])
    helps[" ".join(argv)] = out.getvalue()
print(json.dumps({"loaded": [m for m in %r if m in sys.modules], "helps": helps}))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, object]:
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout)


def test_help_loads_no_heavy_library(helps: dict) -> None:
    assert helps["loaded"] == []
    assert all(verb in helps["helps"][""] for verb in VERBS)


@pytest.mark.parametrize("verb", list(VERBS))
def test_help_shows_every_flag_and_default(helps: dict, verb: str) -> None:
    text = " ".join(helps["helps"][verb].split())  # argparse wraps lines
    parser = build_parser([verb])
    sub = next(a for a in parser._subparsers._group_actions)  # type: ignore[union-attr]
    for action in sub.choices[verb]._actions:
        flags = action.option_strings
        if not flags or flags[0] in ("-h", "--help", "--resume"):
            continue
        assert flags[0] in text, flags
        shows_default = isinstance(action.default, bool) or action.required
        shows_default = shows_default or action.const is not None
        if not shows_default:  # the help says it, as "(default: X)" or "(none: ...)"
            words = " ".join((action.help or "").split())
            assert "(default:" in words or "(none:" in words, (flags, words)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["pretrain", "--batch-size", "0"],
            "argument --batch-size: batch_size must be >= 1, got 0",
        ),
        (["pretrain", "--lr", "-1"], "argument --lr: lr must be > 0, got -1"),
        (["pretrain", "--batch-size", "two"], "argument --batch-size: invalid int value"),
        (["pretrain", "--preset", "gpt5"], "argument --preset: invalid choice: 'gpt5'"),
        (["pretrain", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["finetune-classifier", "--pretrain-steps", "0"], "argument --pretrain-steps: steps must"),
        (["generate", "--prompt", "hi"], "the following arguments are required: --model"),
        (["serve", "--model", "m", "--port", "70000"], "must be >= 0 and <= 65535, got 70000"),
        (["serve", "--host", "0.0.0.0"], "argument --api-key: required with --host 0.0.0.0"),
        (["serve", "--port", "0"], "give --model (a model to serve), --runs DIR"),
    ],
)
def test_flag_mistakes_are_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    proc = gptlab(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "usage:" not in proc.stderr, proc.stderr
    assert fragment in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_flags_round_trip_to_the_same_settings() -> None:
    for cls in (PretrainConfig, ClassifierConfig, InstructConfig):
        args = build_parser([VERBS_OF[cls]]).parse_args([VERBS_OF[cls]])
        assert build(cls, args, cls()) == cls()
    argv = ["finetune-instruct", "--lr", "1e-3", "--lora-rank", "4", "--lora-targets", "qkv",
            "fc", "--gradient-checkpointing", "--device", "cpu", "--seed", "7"]  # fmt: skip
    c = build(InstructConfig, build_parser(argv).parse_args(argv), InstructConfig())
    assert c == InstructConfig.flat(
        lr=1e-3,
        lora_rank=4,
        lora_targets=("qkv", "fc"),
        gradient_checkpointing=True,
        device="cpu",
        seed=7,
    )
    assert c.train.epochs == InstructConfig().train.epochs == 2  # the job's own default
    assert c.speed.gradient_checkpointing and c.runtime.device == "cpu"
    argv = ["finetune-instruct", "--lora-rank", "4", "--lora-targets", "attn.q", "attn.v"]
    layers = build(InstructConfig, build_parser(argv).parse_args(argv), InstructConfig())
    assert layers.lora_targets == ("attn.q", "attn.v")  # one family's layers, by name


def test_no_flag_is_declared_twice() -> None:
    for verb, spec in VERBS.items():
        parser = build_parser([verb])  # argparse itself refuses duplicate flags
        assert parser is not None, verb
        assert any(True for _ in specs(spec.settings))


VERBS_OF = {
    PretrainConfig: "pretrain",
    ClassifierConfig: "finetune-classifier",
    InstructConfig: "finetune-instruct",
}


def test_resume_conflicts_name_each_flag_as_typed() -> None:
    """What --resume refuses, by flag (a group's prefix included); the run's length, speed
    flags and device may change."""
    saved = ClassifierConfig().to_json()
    new = ClassifierConfig.flat(
        labels=("ham", "spam"), pretrain_lr=0.5, lr=1e-3, epochs=9, compile=True, device="cpu"
    )
    assert resume_conflicts(saved, new) == [
        "--labels: none in the saved run, ham spam now",
        "--pretrain-lr: 0.001 in the saved run, 0.5 now",
        "--lr: 5e-05 in the saved run, 0.001 now",
    ]
    assert resume_conflicts(saved, ClassifierConfig.flat(epochs=9, keep_checkpoints=3)) == []


def test_a_moved_run_folder_resumes_with_its_paths_moved() -> None:
    from gptlab.jobs.base import moved

    saved = {"out": "/a/run/x", "corpus": "/a/run/x/c.txt", "data": "/a/run/data/s.tsv"}
    saved |= {"base": "gpt2-small", "other": "/b/elsewhere.txt", "n": 3}
    assert moved(saved, Path("/a/run/x"), Path("/z/q/run/x")) == {
        "out": "/z/q/run/x",
        "corpus": "/z/q/run/x/c.txt",
        "data": "/z/q/run/data/s.tsv",
        "base": "gpt2-small",
        "other": "/b/elsewhere.txt",
        "n": 3,
    }
    assert moved(saved, Path("/a/run/x"), Path("/a/run/x")) is saved


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One command-line field of a settings class: where it sits in the JSON (`path`), its
    name for Settings.flat, and its spec."""

    path: tuple[str, ...]
    flat: str
    spec: Spec

    def json(self, settings: Any) -> Any:
        value = settings.to_json()
        for key in self.path:
            value = value[key]
        return value

    def typed(self, value: Any) -> Any:
        """A JSON value as the field holds it (tuples, paths)."""
        if isinstance(value, list):
            return tuple(value)
        return Path(value) if self.spec.base is Path and value is not None else value


def leaves(cls: type, path: tuple[str, ...] = (), prefix: str = "") -> Iterator[Leaf]:
    for spec in specs(cls):
        if is_group(spec):
            inner = "_".join(p for p in (prefix, spec.meta.get("prefix") or "") if p)
            yield from leaves(spec.base, (*path, spec.name), inner)
        else:
            flat = f"{prefix}_{spec.name}" if prefix else spec.name
            yield Leaf((*path, spec.name), flat, spec)


def other_values(spec: Spec, default: Any) -> list[Any]:
    """Values (as JSON) other than `default` that a field might take, tried in turn."""
    if spec.meta.get("const", MISSING) is not MISSING:
        return [list(spec.meta["const"])]
    if spec.base is bool:
        return [not default]
    if spec.meta.get("choices"):
        options = [c for c in spec.meta["choices"] if c != default and [c] != default]
        return [[options[-1]]] if spec.many else options[:1]
    if spec.many:
        return [["a b", "c"]]
    if spec.base is int:
        return [(default or 0) + 2, (default or 2) - 1]
    if spec.base is float:
        return [(default or 0.5) / 2]
    return ["a folder/with space", "cpu"]  # cpu: the one other value --device accepts


# What a field needs beside it before it may change (the settings' own checks; serve: a
# host off loopback needs --api-key).
NEEDS = {"pretrain_on_texts": {"base": "random"}, "host": {"api_key": "k"}}


@pytest.mark.parametrize("verb", list(VERBS))
def test_settings_to_argv_and_back_for_every_field(verb: str) -> None:
    """Every command-line field of every verb, changed on its own (the required and
    positional ones filled in): to_argv, the verb's parser and build give back the same
    settings."""
    cls = VERBS[verb].settings
    fields = list(leaves(cls))
    required = {
        leaf.flat: leaf.typed("x.json" if leaf.spec.base is Path else "x")
        for leaf in fields
        if leaf.spec.meta.get("required")
        or (leaf.spec.meta.get("positional") and not leaf.spec.many)
    }

    def round_trip(settings: Any) -> Any:
        argv = to_argv(cls, settings.to_json())
        return build(cls, build_parser([verb]).parse_args([verb, *argv]), cls())

    base = cls.flat(**required)
    assert round_trip(base) == base
    for leaf in fields:
        tried = []
        for value in other_values(leaf.spec, leaf.json(base)):
            changes = {**required, **NEEDS.get(leaf.flat, {}), leaf.flat: leaf.typed(value)}
            try:
                changed = cls.flat(**changes)
            except GptlabError as exc:  # e.g. a number out of the field's range: the next one
                tried.append(f"{value!r}: {exc}")
                continue
            assert leaf.json(changed) == value
            assert round_trip(changed) == changed, (
                leaf.flat,
                value,
                to_argv(cls, changed.to_json()),
            )
            break
        else:
            pytest.fail(f"{verb} {leaf.flat}: no other value builds ({tried})")


def test_settings_no_flag_can_say_are_refused() -> None:
    c = PretrainConfig().replace(train=TrainArgs(grad_clip=None))
    assert to_argv(PretrainConfig, PretrainConfig().to_json()) == []
    with pytest.raises(GptlabError, match="--grad-clip: none cannot be given"):
        to_argv(PretrainConfig, c.to_json())


def verb_help(verb: str) -> str:
    """`gptlab VERB --help` as a user sees it, its lines unwrapped."""
    proc = gptlab(verb, "--help")
    assert proc.returncode == 0, proc.stderr
    return " ".join(proc.stdout.split())


def test_help_lists_the_choices_and_no_meaningless_default() -> None:
    trainable = verb_help("finetune-classifier")
    assert "(one of: last-block, last-k, all, lora) (default: last-block)" in trainable
    assert "the judge server's API (one of: ollama, openai) (default: ollama)" in verb_help(
        "pipeline"
    )
    assert "the server's API (one of: ollama, openai) (default: ollama)" in verb_help("evaluate")
    respond = verb_help("respond")
    assert "50256" not in respond  # --no-stop is a switch: it has no value to show
    assert "--no-stop do not stop at the model's end-of-text tokens" in respond
    # a help text that names each choice already is not repeated
    assert "(one of:" not in respond.split("--on-context-full")[1].split("--device")[0]


def test_download_and_convert_say_what_they_read_and_write() -> None:
    download = verb_help("download")
    assert "Hugging Face repository" in download and "owner/name" in download
    convert = verb_help("convert")
    assert "GGUF" in convert and "Hugging Face repository" in convert
    assert "NAME.Modelfile" in convert
    top = gptlab("--help").stdout
    assert "GGUF" in " ".join(top.split())
