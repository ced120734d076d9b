"""Pretraining data: corpora, sliding windows, and batches that can resume mid-epoch.

A corpus is a UTF-8 text file or a folder of `*.txt` files; documents are joined with
`<|endoftext|>`. The token stream is split by position (the first 90% trains, the rest
validates, as in the book) and cut into windows of `window` tokens every `stride` tokens, each
paired with the same window shifted by one as targets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from gptlab.errors import GptlabError
from gptlab.io import read_utf8
from gptlab.tokenizer import EOT_ID, encode


def bundled(name: str) -> AbstractContextManager[Path]:
    """A file shipped in gptlab/assets (see assets/SOURCES.md), as a real path."""
    return resources.as_file(resources.files("gptlab") / "assets" / name)


def read_corpus(path: Path | None) -> list[str]:
    """The documents of a corpus: a file, every `*.txt` below a folder, or (None) the bundled
    short story."""
    if path is None:
        with bundled("the-verdict.txt") as p:
            return [read_utf8(p)]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise GptlabError(f"{path}: folder holds no .txt files")
        return [read_utf8(p) for p in files]
    return [read_utf8(path)]


def tokenize_corpus(docs: Sequence[str]) -> torch.Tensor:
    ids: list[int] = []
    for i, doc in enumerate(docs):
        if i:
            ids.append(EOT_ID)
        ids.extend(encode(doc))
    return torch.tensor(ids, dtype=torch.long)


class SlidingWindowDataset(Dataset):
    """Input/target windows over one token stream: item i starts at token i * stride."""

    def __init__(self, ids: torch.Tensor, window: int, stride: int) -> None:
        if window < 1 or stride < 1:
            raise GptlabError(f"window and stride must be positive (got {window}, {stride})")
        self.ids, self.window, self.stride = ids, window, stride
        self.n = max(0, (len(ids) - window - 1) // stride + 1)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.stride
        chunk = self.ids[start : start + self.window + 1]
        return chunk[:-1], chunk[1:]


def pretraining_datasets(
    ids: torch.Tensor, window: int, stride: int, val_fraction: float, source: str
) -> tuple[SlidingWindowDataset, SlidingWindowDataset]:
    """Split a token stream by position and window both parts; each must hold one window."""
    if not 0.0 < val_fraction < 1.0:
        raise GptlabError(f"val fraction must be between 0 and 1, got {val_fraction}")
    cut = int(len(ids) * (1 - val_fraction))
    train = SlidingWindowDataset(ids[:cut], window, stride)
    val = SlidingWindowDataset(ids[cut:], window, stride)
    for name, ds, n in (("training", train, cut), ("validation", val, len(ids) - cut)):
        if len(ds) == 0:
            raise GptlabError(
                f"{source}: {len(ids)} tokens leave {n} for {name}, fewer than one window of "
                f"{window} + 1; use a larger corpus or a smaller --context"
            )
    return train, val


class ResumableBatches:
    """Batches of a dataset in a seeded order that depends only on (seed, epoch), so a run can
    restart at any batch position without replaying the data before it."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = True,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
    ) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if batch_size < 1:
            raise GptlabError(f"batch size must be positive, got {batch_size}")
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.drop_last, self.collate_fn, self.pin_memory = drop_last, collate_fn, pin_memory
        self.per_epoch = n // batch_size if drop_last else -(-n // batch_size)
        if self.per_epoch == 0:
            raise GptlabError(
                f"{n} examples make no full batch of {batch_size}; lower the batch size"
            )

    def _order(self, epoch: int) -> list[int]:
        n = len(self.dataset)  # type: ignore[arg-type]
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(n, generator=g).tolist()

    def epoch_batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        order = self._order(epoch)
        b = self.batch_size
        return [order[i * b : (i + 1) * b] for i in range(start, self.per_epoch)]

    def iterate(self, position: int = 0) -> Iterator[Any]:
        """Endless batches starting at global batch number `position`."""
        epoch, start = divmod(position, self.per_epoch)
        while True:
            loader = DataLoader(
                self.dataset,
                batch_sampler=self.epoch_batches(epoch, start),
                collate_fn=self.collate_fn,
                pin_memory=self.pin_memory,
                generator=self._loader_rng(),
            )
            yield from loader
            epoch, start = epoch + 1, 0

    def first(self, n_batches: int | None) -> Iterator[Any]:
        """The first `n_batches` in unshuffled order (all when None): a fixed evaluation set."""
        order = list(range(len(self.dataset)))  # type: ignore[arg-type]
        b = self.batch_size
        n = -(-len(order) // b)
        batches = [
            order[i * b : (i + 1) * b] for i in range(n if n_batches is None else min(n, n_batches))
        ]
        return iter(
            DataLoader(
                self.dataset,
                batch_sampler=batches,
                collate_fn=self.collate_fn,
                generator=self._loader_rng(),
            )
        )

    def _loader_rng(self) -> torch.Generator:
        # A DataLoader draws a seed from the global RNG unless given its own generator; that
        # draw would shift dropout's random stream whenever a loader is (re)created, and break
        # exact resume.
        return torch.Generator().manual_seed(self.seed)
