"""Classification fine-tuning on a Llama-family base: texts are encoded by the base's own
tokenizer (SmolLM2's, read from the real GGUF file) and padded with its pad id, the class is
read at the last real token (equal to the unpadded text's logits, also through the cached
prefix with its rotary positions), the trainable parts name a Llama's modules, and a trained
classifier folder carries that tokenizer to `gptlab classify`."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as Backend
from tokenizers.processors import TemplateProcessing

from gptlab import text
from gptlab.checkpoints import TOKENIZER, save_model
from gptlab.classifier import (
    cache_prefix,
    class_logits,
    classifier_from,
    classify_texts,
    predict_proba,
    set_trainable,
)
from gptlab.cli import main
from gptlab.config import LlamaConfig
from gptlab.hub import load_tokenizer, resolve_model
from gptlab.labelled import ClassificationDataset, collate, encode_text
from gptlab.llama import Llama
from gptlab.runs import RunDir

CPU = torch.device("cpu")
# SmolLM2's vocabulary on a tiny tied, multi-query body (SmolLM2's own shape, scaled down)
TINY = LlamaConfig(
    vocab_size=49152,
    context_length=64,
    emb_dim=32,
    n_layers=3,
    hidden_dim=64,
    n_heads=4,
    n_kv_heads=1,
    rope_base=100000.0,
)
TEXTS = ["WINNER!! Claim your prize now", "ok see you at 5", "literal <|im_end|> stays text"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: one thread beats two that wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smol(smollm2_file: Path) -> text.HFTokenizer:
    """SmolLM2's tokenizer (pad <|im_end|> = 2, no bos added), read once for the module."""
    return text.from_gguf(smollm2_file)


def tiny_llama(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(TINY).eval()
    with torch.no_grad():  # norms that are not all ones, so a skipped norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def tiny_classifier(seed: int = 0) -> Llama:
    return classifier_from(tiny_llama(seed), 2, dropout=0.0, seed=seed).eval()


def test_batches_are_the_tokenizers_ids_padded_with_its_pad_id(smol: text.HFTokenizer) -> None:
    assert (smol.pad_id, smol.add_bos) == (2, False)  # <|im_end|>, as the GGUF file says
    ds = ClassificationDataset.from_texts([(t, i % 2) for i, t in enumerate(TEXTS)], 64, smol)
    ids = [smol.encode(t, allow_special=False) for t in TEXTS]
    assert 2 not in ids[2]  # the literal special token is plain text, never padding
    x, last, y = collate([ds[0], ds[1], ds[2]], pad_id=smol.pad_id)
    width = max(map(len, ids))
    assert x.tolist() == [row + [2] * (width - len(row)) for row in ids]
    assert last.tolist() == [len(row) - 1 for row in ids]
    assert y.tolist() == [0, 1, 0]
    assert encode_text(TEXTS[0], 3, smol).tolist() == ids[0][:3]


def test_bos_comes_first_where_the_tokenizer_adds_it(smol: text.HFTokenizer) -> None:
    backend = Backend.from_str(smol.backend.to_str())
    backend.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
    )
    with_bos = text.HFTokenizer(
        backend, name="bos", special_tokens=smol.special_tokens, chat_template=None
    )
    assert with_bos.add_bos and with_bos.bos_id == 1
    plain = smol.encode(TEXTS[1], allow_special=False)
    assert encode_text(TEXTS[1], 64, with_bos).tolist() == [1, *plain]
    assert encode_text(TEXTS[1], 64, smol).tolist() == plain


@torch.no_grad()
def test_logits_at_the_last_real_token_equal_the_unpadded_text(smol: text.HFTokenizer) -> None:
    model = tiny_classifier()
    ds = ClassificationDataset.from_texts([(t, 0) for t in TEXTS], 64, smol)
    x, last, _ = collate(ds.items, pad_id=smol.pad_id)
    alone = torch.cat([model(seq[None], select=torch.tensor([len(seq) - 1])) for seq, _ in ds])
    torch.testing.assert_close(class_logits(model, x, last), alone, rtol=1e-5, atol=1e-5)
    probs = predict_proba(model, [seq for seq, _ in ds], CPU, batch_size=2, pad_id=smol.pad_id)
    torch.testing.assert_close(probs, torch.softmax(alone, -1), rtol=1e-5, atol=1e-6)
    # the cached prefix (frozen blocks run once) and its tail keep the rotary positions
    frozen = set_trainable(model, "last-block")
    cached = cache_prefix(model, ds, frozen, CPU, batch_size=2, pad_id=smol.pad_id)
    h, h_last, _ = collate(cached.items)
    tail = class_logits(model, h, h_last, start=frozen)
    torch.testing.assert_close(tail, alone, rtol=1e-5, atol=1e-5)


def test_trainable_parts_name_a_llamas_modules() -> None:
    def trainable(mode: str, **kw: int) -> set[str]:
        model = tiny_classifier()
        frozen = set_trainable(model, mode, **kw)
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        return names | {f"frozen={frozen}"}

    head = {"out_head.weight", "out_head.bias", "final_norm.weight"}
    last = {n for n, _ in tiny_classifier().named_parameters() if n.startswith("blocks.2.")}
    assert trainable("last-block") == last | head | {"frozen=2"}
    two = trainable("last-k", k=2)
    assert {n.split(".")[1] for n in two if n.startswith("blocks.")} == {"1", "2"}
    assert "frozen=1" in two and "final_norm.weight" in two
    lora = trainable("lora", rank=2)
    assert {n for n in lora if not n.endswith(("lora_a", "lora_b"))} == {
        "out_head.weight",
        "out_head.bias",
        "frozen=0",
    }
    assert {n.split(".")[1] for n in lora if "lora" in n} == {"0", "1", "2"}
    everything = {n for n, _ in tiny_classifier().named_parameters()} | {"frozen=0"}
    assert trainable("all") == everything


@pytest.fixture(scope="module")
def toy_tsv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 short texts, 2 classes told apart by their words."""
    rng = random.Random(0)
    words = {"spam": ["WIN", "prize", "cash", "claim"], "ham": ["mum", "dinner", "later", "home"]}
    lines = []
    for i in range(48):
        label = ("ham", "spam")[i % 2]
        lines.append(f"{label}\t{' '.join(rng.choice(words[label]) for _ in range(4))}")
    path = tmp_path_factory.mktemp("data") / "toy.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_trains_on_a_llama_base_and_classifies_with_its_tokenizer(
    tmp_path: Path, toy_tsv: Path, smol: text.HFTokenizer, capsys: pytest.CaptureFixture
) -> None:
    base = save_model(tiny_llama(), tmp_path / "base", tokenizer=smol)
    run = tmp_path / "run"
    assert main(["finetune-classifier", "--base", str(base), "--data", str(toy_tsv),
                 "--no-balance", "--epochs", "6", "--batch-size", "4", "--lr", "3e-3",
                 "--device", "cpu", "--out", str(run)]) == 0  # fmt: skip
    assert "test accuracy" in capsys.readouterr().out
    train = [r["train_loss"] for r in RunDir(run).metrics() if r["kind"] == "eval"]
    assert len(train) == 6 and train[-1] < 0.2 * train[0]  # default parts: last block + norm
    assert (run / "model" / TOKENIZER).is_file()
    tok = load_tokenizer(run)
    assert tok.encode(TEXTS[2], allow_special=False) == smol.encode(TEXTS[2], allow_special=False)
    assert tok.pad_id == smol.pad_id
    texts = ["claim cash prize WIN", "mum home for dinner later"]
    assert main(["classify", "--model", str(run), *texts]) == 0
    out = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    model, meta = resolve_model(run)
    expected = classify_texts(model, texts, CPU, tokenizer=smol)
    assert [row[0] for row in out] == [meta["labels"][i] for i, _ in expected] == ["spam", "ham"]
    assert [float(row[1]) for row in out] == [round(p, 4) for _, p in expected]
