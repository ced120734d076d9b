"""Instruction fine-tuning: data, collate, batching, training (full and LoRA), respond, chat."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptlab.checkpoints import latest_checkpoint, read_safetensors, save_model
from gptlab.cli import main
from gptlab.config import get_preset
from gptlab.cpu import head_loss
from gptlab.data import ResumableBatches
from gptlab.errors import GptlabError
from gptlab.hub import resolve_model
from gptlab.instructions import (
    InstructionDataset,
    LengthGroupedBatches,
    collate,
    entry_prompt,
    load_entries,
    padding_fraction,
    split_entries,
    tokenize_entry,
)
from gptlab.jobs.instruct import finetune_instruct
from gptlab.lora import apply_lora
from gptlab.model import GPT
from gptlab.respond import answer_stats, progress_header, progress_path, respond
from gptlab.settings import InstructConfig, Sampling
from gptlab.tokenizer import EOT_ID, encode
from gptlab.training import lm_loss
from tests.serve_process import gptlab_command, gptlab_env

E = EOT_ID
X = -100

# Short enough for gpt-nano's 64-token context, prompt included.
TINY = [
    {"instruction": "Name a primary color.", "input": "", "output": "Red."},
    {"instruction": "What is 2 plus 2?", "output": "Four."},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
    {"instruction": "Give the opposite of hot.", "input": "", "output": "Cold."},
    {"instruction": "Capital of Italy?", "input": "", "output": "Rome is the capital."},
    {"instruction": "Say hello.", "input": "", "output": "Hello!"},
]
SEED = 123


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ---- data ------------------------------------------------------------------------------------


def test_prompt_text_is_the_alpaca_template_exactly() -> None:
    assert entry_prompt({"instruction": "Name a primary color.", "output": "Red."}) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a primary color.\n\n### Response:\n"
    )
    assert entry_prompt({"instruction": "Translate to French.", "input": "cat"}) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nTranslate to French.\n\n### Input:\ncat"
        "\n\n### Response:\n"
    )


def test_tokenize_entry_keeps_the_prompt_boundary_and_plain_eot_text() -> None:
    entry = {"instruction": "Say it.", "output": "<|endoftext|> done"}
    ids, n_prompt = tokenize_entry(entry)
    assert ids[:n_prompt] == encode(entry_prompt(entry))
    assert ids[n_prompt:] == encode("<|endoftext|> done", allow_eot=False)
    assert EOT_ID not in ids  # the text stays text; only collate adds the real token


def test_bundled_data_splits_935_55_110_seeded() -> None:
    entries = load_entries(None)
    assert len(entries) == 1100
    train, val, test = split_entries(entries, seed=SEED)
    assert (len(train), len(val), len(test)) == (935, 55, 110)
    assert split_entries(entries, seed=SEED) == (train, val, test)
    assert split_entries(entries, seed=SEED + 1)[0] != train
    key = json.dumps
    assert sorted(map(key, train + val + test)) == sorted(map(key, entries))


BAD_ENTRIES = [
    (
        "a.json",
        '[{"instruction": "a", "output": 3}]',
        "entry 0: field 'output' must be a string, got int",
    ),
    (
        "a.json",
        '[{"instruction": "a", "output": "b"}, {"output": "b"}]',
        "entry 1: field 'instruction' is missing",
    ),
    ("a.json", '[{"instruction": "a", "output": "b"}, 7]', "entry 1: expected an object, got int"),
    ("a.json", '[{"instruction": "  ", "output": "b"}]', "entry 0: field 'instruction' is empty"),
    (
        "a.json",
        '[{"instruction": "a", "input": ["x"], "output": "b"}]',
        "entry 0: field 'input' must be a string, got list",
    ),
    ("a.json", '[{"instruction": "a",\n "output": }]', "a.json:2: not valid JSON"),
    ("a.json", "[]", "a.json: holds no entries"),
    (
        "a.jsonl",
        '{"instruction": "a", "output": "b"}\n\n'
        '{"instruction": "a", "input": null, "output": "b"}\n',
        "a.jsonl:3: entry 1: field 'input' must be a string, got NoneType",
    ),
    (
        "a.jsonl",
        '{"instruction": "a", "output": "b"}\n{oops\n',
        "a.jsonl:2: entry 1: not valid JSON",
    ),
    ("a.jsonl", '{"instruction": "a"}\n', "a.jsonl:1: entry 0: field 'output' is missing"),
    (
        "a.json",
        '{\n  "instruction": "a",\n  "output": "b"\n}\n',
        "a.json: is one JSON object (keys 'instruction', 'output'), not a list of entries",
    ),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_ENTRIES)
def test_bad_entries_name_file_index_and_field(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(GptlabError) as err:
        load_entries(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_entries_without_output_are_fine_for_responses(tmp_path: Path) -> None:
    path = write_json(tmp_path / "q.json", [{"instruction": "Hi?", "id": 7}])
    assert load_entries(path, require_output=False) == [{"instruction": "Hi?", "id": 7}]
    with pytest.raises(GptlabError, match="entry 0: field 'output' is missing"):
        load_entries(path)


def test_cli_reports_bad_data_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = write_json(tmp_path / "bad.json", [{"instruction": "a", "output": "b"}, {"x": 1}])
    code = main(["finetune-instruct", "--data", str(bad), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        f"gptlab finetune-instruct: error: {bad}: entry 1: field 'instruction' is missing"
    )
    assert not (tmp_path / "run").exists()


def test_cli_names_a_json_object_and_too_few_entries_for_what_they_are(tmp_path: Path) -> None:
    """A JSON object is not reported as broken JSON Lines, and one entry is not reported as a
    batch size to lower: each gets the one line that says what is wrong."""
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [{"instruction": "a", "output": "b"}]}, indent=2))
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    expected = {
        wrapped: f"{wrapped}: is one JSON object (keys 'data'), not a list of entries; expected "
        'a JSON list [{"instruction": ..., "output": ...}, ...] or JSON Lines (one object per '
        "line)",
        one: f"{one}: too few entries (1): the 85/5/10 split leaves 0 for training and 1 for "
        "validation (at least one each)",
    }
    for path, message in expected.items():
        done = subprocess.run(
            gptlab_command("finetune-instruct", "--data", str(path), "--out", str(tmp_path / "r")),
            capture_output=True,
            text=True,
            env=gptlab_env(),
            timeout=120,
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr == f"gptlab finetune-instruct: error: {message}\n"
        assert not (tmp_path / "r").exists()


# ---- batching --------------------------------------------------------------------------------

# (ids, number of prompt tokens) of three hand-made sequences of lengths 5, 2 and 3.
BATCH = [([1, 2, 3, 4, 5], 2), ([6, 7], 1), ([8, 9, 10], 2)]


def test_collate_pads_shifts_and_keeps_one_end_of_text() -> None:
    inputs, targets = collate(BATCH)
    assert inputs.tolist() == [[1, 2, 3, 4, 5], [6, 7, E, E, E], [8, 9, 10, E, E]]
    assert targets.tolist() == [[2, 3, 4, 5, E], [7, E, X, X, X], [9, 10, E, X, X]]
    assert inputs.dtype == targets.dtype == torch.long


def test_collate_masks_the_prompt() -> None:
    inputs, targets = collate(BATCH, mask_prompt=True)
    assert inputs.tolist() == [[1, 2, 3, 4, 5], [6, 7, E, E, E], [8, 9, 10, E, E]]
    assert targets.tolist() == [[X, 3, 4, 5, E], [7, E, X, X, X], [X, 10, E, X, X]]


def test_collate_truncates_to_max_length() -> None:
    inputs, targets = collate(BATCH, max_length=3)
    assert inputs.tolist() == [[1, 2, 3], [6, 7, E], [8, 9, 10]]
    assert targets.tolist() == [[2, 3, 4], [7, E, X], [9, 10, E]]
    # A batch shorter than max_length is padded only to its own longest sequence.
    assert collate(BATCH[1:], max_length=100)[0].shape == (2, 3)


def test_lm_loss_on_instruction_batches_equals_dense_cross_entropy() -> None:
    """The model's loss skips positions without a target (and runs the chunked CPU head that
    training installs): it must equal the book's loss over logits at every position."""
    torch.manual_seed(0)
    model = GPT(get_preset("gpt-nano"))
    head_loss.install(model)
    batch = collate([tokenize_entry(e) for e in TINY[:3]], mask_prompt=True)
    x, y = batch
    dense = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
    (grad_dense,) = torch.autograd.grad(dense, model.blocks[0].attn.qkv.weight)
    loss, n = lm_loss(model, batch)
    (grad,) = torch.autograd.grad(loss, model.blocks[0].attn.qkv.weight)
    assert n == int((y != -100).sum())
    torch.testing.assert_close(loss, dense)
    torch.testing.assert_close(grad, grad_dense)
    # Prompts cut by max_length and masked leave no target: zero loss, zero gradient.
    empty = collate([tokenize_entry(e) for e in TINY[:2]], max_length=8, mask_prompt=True)
    loss, n = lm_loss(model, empty)
    loss.backward()
    assert (loss.item(), n) == (0.0, 0)
    assert not model.blocks[0].attn.qkv.weight.grad.any()


def test_padding_fraction_counts_padded_positions() -> None:
    # batch 1: lengths 4 and 2 -> 2 of 8 positions are padding; batch 2: 3 of 3 real.
    assert padding_fraction([[0, 1], [2]], [4, 2, 3]) == pytest.approx(2 / 11)


def test_length_grouping_is_seeded_resumable_and_cuts_padding() -> None:
    train, _, _ = split_entries(load_entries(None), seed=SEED)
    ds = InstructionDataset(train)
    lengths = ds.lengths(1024)
    grouped = LengthGroupedBatches(ds, lengths, batch_size=8, seed=SEED)
    plain = ResumableBatches(ds, 8, shuffle=True, seed=SEED)
    epoch0 = grouped.epoch_batches(0)
    assert len(epoch0) == plain.per_epoch == 935 // 8
    flat = [i for b in epoch0 for i in b]
    assert len(flat) == len(set(flat)) == 8 * (935 // 8)
    assert grouped.epoch_batches(0) == epoch0
    assert grouped.epoch_batches(0, start=5) == epoch0[5:]
    assert grouped.epoch_batches(1) != epoch0
    grouped_pad = padding_fraction(epoch0, lengths)
    plain_pad = padding_fraction(plain.epoch_batches(0), lengths)
    assert grouped_pad < plain_pad / 3
    batch = next(iter(LengthGroupedBatches(ds, lengths, 8, SEED, collate_fn=collate).iterate()))
    assert batch[0].shape == (8, max(lengths[i] for i in epoch0[0]))


# ---- fine-tuning and responses ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """A gpt-nano fine-tuned through the CLI until it knows its 5 training responses by heart;
    returns the run folder and those training entries."""
    root = tmp_path_factory.mktemp("tuned")
    data = write_json(root / "tiny.json", TINY)
    run = root / "run"
    code = main(
        [
            "finetune-instruct",
            "--base", "random",
            "--preset", "gpt-nano",
            "--data", str(data),
            "--out", str(run),
            "--batch-size", "5",
            "--lr", "1e-2",
            "--max-steps", "60",
            "--mask-prompt",
            "--eval-interval", "30",
            "--eval-batches", "1",
            "--seed", str(SEED),
            "--device", "cpu",
        ]
    )  # fmt: skip
    assert code == 0
    train, _, _ = split_entries(TINY, seed=SEED)
    return run, train


@pytest.mark.slow
def test_finetune_writes_a_complete_run_folder(tuned: tuple[Path, list[dict]]) -> None:
    run, _ = tuned
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 60
    assert results["examples"] == {"train": 5, "val": 1, "test": 0}
    assert results["train_loss"] < 0.5
    assert 0 < results["padding_fraction"] < 0.5
    assert results["trainable_params"] == results["total_params"]
    assert json.loads((run / "test.json").read_text()) == split_entries(TINY, SEED)[2]
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").open()) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [30, 60]
    model, meta = resolve_model(run / "model")
    assert meta["template"] == "alpaca"
    assert model.cfg == get_preset("gpt-nano")


@pytest.mark.slow
def test_tiny_model_reproduces_its_training_responses(
    tuned: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    run, train = tuned
    data = write_json(tmp_path / "train.json", train)
    out = respond(str(run), data, tmp_path / "responses.json", Sampling(max_new_tokens=20), 3)
    written = json.loads(out.read_text())
    assert [e["model_response"] for e in written] == [e["output"] for e in train]
    assert [{k: v for k, v in e.items() if k != "model_response"} for e in written] == train
    assert not progress_path(out).exists()


@pytest.mark.slow
def test_respond_resumes_without_redoing_finished_entries(
    tuned: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    run, train = tuned
    data = write_json(tmp_path / "train.json", train)
    out = tmp_path / "responses.json"
    sampling = Sampling(max_new_tokens=20)
    # The state an interrupted run leaves: header, two finished entries, a line cut mid-write.
    # Their recorded responses are not what the model says, so a redo would show.
    header = progress_header(str(run), data, sampling)
    progress_path(out).write_text(
        json.dumps(header)
        + "\n"
        + json.dumps({"index": 3, "model_response": "kept 3"})
        + "\n"
        + json.dumps({"index": 0, "model_response": "kept 0"})
        + '\n{"index": 1, "model_re',
        encoding="utf-8",
    )
    code = main(
        ["respond", "--model", str(run), "--data", str(data), "--out", str(out),
         "--max-new-tokens", "20", "--batch-size", "2"]
    )  # fmt: skip
    assert code == 0
    responses = [e["model_response"] for e in json.loads(out.read_text())]
    expected = [e["output"] for e in train]
    expected[0], expected[3] = "kept 0", "kept 3"
    assert responses == expected
    assert not progress_path(out).exists()


def test_answer_stats_counts_distinct_long_and_empty_answers() -> None:
    def stats(n: int, distinct: int, mean: float, empty: int, degenerate: bool) -> dict:
        return {"n": n, "distinct": distinct, "mean_words": mean, "empty": empty,
                "degenerate": degenerate}  # fmt: skip

    cases = [
        # what the scratch model gives: one phrase, with variants
        (
            ["The sentence.", "The sentence", " The sentence.\n", "The sentence."],
            stats(4, 2, 2.0, 0, True),
        ),
        ([".", "."], stats(2, 1, 1.0, 0, True)),  # a base model continuing with "."
        (["", " ", "Yes, it is."], stats(3, 2, 1.0, 2, True)),  # mostly empty
        (["Paris.", "Rome is the capital of Italy."], stats(2, 2, 3.5, 0, False)),
        (
            ["A cat sat.", "A cat sat.", "Dogs bark loudly.", "", "It rains."],
            stats(5, 4, 2.2, 1, False),
        ),
        ([], stats(0, 0, 0.0, 0, False)),
    ]
    for answers, expected in cases:
        assert answer_stats(answers) == expected, answers


def test_respond_refuses_progress_of_other_inputs(tmp_path: Path) -> None:
    model_dir = save_model(GPT(get_preset("gpt-nano")), tmp_path / "model")
    data = write_json(tmp_path / "q.json", [{"instruction": "Hi?"}])
    out = tmp_path / "r.json"
    header = progress_header(str(model_dir), data, Sampling(max_new_tokens=5))
    progress_path(out).write_text(json.dumps(header) + "\n", encoding="utf-8")
    with pytest.raises(GptlabError, match="progress of a run with another model, data or"):
        respond(str(model_dir), data, out, Sampling(max_new_tokens=6))
    respond(str(model_dir), data, out, Sampling(max_new_tokens=5))
    (entry,) = json.loads(out.read_text())
    assert entry["instruction"] == "Hi?" and isinstance(entry["model_response"], str)


@pytest.mark.slow
def test_chat_streams_responses_in_the_template(
    tuned: tuple[Path, list[dict]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    run, train = tuned
    lines = [e["instruction"] + (f" || {e['input']}" if e.get("input") else "") for e in train[:3]]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n\nignored\n"))
    assert main(["chat", "--model", str(run), "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out.splitlines() == [e["output"] for e in train[:3]]


def test_lora_trains_only_adapters_and_merges_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base_dir = save_model(GPT(get_preset("gpt-nano")), tmp_path / "base")
    base_state = read_safetensors(base_dir / "model.safetensors")
    data = write_json(tmp_path / "tiny.json", TINY)
    config = InstructConfig.flat(
        out=tmp_path / "run",
        base=str(base_dir),
        data=data,
        batch_size=5,
        lr=1e-2,
        max_steps=3,
        lora_rank=2,
        lora_alpha=4.0,
        lora_targets=("qkv", "fc"),
        eval_batches=1,
        sample_tokens=4,
        device="cpu",
        keep_checkpoints=1,  # the finished run's last checkpoint is read below
    )
    results = finetune_instruct(config)
    assert results["lora"] == {"rank": 2, "alpha": 4.0, "targets": ["qkv", "fc"]}
    assert results["trainable_params"] == 2 * (2 * (32 + 96) + 2 * (32 + 128))

    # The last checkpoint holds base and adapter weights: the base ones are unchanged.
    trained = read_safetensors(latest_checkpoint(tmp_path / "run") / "model.safetensors")
    adapters = {k: v for k, v in trained.items() if ".lora_" in k}
    assert len(adapters) == 2 * 2 * 2
    for name, tensor in trained.items():
        if name not in adapters:
            plain = name.replace(".base.", ".")
            assert torch.equal(tensor, base_state[plain]), name
    assert all(v.abs().sum() > 0 for k, v in adapters.items() if k.endswith("lora_b"))

    # The merged export computes what base + adapters compute.
    adapted, _ = resolve_model(base_dir)
    apply_lora(adapted, 2, 4.0, ("qkv", "fc"))
    adapted.load_state_dict(trained, strict=False)
    merged, _ = resolve_model(tmp_path / "run" / "model")
    x = torch.tensor([encode(entry_prompt(TINY[0]))])
    with torch.no_grad():
        reference = adapted(x)
        assert not torch.allclose(reference, resolve_model(base_dir)[0](x), atol=1e-4)
        torch.testing.assert_close(merged(x), reference, atol=1e-5, rtol=1e-5)
    exported = read_safetensors(tmp_path / "run" / "model" / "model.safetensors")
    assert set(exported) == set(base_state)


@pytest.mark.slow
def test_interrupted_finetune_resumes_to_the_same_model(tmp_path: Path) -> None:
    data = write_json(tmp_path / "tiny.json", TINY)

    def config(out: str) -> InstructConfig:
        return InstructConfig.flat(
            out=tmp_path / out,
            base="random",
            preset="gpt-nano",
            data=data,
            batch_size=2,
            lr=1e-3,
            max_steps=4,
            eval_interval=2,
            eval_batches=1,
            group_by_length=True,
            sample_tokens=4,
            device="cpu",
        )

    straight = finetune_instruct(config("a"))
    assert finetune_instruct(config("b"), stop_after=3) == {}
    assert not (tmp_path / "b" / "results.json").exists()
    with pytest.raises(GptlabError, match="already holds a run"):
        finetune_instruct(config("b"))
    resumed = finetune_instruct(config("b"), resume=True)
    assert resumed["val_loss"] == straight["val_loss"]
    a = read_safetensors(tmp_path / "a" / "model" / "model.safetensors")
    b = read_safetensors(tmp_path / "b" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
