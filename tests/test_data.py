from pathlib import Path

import pytest
import torch

from gptlab.data import (
    ResumableBatches,
    SlidingWindowDataset,
    pretraining_datasets,
    read_corpus,
    tokenize_corpus,
)
from gptlab.errors import GptlabError
from gptlab.tokenizer import EOT_ID


def test_sliding_windows() -> None:
    ds = SlidingWindowDataset(torch.arange(10), window=4, stride=2)
    assert len(ds) == 3
    x, y = ds[1]
    assert x.tolist() == [2, 3, 4, 5] and y.tolist() == [3, 4, 5, 6]
    assert ds[2][1].tolist() == [5, 6, 7, 8]


def test_bundled_corpus() -> None:
    (doc,) = read_corpus(None)
    assert len(doc) == 20479 and doc.startswith("I HAD always thought Jack Gisburn")
    assert len(tokenize_corpus([doc])) == 5145


def test_folder_corpus_joins_with_eot(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("one", encoding="utf-8")
    (tmp_path / "b" / "c.txt").write_text("two", encoding="utf-8")
    (tmp_path / "ignored.md").write_text("three", encoding="utf-8")
    ids = tokenize_corpus(read_corpus(tmp_path))
    assert ids.tolist() == [505, EOT_ID, 11545]


def test_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(GptlabError, match="missing.txt: file not found"):
        read_corpus(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nstill fine\n\xff\xfe broken")
    with pytest.raises(GptlabError, match=r"bad.txt:3: not valid UTF-8"):
        read_corpus(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptlabError, match="holds no .txt files"):
        read_corpus(tmp_path / "empty")
    with pytest.raises(GptlabError, match="fewer than one window"):
        pretraining_datasets(torch.arange(50), 32, 32, 0.1, "tiny.txt")


def test_resumable_batches_restart_mid_epoch() -> None:
    ds = SlidingWindowDataset(torch.arange(200), window=4, stride=4)
    rb = ResumableBatches(ds, batch_size=5, shuffle=True, seed=3)
    it = rb.iterate(0)
    first = [next(it)[0] for _ in range(rb.per_epoch + 4)]  # into the second epoch
    later = rb.iterate(rb.per_epoch + 1)
    torch.testing.assert_close(next(later)[0], first[rb.per_epoch + 1])
    # Each epoch is a permutation of all windows, and epochs differ in order.
    epoch0 = torch.cat([b[:, 0] for b in first[: rb.per_epoch]])
    assert len(set(epoch0.tolist())) == rb.per_epoch * 5  # no window twice in an epoch
    assert rb.epoch_batches(0) != rb.epoch_batches(1)


def test_batch_size_larger_than_data() -> None:
    with pytest.raises(GptlabError, match="no full batch"):
        ResumableBatches(SlidingWindowDataset(torch.arange(20), 4, 4), 10, shuffle=False)
