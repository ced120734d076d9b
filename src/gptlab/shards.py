"""Large corpora as token shards: prepared once in parallel, then read by memory-mapping.

`prepare_data` turns a folder of `*.txt` files (one document each) and `*.jsonl` files (one
document per line, in a text field) into `shard-NNNNN.bin` files of little-endian uint16 GPT-2
token ids, each document followed by `<|endoftext|>`, plus `manifest.json` (token counts and
sha256 of every shard), then `results.json` (totals, MB/s) last, as every job does; the folder
also holds the job's `config.json` and `metrics.jsonl` (one record per shard).

Work is split into chunks of about `chunk_mb` of input, each tokenized by a worker process that
writes its own shard, so only small summaries cross process boundaries. Large text files are
cut only at newlines where GPT-2's pre-tokenizer starts a new piece anyway (see
`_is_safe_cut`), so the shards hold exactly the tokens that encoding each document whole gives.

`ShardStream` maps the shards as one read-only token sequence; `RandomWindows` draws training
windows from it at random offsets that depend only on (seed, batch number), so a run resumes
at the same position without any saved data state, and nothing is loaded into RAM up front.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gptlab.errors import GptlabError
from gptlab.io import atomic_write, atomic_write_json, read_json_object
from gptlab.runs import RunDir
from gptlab.tokenizer import EOT_ID, get_tokenizer

MANIFEST = "manifest.json"
FORMAT = "gptlab-shards"
DTYPE = np.dtype("<u2")
SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class Piece:
    """A byte range of one input file; `ends_doc` for the last piece of a text document."""

    path: str
    start: int
    end: int
    ends_doc: bool


def find_inputs(src: Path) -> list[Path]:
    """The input files: `src` itself, or every `*.txt` / `*.jsonl` below the folder, sorted."""
    if src.is_file():
        if src.suffix not in SUFFIXES:
            raise GptlabError(f"{src}: expected a .txt or .jsonl file")
        return [src]
    if not src.is_dir():
        raise GptlabError(f"{src}: no such file or folder")
    files = sorted(p for p in src.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    if not files:
        raise GptlabError(f"{src}: folder holds no .txt or .jsonl files")
    return files


def _printable(byte: int) -> bool:
    return 0x21 <= byte <= 0x7E


def _is_safe_cut(window: bytes, pos: int) -> bool:
    """Whether a cut after the newline at `window[pos]` changes no token. GPT-2's pre-tokenizer
    gives a lone newline between two printable characters its own piece, and splits a blank
    line ("x\n\ny") into two newline pieces, so the cut is safe after "x\n" when "y" or
    "\ny" follows, with x and y printable ASCII."""
    if pos < 1 or pos + 2 >= len(window) or not _printable(window[pos - 1]):
        return False
    nxt = window[pos + 1]
    return _printable(nxt) or (nxt == 0x0A and _printable(window[pos + 2]))


def _cut_points(path: Path, size: int, chunk: int) -> list[int]:
    """Offsets (ending with `size`) splitting a file into pieces of about `chunk` bytes: after a
    newline for JSON Lines, where `_is_safe_cut` allows for text."""
    cuts = []
    jsonl = path.suffix == ".jsonl"
    with open(path, "rb") as f:
        target = chunk
        while target < size:
            f.seek(target - 1)
            window = f.read(1 << 16)
            at = -1
            pos = window.find(b"\n", 1)
            while pos >= 0:
                if (jsonl and pos + 1 < len(window)) or _is_safe_cut(window, pos):
                    at = target + pos
                    break
                pos = window.find(b"\n", pos + 1)
            if at < 0:  # no cut in this window: look further on
                target += len(window) - 2 if len(window) > 2 else chunk
                continue
            cuts.append(at)
            target = at + chunk
    return [*cuts, size]


def plan_chunks(files: list[Path], chunk: int) -> list[list[Piece]]:
    """Group the files' pieces into work chunks of about `chunk` bytes, in input order."""
    chunks: list[list[Piece]] = [[]]
    filled = 0
    for path in files:
        size = path.stat().st_size
        start = 0
        for end in _cut_points(path, size, chunk):
            if filled >= chunk:
                chunks.append([])
                filled = 0
            chunks[-1].append(Piece(str(path), start, end, ends_doc=end == size))
            filled += end - start
            start = end
    return [c for c in chunks if c]


def _line_of(path: str, offset: int) -> int:
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def _decode(data: bytes, piece: Piece) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = _line_of(piece.path, piece.start + exc.start)
        raise GptlabError(f"{piece.path}:{line}: not valid UTF-8") from None


def _jsonl_texts(data: bytes, piece: Piece, field: str) -> Iterator[str]:
    offset = piece.start
    for raw in data.splitlines(keepends=True):
        where = offset
        offset += len(raw)
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            line = _line_of(piece.path, where)
            raise GptlabError(f"{piece.path}:{line}: not valid JSON ({exc})") from None
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            line = _line_of(piece.path, where)
            raise GptlabError(f"{piece.path}:{line}: field {field!r} missing or not a string")
        yield text


def _encode_chunk(job: tuple[int, list[Piece], str, str]) -> dict[str, Any]:
    """Worker: tokenize one chunk and write its shard; returns the manifest entry."""
    index, pieces, out, field = job
    enc = get_tokenizer()
    eot = np.array([EOT_ID], dtype=np.uint32)
    parts, docs, n_bytes = [], 0, 0
    for piece in pieces:
        with open(piece.path, "rb") as f:
            f.seek(piece.start)
            data = f.read(piece.end - piece.start)
        n_bytes += len(data)
        if piece.path.endswith(".jsonl"):
            for text in _jsonl_texts(data, piece, field):
                parts += [enc.encode_to_numpy(text, disallowed_special=()), eot]
                docs += 1
        else:
            parts.append(enc.encode_to_numpy(_decode(data, piece), disallowed_special=()))
            if piece.ends_doc:
                parts.append(eot)
                docs += 1
    tokens = np.concatenate(parts).astype(DTYPE) if parts else np.zeros(0, DTYPE)
    name = f"shard-{index:05d}.bin"
    atomic_write(Path(out) / name, lambda p: p.write_bytes(tokens.tobytes()))
    digest = hashlib.sha256(tokens.tobytes()).hexdigest()
    return {"file": name, "tokens": len(tokens), "sha256": digest, "documents": docs,
            "bytes": n_bytes}  # fmt: skip


def _pool_context() -> mp.context.BaseContext:
    # fork starts workers in milliseconds; spawn would re-import torch in each.
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def prepare_data(
    src: Path,
    out: Path,
    workers: int | None = None,
    text_field: str = "text",
    chunk_mb: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize `src` into shards in `out`; returns the manifest. `chunk_mb` None picks about
    four chunks per worker (at most 64 MB each) so the workers finish together."""
    if (out / MANIFEST).exists():
        raise GptlabError(f"{out}: already holds prepared data; choose another --out")
    files = find_inputs(src)
    run = RunDir(out)  # the data folder is also the job's run folder
    settings = {"src": str(src), "workers": workers, "text_field": text_field, "chunk_mb": chunk_mb}
    # A rerun after a crash (no manifest yet) starts over in the same folder.
    run.prepare({"task": "prepare-data", **settings, "files": len(files)}, resume=True)
    run.truncate_metrics(0)
    total = sum(p.stat().st_size for p in files)
    workers = workers or os.cpu_count() or 1
    if chunk_mb is None:
        chunk = int(min(64 << 20, max(1 << 20, total // (4 * workers))))
    else:
        chunk = max(1, int(chunk_mb * (1 << 20)))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    chunks = plan_chunks(files, chunk)
    jobs = [(i, pieces, str(out), text_field) for i, pieces in enumerate(chunks)]
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenize", disable=not progress)
    entries: list[dict[str, Any]] = []
    with bar:
        if workers == 1 or len(jobs) == 1:
            results: Iterator[dict[str, Any]] = map(_encode_chunk, jobs)
            pool = None
        else:
            pool = _pool_context().Pool(min(workers, len(jobs)))
            results = pool.imap(_encode_chunk, jobs)
        try:
            for entry in results:
                entries.append(entry)
                run.log({"kind": "shard", "step": len(entries), **entry})
                bar.update(entry["bytes"])
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    manifest = {
        "format": FORMAT,
        "version": 1,
        "tokenizer": "gpt2",
        "dtype": "uint16",
        "eot_id": EOT_ID,
        "source": str(src),
        "text_field": text_field,
        "total_tokens": sum(e["tokens"] for e in entries),
        "documents": sum(e["documents"] for e in entries),
        "input_bytes": total,
        "seconds": round(time.perf_counter() - t0, 3),
        "shards": entries,
    }
    atomic_write_json(out / MANIFEST, manifest)
    headline = ("total_tokens", "documents", "input_bytes", "seconds")
    results = {k: manifest[k] for k in headline}
    results["mb_per_s"] = round(total / 1e6 / max(manifest["seconds"], 1e-9), 2)
    atomic_write_json(out / "results.json", {"task": "prepare-data", **results})
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.exists():  # the usual cause: a corpus folder passed before preparing it
        raise GptlabError(f"{path}: not found; prepare the folder with `gptlab prepare-data`")
    manifest = read_json_object(path, "shard manifest")
    if manifest.get("format") != FORMAT:
        raise GptlabError(f"{path}: not a gptlab shard manifest (format {FORMAT!r})")
    return manifest


def verify_shards(directory: Path) -> None:
    """Check every shard's sha256 against the manifest (reads all data once)."""
    for i, entry in enumerate(read_manifest(directory)["shards"]):
        digest = hashlib.sha256((directory / entry["file"]).read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            raise GptlabError(
                f"{directory / MANIFEST}: shards[{i}] {entry['file']}: sha256 differs"
            )


class ShardStream:
    """The tokens of a prepared folder as one sequence, memory-mapped, never read whole."""

    def __init__(self, directory: Path) -> None:
        manifest = read_manifest(directory)
        self.maps: list[np.memmap] = []
        for i, entry in enumerate(manifest["shards"]):
            path = directory / entry["file"]
            size = path.stat().st_size if path.is_file() else -1
            if size != entry["tokens"] * DTYPE.itemsize:
                found = "is missing" if size < 0 else f"holds {size / DTYPE.itemsize:g}"
                raise GptlabError(
                    f"{directory / MANIFEST}: shards[{i}] {entry['file']}: expected "
                    f"{entry['tokens']} tokens, the file {found}"
                )
            if entry["tokens"]:
                self.maps.append(np.memmap(path, dtype=DTYPE, mode="r"))
        self.offsets = np.cumsum([0] + [len(m) for m in self.maps])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) as int64, crossing shard boundaries as needed."""
        out = np.empty(n, dtype=np.int64)
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        done = 0
        while done < n:
            lo = start + done - int(self.offsets[i])
            take = min(n - done, len(self.maps[i]) - lo)
            out[done : done + take] = self.maps[i][lo : lo + take]
            done += take
            i += 1
        return out


class RandomWindows:
    """Batches of (input, target) windows of `window` tokens from tokens [start, end) of a
    stream. Training batch k starts at offsets drawn from a generator seeded with (seed, k);
    `first` yields consecutive windows from `start`, a fixed evaluation set. The interface is
    that of gptlab.data.ResumableBatches, so gptlab.training.train takes either."""

    def __init__(
        self,
        stream: ShardStream,
        start: int,
        end: int,
        window: int,
        batch_size: int,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if end - start < window + 1:
            raise GptlabError(
                f"{end - start} tokens are fewer than one window of {window} + 1; "
                "prepare more data or lower --context"
            )
        self.stream, self.start, self.end, self.window = stream, start, end, window
        self.batch_size, self.seed, self.pin_memory = batch_size, seed, pin_memory
        # Nominal epoch: as many windows as the region holds side by side.
        self.n_windows = (end - start - 1) // window
        self.per_epoch = max(1, self.n_windows // batch_size)

    def _batch(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([self.stream.read(int(s), self.window + 1) for s in starts])
        chunk = torch.from_numpy(rows)
        if self.pin_memory:
            chunk = chunk.pin_memory()
        return chunk[:, :-1], chunk[:, 1:]

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, k])
        starts = rng.integers(self.start, self.end - self.window, size=self.batch_size)
        return self._batch(starts)

    def iterate(self, position: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches starting at batch number `position`."""
        k = position
        while True:
            yield self.batch(k)
            k += 1

    def first(self, n_batches: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first `n_batches` batches of side-by-side windows (all when None)."""
        n = -(-self.n_windows // self.batch_size)
        for b in range(n if n_batches is None else min(n, n_batches)):
            idx = np.arange(b * self.batch_size, min((b + 1) * self.batch_size, self.n_windows))
            yield self._batch(self.start + idx * self.window)
