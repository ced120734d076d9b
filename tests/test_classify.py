"""Classification fine-tuning: data pipeline, freezing, cached prefix, save/reload, bad inputs."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from gptlab.checkpoints import load_model_folder, save_model
from gptlab.classifier import (
    cache_prefix,
    class_logits,
    classifier_from,
    classify_texts,
    metrics,
    save_classifier,
    set_trainable,
    uselessness,
)
from gptlab.cli import main
from gptlab.config import GPTConfig, get_preset
from gptlab.data import bundled
from gptlab.errors import GptlabError
from gptlab.families import new_model
from gptlab.hub import resolve_model
from gptlab.jobs.classify import finetune_classifier
from gptlab.labelled import (
    ClassificationDataset,
    balance,
    collate,
    download_sms_spam,
    extract_sms_spam,
    load_sms_spam,
    load_splits,
    pad_batch,
    read_labelled,
    split,
)
from gptlab.lora import LoRALinear
from gptlab.model import GPT
from gptlab.runs import RunDir
from gptlab.settings import ClassifierConfig
from gptlab.tokenizer import EOT_ID, encode
from tests.file_server import serve
from tests.serve_process import gptlab_command, gptlab_env

CPU = torch.device("cpu")
TINY = GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_layers=3, n_heads=2)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These models are tiny: one thread beats two that wait on each other (by far on a busy
    machine). Runs after conftest's two-thread default."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_classifier(seed: int = 0, n_classes: int = 2) -> GPT:
    torch.manual_seed(seed)
    return classifier_from(GPT(TINY), n_classes, dropout=0.0, seed=seed)


@pytest.fixture(scope="module")
def toy_tsv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 short texts, 3 classes that a tiny model can tell apart by their words."""
    rng = random.Random(0)
    words = {
        "good": ["great", "lovely", "super", "nice"],
        "bad": ["awful", "terrible", "poor", "sad"],
        "meh": ["table", "chair", "window", "door"],
    }
    lines = []
    for i in range(60):
        label = ("good", "bad", "meh")[i % 3]
        text = " ".join(rng.choice(words[label]) for _ in range(rng.randint(1, 8)))
        lines.append(f"{label}\t{text}")
    path = tmp_path_factory.mktemp("data") / "toy.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def toy_config(out: Path, data: Path, **changes: object) -> ClassifierConfig:
    base = {
        "out": out,
        "base": "random",
        "preset": "gpt-nano",
        "data": data,
        "epochs": 3,
        "batch_size": 4,
        "lr": 3e-3,
        "trainable": "all",
        "device": "cpu",
    }
    return ClassifierConfig.flat(**{**base, **changes})  # type: ignore[arg-type]


# ---- data -------------------------------------------------------------------------------------


def test_sms_spam_balance_and_split_sizes() -> None:
    data = load_sms_spam()
    assert data.labels == ("ham", "spam")
    assert len(data.examples) == 5574
    kept, left_out = balance(data.examples, seed=123)
    assert [sum(label == i for _, label in kept) for i in (0, 1)] == [747, 747]
    assert len(left_out) == 4827 - 747 and all(label == 0 for _, label in left_out)
    train, val, test = split(kept, seed=123)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)
    # a partition of the balanced set, reproducible from the seed, different for another seed
    assert sorted(train + val + test) == sorted(kept)
    assert split(kept, seed=123) == (train, val, test)
    assert split(kept, seed=124)[2] != test
    assert balance(data.examples, seed=123) == (kept, left_out)


def test_pad_batch_and_last_index_exact() -> None:
    seqs = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10])]
    x, last = pad_batch(seqs, EOT_ID)
    assert x.tolist() == [[5, 6, 7], [8, EOT_ID, EOT_ID], [9, 10, EOT_ID]]
    assert last.tolist() == [2, 0, 1]
    x, last = pad_batch(seqs, EOT_ID, length=5)
    assert x.shape == (3, 5) and x[0, 3:].tolist() == [EOT_ID, EOT_ID]
    assert last.tolist() == [2, 0, 1]
    states = [torch.ones(2, 4), torch.ones(3, 4)]
    h, last = pad_batch(states, 0.0)
    assert h.shape == (2, 3, 4) and h[0, 2].abs().sum() == 0 and last.tolist() == [1, 2]


def test_collate_encodes_and_keeps_literal_eot_as_text() -> None:
    ds = ClassificationDataset.from_texts([("hi there", 1), ("<|endoftext|>", 0)], max_length=64)
    x, last, y = collate([ds[0], ds[1]])
    eot_text = encode("<|endoftext|>", allow_eot=False)
    assert EOT_ID not in eot_text
    assert x[1, : len(eot_text)].tolist() == eot_text
    assert last.tolist() == [len(encode("hi there")) - 1, len(eot_text) - 1]
    assert y.tolist() == [1, 0]
    assert len(ClassificationDataset.from_texts([("word " * 50, 0)], max_length=7)[0][0]) == 7


def test_reads_from_last_real_token_not_padding() -> None:
    model = tiny_classifier()
    seqs = [torch.tensor(encode("free prize now")), torch.tensor(encode("see you at six ok"))]
    x, last = pad_batch(seqs, EOT_ID)
    with torch.no_grad():
        batched = class_logits(model, x, last)
        alone = [class_logits(model, s[None], torch.tensor([len(s) - 1])) for s in seqs]
        fixed_last = model(x)[:, -1]
    torch.testing.assert_close(batched, torch.cat(alone), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batched[0], fixed_last[0])  # padding position differs


def test_metrics_binary_and_confusion() -> None:
    y_true = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    y_pred = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    m = metrics(y_true, y_pred, ("ham", "spam"))
    assert m["confusion_matrix"] == [[2, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(0.75)
    three = metrics(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 2, 2, 2]), ("a", "b", "c"))
    assert three["averaging"] == "macro"
    assert three["recall"] == pytest.approx((1 + 0 + 1) / 3)


# ---- bad inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "labels", "message"),
    [
        ("ham\thello\nspam\n", None, "bad.tsv:2: expected 2 fields (label, text), found 1"),
        ("ham\thello\nspam\ta\tb\n", None, "bad.tsv:2: expected 2 fields"),
        ("ham\thello\n\nspam\t   \n", None, "bad.tsv:3: empty text"),
        ("ham\thello\n\tword\n", None, "bad.tsv:2: empty label"),
        ("ham\thello\nspma\tbuy now\n", ("ham", "spam"), "bad.tsv:2: unknown label 'spma'"),
        ("ham\thello\nham\tbye\n", None, "needs at least two labels"),
        ("", None, "bad.tsv: no data rows"),
    ],
)
def test_bad_tsv_lines_name_file_and_line(
    tmp_path: Path, content: str, labels: tuple[str, ...] | None, message: str
) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(GptlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_labelled(path, labels)


def test_csv_with_header_any_column_order_and_multiline(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerows([["id", "text", "label"], [1, "a, b", "x"], [2, "two\nlines", "y"]])
        w.writerow([3, "", "x"])
    with pytest.raises(GptlabError, match=r"d.csv:5: empty text"):  # record 3 starts on line 5
        read_labelled(path)
    path.write_text('text,label\n"a, b",x\nc,y\n', encoding="utf-8")
    data = read_labelled(path)
    assert data.labels == ("x", "y") and data.examples == [("a, b", 0), ("c", 1)]


def reviews_csv(path: Path, header: str, n: int = 120) -> Path:
    """`n` rows of label,text (pos/neg by their words) under `header`."""
    rng = random.Random(1)
    words = {"pos": ["great", "lovely", "super"], "neg": ["awful", "poor", "sad"]}
    rows = [header]
    for i in range(n):
        label = ("pos", "neg")[i % 2]
        rows.append(f"{label},{' '.join(rng.choice(words[label]) for _ in range(4))}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def finetune_cli(out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`gptlab finetune-classifier ARGS --out OUT`, which must succeed, and its results.json."""
    done = subprocess.run(
        gptlab_command("finetune-classifier", *args, "--out", str(out)),
        capture_output=True,
        text=True,
        env={**gptlab_env(), "TQDM_DISABLE": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done, json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_cli_reads_a_csv_header_as_a_header(tmp_path: Path) -> None:
    data = reviews_csv(tmp_path / "reviews.csv", "sentiment,review")
    args = ["--base", "random", "--preset", "gpt-nano", "--data", str(data), "--epochs", "1",
            "--batch-size", "8", "--trainable", "all", "--device", "cpu"]  # fmt: skip
    done, results = finetune_cli(tmp_path / "run", *args)
    assert results["labels"] == ["neg", "pos"]
    assert results["n_train"] + results["n_val"] + results["n_test"] == 120  # 60 of each
    assert "header" not in done.stderr  # a named header is no question: nothing to say


def test_an_ambiguous_header_is_named_and_flags_decide(tmp_path: Path, caplog) -> None:
    data = reviews_csv(tmp_path / "d.csv", "x,comment", n=6)
    with caplog.at_level(logging.WARNING, logger="gptlab.labelled"):
        assert read_labelled(data).labels == ("neg", "pos")  # 'x' is on no other row
    [said] = caplog.messages
    assert "d.csv:1: reading 'x,comment' as a header" in said and "--no-header" in said
    caplog.clear()
    assert read_labelled(data, header=False).labels == ("neg", "pos", "x")
    assert len(read_labelled(data, header=True).examples) == 6 and not caplog.messages
    named = reviews_csv(tmp_path / "n.csv", "sentiment,review", n=6)
    assert read_labelled(named, header=False).labels == ("neg", "pos", "sentiment")
    plain = reviews_csv(tmp_path / "p.csv", "pos,great super", n=6)  # a first row like the rest
    assert len(read_labelled(plain).examples) == 7 and not caplog.messages


def test_uselessness_one_class_or_chance_but_not_a_skewed_test_set() -> None:
    labels = ("ham", "spam")
    assert uselessness([[150, 0], [150, 0]], labels) == "it predicts 'ham' for all 300 test texts"
    # 165 of 300 right: the majority alone scores 0.5, two standard errors are 0.058
    chance = uselessness([[90, 60], [75, 75]], labels)
    assert chance is not None and "0.550 is within chance" in chance and "0.500" in chance
    assert uselessness([[120, 30], [30, 120]], labels) is None  # 0.8
    assert uselessness([[294, 0], [0, 6]], labels) is None  # right on a skewed test set
    assert uselessness([[290, 4], [6, 0]], labels) is not None  # 0.967 < 0.98 + 0.016
    assert uselessness([[5, 0], [0, 0]], labels) is None  # one class only: nothing to tell apart


def test_cli_says_when_a_classifier_learned_nothing(tmp_path: Path) -> None:
    """Texts that say nothing about their labels: the job ends normally (exit 0: the run is
    whole and its figures true) but says so, and results.json carries why."""
    data = tmp_path / "same.csv"
    data.write_text("".join(f"{('a', 'b')[i % 2]},the same words\n" for i in range(60)))
    args = ["--base", "random", "--preset", "gpt-nano", "--data", str(data), "--epochs", "1",
            "--batch-size", "8", "--device", "cpu"]  # fmt: skip
    done, results = finetune_cli(tmp_path / "run", *args)
    assert results["useless"] == uselessness(results["confusion_matrix"], ("a", "b"))
    [said] = [line for line in done.stderr.splitlines() if "learned nothing usable" in line]
    assert said.endswith(results["useless"]) and str(tmp_path / "run") in said


def test_cli_reports_bad_data_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("ham\tok\nspam\n", encoding="utf-8")
    status = main(["finetune-classifier", "--base", "random", "--data", str(bad), "--out",
                   str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err and "bad.tsv:2:" in err
    status = main(["finetune-classifier", "--base", str(tmp_path / "none"), "--out",
                   str(tmp_path / "run")])  # fmt: skip
    assert status == 2 and "none: no such model folder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # so the corrected command needs no --resume


def test_download_and_extract_sms_spam_check_sha256(tmp_path: Path) -> None:
    with bundled("SMSSpamCollection") as p:
        data = p.read_bytes()
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("SMSSpamCollection", data)
        zf.writestr("readme", "x")
    out = extract_sms_spam(good, tmp_path / "out")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert len(load_sms_spam(out).examples) == 5574
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("SMSSpamCollection", data[:-10])
    with pytest.raises(GptlabError, match=r"bad\.zip: SMSSpamCollection has sha256"):
        extract_sms_spam(bad, tmp_path / "out2")
    with serve({"sms.zip": good.read_bytes(), "bad.zip": bad.read_bytes()}) as server:
        sha = hashlib.sha256(good.read_bytes()).hexdigest()
        got = download_sms_spam(tmp_path / "dl", url=f"{server.url}/sms.zip", sha256=sha)
        assert got == tmp_path / "dl" / "SMSSpamCollection" and got.read_bytes() == data
        with pytest.raises(GptlabError, match="bad.zip: SHA-256 mismatch"):
            download_sms_spam(tmp_path / "dl2", url=f"{server.url}/bad.zip", sha256=sha)
    (tmp_path / "junk.zip").write_text("not a zip", encoding="utf-8")
    with pytest.raises(GptlabError, match="not a zip file"):
        extract_sms_spam(tmp_path / "junk.zip", tmp_path / "out3")


# ---- model: freezing, cache, save/reload ------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "changed"),
    [
        ("last-block", {"blocks.2.", "final_norm.", "out_head."}),
        ("last-k", {"blocks.1.", "blocks.2.", "final_norm.", "out_head."}),
        (
            "all",
            {
                "tok_emb.",
                "pos_emb.",
                "blocks.0.",
                "blocks.1.",
                "blocks.2.",
                "final_norm.",
                "out_head.",
            },
        ),
        ("lora", {"lora_", "out_head."}),
    ],
)
def test_only_chosen_parameters_change_after_a_step(mode: str, changed: set[str]) -> None:
    model = tiny_classifier()
    frozen = set_trainable(model, mode, k=2)
    assert frozen == {"last-block": 2, "last-k": 1}.get(mode, 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, last = pad_batch([torch.tensor(encode("win cash now")), torch.tensor([1, 2])], EOT_ID)
    torch.nn.functional.cross_entropy(class_logits(model, x, last), torch.tensor([1, 0])).backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    expected = {n for n in before if any(key in n for key in changed)}
    assert moved == expected


@pytest.mark.parametrize("family", ["gpt2", "llama-micro", "qwen2.5-micro", "gemma3-micro"])
def test_cached_prefix_hidden_states_match_full_forward(family: str) -> None:
    """The cached prefix runs each family's own embeddings and block arguments (GPT-2's
    position embeddings, Llama's rotary, Gemma 3's scaled embeddings and its two rope bases)."""
    if family == "gpt2":
        model = tiny_classifier()
    else:
        torch.manual_seed(0)
        model = classifier_from(new_model(get_preset(family)), 2, dropout=0.0, seed=0)
    frozen = set_trainable(model, "last-block")
    ds = ClassificationDataset.from_texts([("a b c d", 0), ("hello", 1), ("x y", 0)], 32)
    cached = cache_prefix(model, ds, frozen, CPU, batch_size=2)
    plain_batch, cached_batch = collate(ds.items), collate(cached.items)
    with torch.no_grad():
        plain = class_logits(model, plain_batch[0], plain_batch[1])
        tail = class_logits(model, cached_batch[0], cached_batch[1], start=frozen)
    torch.testing.assert_close(plain, tail, rtol=1e-5, atol=1e-6)


def test_cached_prefix_run_equals_plain_run(tmp_path: Path, toy_tsv: Path) -> None:
    runs = {}
    for cached in (True, False):
        cfg = toy_config(
            tmp_path / str(cached),
            toy_tsv,
            cache_prefix=cached,
            balance=False,
            trainable="last-block",
        )
        runs[cached] = finetune_classifier(cfg)
    assert runs[True]["cached_prefix"] and not runs[False]["cached_prefix"]
    for key in ("test_accuracy", "precision", "recall", "f1", "best_val_accuracy"):
        assert runs[True][key] == pytest.approx(runs[False][key], abs=1e-6), key
    assert runs[True]["confusion_matrix"] == runs[False]["confusion_matrix"]
    logs = [
        [r for r in json.loads(f"[{','.join((tmp_path / n / 'metrics.jsonl').open())}]")
         if r["kind"] in ("eval", "accuracy")]
        for n in ("True", "False")
    ]  # fmt: skip
    assert len(logs[0]) == len(logs[1]) == 6
    for a, b in zip(*logs, strict=True):
        for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    # Adam amplifies float noise in near-zero gradients, so compare what the models say
    texts = ["great lovely", "poor sad awful", "door chair", "nice window"]
    probs = [
        torch.tensor([p for _, p in classify_texts(resolve_model(tmp_path / n)[0], texts, CPU)])
        for n in ("True", "False")
    ]
    torch.testing.assert_close(probs[0], probs[1], rtol=0, atol=1e-3)


def test_run_folder_results_and_reload(tmp_path: Path, toy_tsv: Path) -> None:
    results = finetune_classifier(toy_config(tmp_path / "run", toy_tsv, balance=False, epochs=4))
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "loss.png", "accuracy.png", "model"):
        assert (run / name).exists(), name
    on_disk = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert on_disk == results
    assert results["labels"] == ["bad", "good", "meh"]
    assert (results["n_train"], results["n_val"], results["n_test"]) == (42, 6, 12)
    assert results["test_accuracy"] > 0.8  # the words decide the class; chance is 1/3
    assert sum(map(sum, results["confusion_matrix"])) == 12
    model, meta = resolve_model(run)
    assert meta["labels"] == ["bad", "good", "meh"] and model.cfg.n_classes == 3
    preds = classify_texts(model, ["great lovely nice", "awful sad poor"], CPU)
    assert [meta["labels"][i] for i, _ in preds] == ["good", "bad"]
    assert all(1 / 3 < p <= 1 for _, p in preds)


def test_save_reload_and_lora_merge_keep_outputs(tmp_path: Path) -> None:
    x, last = pad_batch([torch.tensor(encode("call now")), torch.tensor(encode("ok"))], EOT_ID)
    model = tiny_classifier(n_classes=4)
    set_trainable(model, "lora", rank=2, alpha=4.0)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            torch.nn.init.normal_(module.lora_b, std=0.1)  # make the adapters matter
    with torch.no_grad():
        expected = class_logits(model.eval(), x, last)
        save_classifier(model, tmp_path / "m", {"task": "classify", "labels": list("abcd")})
        reloaded, meta = load_model_folder(tmp_path / "m")
        got = class_logits(reloaded, x, last)
    assert meta["labels"] == list("abcd") and reloaded.cfg.n_classes == 4
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # the in-memory model still has its adapters (the merge worked on a copy)
    assert any(isinstance(m, LoRALinear) for m in model.modules())
    plain = tiny_classifier(seed=3)
    save_model(plain, tmp_path / "p", {"task": "classify", "labels": ["a", "b"]})
    again, _ = load_model_folder(tmp_path / "p")
    pairs = zip(plain.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_resume_after_interruption_matches_uninterrupted(tmp_path: Path, toy_tsv: Path) -> None:
    full = finetune_classifier(toy_config(tmp_path / "full", toy_tsv, balance=False))
    cfg = toy_config(tmp_path / "cut", toy_tsv, balance=False)
    per_epoch = 42 // 4
    assert finetune_classifier(cfg, stop_after=per_epoch + 3) == {}
    assert not (tmp_path / "cut" / "results.json").exists()
    resumed = finetune_classifier(cfg, resume=True)
    for key in ("test_accuracy", "f1", "best_val_accuracy", "best_epoch", "confusion_matrix"):
        assert resumed[key] == full[key], key


def test_pretrain_on_texts_never_sees_validation_or_test(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    lines = [f"{'a' if i % 4 else 'b'}\tmessage number {i} here" for i in range(80)]
    path.write_text("\n".join(lines), encoding="utf-8")
    cfg = toy_config(tmp_path / "run", path, pretrain_on_texts=True, pretrain_steps=2,
                     pretrain_batch_size=2, pretrain_context=16, epochs=1)  # fmt: skip
    results = finetune_classifier(cfg)
    corpus = (tmp_path / "run" / "pretrain" / "corpus.txt").read_text(encoding="utf-8")
    texts = set(corpus.split("<|endoftext|>"))
    data = read_labelled(path)
    kept, left_out = balance(data.examples, seed=123)
    train, val, test = split(kept, seed=123)
    assert texts == {t for t, _ in train + left_out} == set(load_splits(cfg).unlabelled_texts())
    assert not texts & {t for t, _ in val + test}
    assert len(left_out) == 40 and results["n_train"] == 28
    assert (tmp_path / "run" / "pretrain" / "results.json").exists()
    with pytest.raises(GptlabError, match="--pretrain-on-texts starts from --base random"):
        ClassifierConfig(base="gpt2-small", pretrain_on_texts=True)


# ---- commands ---------------------------------------------------------------------------------


def test_classify_command_text_and_csv(
    tmp_path: Path, toy_tsv: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    assert main(["finetune-classifier", "--base", "random", "--preset", "gpt-nano", "--data",
                 str(toy_tsv), "--no-balance", "--epochs", "4", "--batch-size", "4", "--lr", "3e-3",
                 "--trainable", "all", "--device", "cpu", "--out", str(run)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "test accuracy" in out and "val loss" in out
    assert "ppl" not in out  # a perplexity of a classification loss means nothing
    evals = [r for r in RunDir(run).metrics() if r["kind"] == "eval"]
    assert len(evals) == 4 and not any("ppl" in key for r in evals for key in r)
    assert main(["classify", "--model", str(run), "super nice great", "terrible awful"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in out] == ["good", "bad"]
    texts = ["lovely nice", '"door", window chair', "sad poor awful"] * 15
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["classify", "--model", str(run), "--input", str(tmp_path / "in.txt"),
                 "--output", str(tmp_path / "out.csv"), "--batch-size", "4"]) == 0  # fmt: skip
    with open(tmp_path / "out.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["text", "label", "probability"] and len(rows) == 46
    assert [r[0] for r in rows[1:]] == texts
    assert [r[1] for r in rows[1:]] == ["good", "meh", "bad"] * 15  # same in every batch
    (tmp_path / "gap.txt").write_text("fine\n\nok\n", encoding="utf-8")
    assert main(["classify", "--model", str(run), "--input", str(tmp_path / "gap.txt")]) == 2
    assert "gap.txt:2: empty line" in capsys.readouterr().err
    assert main(["classify", "--model", str(run / "checkpoints" / "nowhere"), "x"]) == 2


def test_eval_interval_given_is_honoured_and_best_model_kept(tmp_path: Path, toy_tsv: Path) -> None:
    """--eval-interval N evaluates every N steps (and at the last), not once per epoch, and
    the saved model is the one with the best validation accuracy of those evaluations."""
    run = tmp_path / "run"
    assert main(["finetune-classifier", "--base", "random", "--preset", "gpt-nano", "--data",
                 str(toy_tsv), "--no-balance", "--epochs", "2", "--batch-size", "4", "--lr", "3e-3",
                 "--trainable", "all", "--device", "cpu", "--eval-interval", "3",
                 "--out", str(run)]) == 0  # fmt: skip
    records = RunDir(run).metrics()
    per_epoch = 42 // 4
    steps = [3, 6, 9, 12, 15, 18, 2 * per_epoch]
    assert [r["step"] for r in records if r["kind"] == "eval"] == steps
    accuracy = [r for r in records if r["kind"] == "accuracy"]
    assert [r["step"] for r in accuracy] == steps
    assert [r["epoch"] for r in accuracy] == [s / per_epoch for s in steps]
    best = max(accuracy, key=lambda r: r["val_acc"])  # the first of equals: saved on a rise
    _, meta = load_model_folder(run / "model")
    assert (meta["step"], meta["val_acc"]) == (best["step"], best["val_acc"])
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert results["best_val_accuracy"] == best["val_acc"]
    assert results["best_epoch"] == best["step"] / per_epoch
