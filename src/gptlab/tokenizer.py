"""GPT-2's byte-level BPE, offline: tiktoken over the merge ranks bundled with the package."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

import tiktoken
from tiktoken.load import load_tiktoken_bpe

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols, whitespace.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=1)
def mergeable_ranks() -> dict[bytes, int]:
    """GPT-2's 50,256 byte sequences and their merge ranks (ids), as bundled with gptlab; the
    GGUF writer rebuilds GPT-2's vocabulary and merges from them."""
    ranks_file = resources.files("gptlab") / "assets" / "gpt2.tiktoken"
    with resources.as_file(ranks_file) as path:
        return load_tiktoken_bpe(str(path))


@lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 encoding (50,257 ids, `<|endoftext|>` = 50256), built once per process."""
    return tiktoken.Encoding(
        name="gptlab-gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=mergeable_ranks(),
        special_tokens={EOT_TOKEN: EOT_ID},
    )


def encode(text: str, allow_eot: bool = True) -> list[int]:
    """Token ids of `text`; `<|endoftext|>` in the text becomes id 50256 when allowed."""
    allowed = {EOT_TOKEN} if allow_eot else set()
    return get_tokenizer().encode(text, allowed_special=allowed, disallowed_special=())


def decode(ids: Iterable[int]) -> str:
    return get_tokenizer().decode(list(ids))
