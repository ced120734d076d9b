from gptlab.tokenizer import EOT_ID, decode, encode, get_tokenizer, stream_decode

# From shared/data/SOURCES.md: the same ids as OpenAI's own GPT-2 encoding.
TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
IDS = [
    15496,
    11,
    466,
    345,
    588,
    8887,
    30,
    220,
    50256,
    554,
    262,
    4252,
    18250,
    8812,
    2114,
    286,
    617,
    34680,
    27271,
    13,
]


def test_gpt2_ids() -> None:
    assert get_tokenizer().n_vocab == 50257
    assert encode(TEXT) == IDS
    assert decode(IDS) == TEXT


def test_eot_not_special_when_disallowed() -> None:
    ids = encode("<|endoftext|>", allow_eot=False)
    assert EOT_ID not in ids
    assert decode(ids) == "<|endoftext|>"


def test_stream_decode_never_splits_characters() -> None:
    text = "naïve 日本語 🙂 done"
    pieces = list(stream_decode(encode(text)))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
