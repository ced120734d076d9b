from gptlab.generation import TextStream
from gptlab.tokenizer import EOT_ID, decode, encode, get_tokenizer

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


def test_text_stream_never_splits_characters() -> None:
    text = "naïve 日本語 🙂 done"
    stream = TextStream()
    pieces = [stream.push(i) for i in encode(text)]
    pieces.append(stream.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces[:-1]  # a token holding part of a character showed nothing yet
    assert not stream.stopped


def test_text_stream_shows_a_dangling_partial_character_as_a_replacement_at_the_end() -> None:
    stream = TextStream()
    first_byte_of_emoji = get_tokenizer().encode_single_token(b"\xf0")
    assert stream.push(encode("ok")[0]) == "ok"
    assert stream.push(first_byte_of_emoji) == ""
    assert stream.flush() == "\ufffd"
