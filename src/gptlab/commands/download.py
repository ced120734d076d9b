"""`gptlab download`: fetch a pretrained GPT-2 and convert it into the local cache."""

from __future__ import annotations

from gptlab.hub import ensure_pretrained
from gptlab.settings import DownloadConfig


def run(c: DownloadConfig) -> int:
    folder = ensure_pretrained(c.name, c.cache_dir, c.base_url, source=c.source)
    print(f"{c.name}: {folder}")
    return 0
