"""`gptlab download`: fetch a pretrained GPT-2 (converted into the local cache), a Hugging
Face repository's weights, configs and tokenizer, or the judge model (gptlab.judge_model)."""

from __future__ import annotations

from gptlab.config import OPENAI_SIZES
from gptlab.errors import GptlabError
from gptlab.hub import REPO_ID, ensure_hf_repo, ensure_pretrained
from gptlab.judge_model import JUDGE, JUDGE_NAMES, ensure_split_file
from gptlab.settings import DownloadConfig


def run(c: DownloadConfig) -> int:
    if c.name in OPENAI_SIZES:
        folder = ensure_pretrained(c.name, c.cache_dir, c.base_url, source=c.source)
    elif c.name in JUDGE_NAMES:
        folder = ensure_split_file(JUDGE, c.cache_dir, c.base_url, c.wheel_dir)
    elif REPO_ID.fullmatch(c.name):
        folder = ensure_hf_repo(c.name, c.cache_dir, c.base_url, c.revision)
    else:
        sizes = ", ".join(OPENAI_SIZES)
        raise GptlabError(
            f"{c.name!r}: not a GPT-2 size ({sizes}), a repository id owner/name or judge"
        )
    print(f"{c.name}: {folder}")
    return 0
