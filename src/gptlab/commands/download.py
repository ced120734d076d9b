"""`gptlab download`: fetch a pretrained GPT-2 (converted into the local cache) or a Hugging
Face repository's weights, configs and tokenizer."""

from __future__ import annotations

from gptlab.config import OPENAI_SIZES
from gptlab.errors import GptlabError
from gptlab.hub import REPO_ID, ensure_hf_repo, ensure_pretrained
from gptlab.settings import DownloadConfig


def run(c: DownloadConfig) -> int:
    if c.name in OPENAI_SIZES:
        folder = ensure_pretrained(c.name, c.cache_dir, c.base_url, source=c.source)
    elif REPO_ID.fullmatch(c.name):
        folder = ensure_hf_repo(c.name, c.cache_dir, c.base_url, c.revision)
    else:
        sizes = ", ".join(OPENAI_SIZES)
        raise GptlabError(f"{c.name!r}: not a GPT-2 size ({sizes}) or a repository id owner/name")
    print(f"{c.name}: {folder}")
    return 0
