"""`gptlab prepare-data`: tokenize a large corpus into memory-mapped token shards."""

from __future__ import annotations

from gptlab.settings import PrepareDataConfig
from gptlab.shards import prepare_data, verify_shards


def run(c: PrepareDataConfig) -> int:
    assert c.src is not None and c.out is not None  # required
    m = prepare_data(c.src, c.out, c.workers, c.text_field, c.chunk_mb)
    if c.verify:
        verify_shards(c.out)
    mb = m["input_bytes"] / 1e6
    print(
        f"done: {m['documents']:,} documents, {mb:,.1f} MB -> {m['total_tokens']:,} tokens in "
        f"{len(m['shards'])} shards, {m['seconds']:.1f} s ({mb / max(m['seconds'], 1e-9):.1f} "
        f"MB/s); manifest: {c.out / 'manifest.json'}"
    )
    return 0
