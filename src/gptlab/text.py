"""A model's tokenizer and chat format, whichever family the model comes from.

`Tokenizer` is what gptlab needs of one: `encode`/`decode`, `vocab_size`, the end-of-text id
(`eos_id`), the id to pad with (`pad_id`: the pad token, or eos when there is none), every id
that ends a reply (`stop_ids`: eos plus end-of-turn tokens such as <|im_end|> or <|eot_id|>),
the begin-of-text id and whether `encode` puts it first (`bos_id`, `add_bos`), the names of the
special tokens a chat template sees (`special_tokens`: bos_token, eos_token, ...) and the
model's chat template (Jinja source, or None). Three constructors:

- `gpt2()`: GPT-2's tiktoken encoding from gptlab.tokenizer, ids unchanged (50,257, with
  <|endoftext|> = 50256 as eos, pad and stop id) and no chat template;
- `from_tokenizer_json(path)`: a Hugging Face model folder's tokenizer.json (run by the
  `tokenizers` library), with tokenizer_config.json's special tokens and chat template (or
  chat_template.jinja, as transformers now saves it) and generation_config.json's stop ids
  when the folder has them;
- `from_gguf_metadata(metadata)` / `from_gguf(path)`: the byte-level BPE described by a GGUF
  file's tokenizer.ggml.* keys (llama.cpp's "gpt2" tokenizer model: vocabulary, merges, token
  types, special token ids, add_bos_token, chat template), rebuilt as a `tokenizers` BPE;
  a file without a chat template gets its family's where gptlab has one (`FAMILY_TEMPLATES`:
  Gemma's turns for a Gemma 3 file whose vocabulary has them), else none.

A GGUF file names its pre-tokenizer (how text is cut into words before the merges run) in
tokenizer.ggml.pre, and the name decides the split pattern: GPT-2's for "gpt2"; single digits
first, then GPT-2's, for "smollm", "starcoder" and "refact"; Llama 3's for "llama-bpe" and its
aliases (with ignore_merges, as Llama 3's tokenizer.json and llama.cpp have it); Qwen2's for
"qwen2" and "deepseek-r1-qwen". Any other name is refused rather than guessed. Tokens the file
marks as control (type 3) become special tokens, kept whole in text when `allow_special`, and
user-defined ones (type 4) are always kept whole, as llama.cpp and transformers do.

`render_chat(template, messages, ...)` renders a chat template the way transformers'
`apply_chat_template(..., tokenize=False)` does: a sandboxed Jinja environment with
trim_blocks and lstrip_blocks, the loop controls, a `tojson` that leaves non-ASCII and HTML
alone, `raise_exception`, `strftime_now`, and the special token names as variables. A rendered
prompt already holds the template's own bos token, so encode it with `add_bos=False`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gptlab.errors import GptlabError

# Texts of the tokens that end a turn or a text in the chat models gptlab knows (llama.cpp
# treats the same ones as end-of-generation); a tokenizer stops on those it has as specials.
END_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
    "<|return|>",
)
EOT = "<|endoftext|>"

# Gemma's turn format, as Google's Gemma 3 chat template renders text messages: <bos>, then
# each turn as <start_of_turn>ROLE\n, its text trimmed, <end_of_turn>\n, with "model" for the
# assistant; a system message leads the first user turn, followed by a blank line; user and
# assistant turns alternate; the generation prompt opens the model's turn.
GEMMA_TEMPLATE = r"""{{- bos_token -}}
{%- if messages and messages[0]['role'] == 'system' -%}
  {%- set lead = messages[0]['content'] + '\n\n' -%}
  {%- set turns = messages[1:] -%}
{%- else -%}
  {%- set lead = '' -%}
  {%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{- raise_exception('Gemma conversations alternate user and assistant turns') -}}
  {%- endif -%}
  {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
  {{- '<start_of_turn>' + role + '\n' + (lead if loop.first else '') -}}
  {{- message['content'] | trim -}}
  {{- '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<start_of_turn>model\n' -}}
{%- endif -%}"""
# The chat template of a family whose GGUF files may carry none (Gemma 3 270M's does not), by
# general.architecture, with the special tokens it needs in the vocabulary.
FAMILY_TEMPLATES = {"gemma3": (GEMMA_TEMPLATE, ("<start_of_turn>", "<end_of_turn>"))}
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")

# Split patterns of the pre-tokenizers GGUF files name (tokenizer.ggml.pre). GPT-2's is the
# `tokenizers` ByteLevel default; Llama 3's and Qwen2's are the ones their tokenizer.json hold.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    "gpt2": "gpt2",
    "gpt-2": "gpt2",
    "smollm": "digits+gpt2",
    "starcoder": "digits+gpt2",
    "refact": "digits+gpt2",
    "llama-bpe": "llama3",
    "llama3": "llama3",
    "llama-v3": "llama3",
    "smaug-bpe": "llama3",
    "qwen2": "qwen2",
    "deepseek-r1-qwen": "qwen2",
}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types


@runtime_checkable
class Tokenizer(Protocol):
    """What gptlab uses of a model's tokenizer (GPT-2's tiktoken or a Hugging Face one)."""

    name: str
    vocab_size: int
    eos_id: int
    pad_id: int
    stop_ids: tuple[int, ...]
    bos_id: int | None
    add_bos: bool
    chat_template: str | None
    special_tokens: dict[str, str]

    def encode(
        self, text: str, allow_special: bool = True, *, add_bos: bool | None = None
    ) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def render_chat(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kw: Any
    ) -> str: ...


@dataclass(frozen=True)
class GPT2Tokenizer:
    """gptlab.tokenizer's tiktoken encoding behind the Tokenizer interface."""

    name: str = "gpt2"
    vocab_size: int = 50257
    eos_id: int = 50256
    pad_id: int = 50256
    stop_ids: tuple[int, ...] = (50256,)
    bos_id: int | None = 50256  # as Hugging Face's GPT-2 has it; never added by encode
    add_bos: bool = False
    chat_template: str | None = None
    special_tokens: dict[str, str] = field(
        default_factory=lambda: dict.fromkeys(("bos_token", "eos_token", "unk_token"), EOT)
    )

    def encode(
        self, text: str, allow_special: bool = True, *, add_bos: bool | None = None
    ) -> list[int]:
        from gptlab import tokenizer

        ids = tokenizer.encode(text, allow_eot=allow_special)
        return [self.eos_id, *ids] if add_bos else ids

    def decode(self, ids: Iterable[int]) -> str:
        from gptlab import tokenizer

        return tokenizer.decode(ids)

    def render_chat(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kw: Any
    ) -> str:
        raise GptlabError("gpt2 has no chat template; its prompt format is Alpaca (gptlab.prompts)")


class HFTokenizer:
    """A `tokenizers.Tokenizer` with the special tokens and chat template of its model."""

    def __init__(
        self,
        backend: Any,
        *,
        name: str,
        special_tokens: dict[str, str],
        chat_template: str | None,
        extra_stop_ids: Sequence[int] = (),
    ) -> None:
        self.backend = backend
        self.name = name
        self.special_tokens = dict(special_tokens)
        self.chat_template = chat_template
        self.vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
        if "eos_token" not in special_tokens:
            raise GptlabError(f"{name}: no end-of-text (eos) token is named")
        self.eos_id = self._id(special_tokens["eos_token"])
        bos = special_tokens.get("bos_token")
        self.bos_id = self._id(bos) if bos is not None else None
        pad = special_tokens.get("pad_token")
        self.pad_id = self._id(pad) if pad is not None else self.eos_id
        specials = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        stops = [self.eos_id]
        stops += [backend.token_to_id(t) for t in END_TOKENS if t in specials]
        stops += [int(i) for i in extra_stop_ids]
        self.stop_ids = tuple(dict.fromkeys(stops))
        with_post = backend.encode("a", add_special_tokens=True).ids
        without = backend.encode("a", add_special_tokens=False).ids
        self.add_bos = (
            self.bos_id is not None
            and len(with_post) > len(without)
            and with_post[0] == self.bos_id
        )
        self._plain: Any = None  # a copy that reads special tokens' texts as plain text

    def _id(self, token: str) -> int:
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise GptlabError(f"{self.name}: special token {token!r} is not in the vocabulary")
        return int(token_id)

    def encode(
        self, text: str, allow_special: bool = True, *, add_bos: bool | None = None
    ) -> list[int]:
        """Token ids of `text`. Special tokens' texts (<|im_start|>...) become their ids when
        `allow_special`, else plain text. add_bos None: as the tokenizer does (`self.add_bos`,
        its post-processor); False: the text's tokens only; True: bos first in any case."""
        backend = self.backend
        if not allow_special:
            if self._plain is None:
                from tokenizers import Tokenizer as Backend

                plain = Backend.from_str(self.backend.to_str())
                plain.encode_special_tokens = True
                self._plain = plain
            backend = self._plain
        ids = backend.encode(text, add_special_tokens=add_bos is not False).ids
        if add_bos and (not ids or ids[0] != self.bos_id):
            if self.bos_id is None:
                raise GptlabError(f"{self.name}: has no bos token to add")
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def render_chat(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kw: Any
    ) -> str:
        """The conversation in this model's chat template (see `render_chat`)."""
        if self.chat_template is None:
            raise GptlabError(f"{self.name}: the tokenizer has no chat template")
        variables = {**self.special_tokens, **kw}
        return render_chat(self.chat_template, messages, add_generation_prompt, **variables)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def gpt2() -> GPT2Tokenizer:
    """GPT-2's tokenizer, the ids of gptlab.tokenizer.encode."""
    return GPT2Tokenizer()


# -- tokenizer.json -------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GptlabError(f"{path}: not readable JSON ({exc})") from None


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _config_template(path: Path, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise GptlabError(f"{path}: chat_template is neither a string nor a list with a default")


def from_tokenizer_json(path: str | Path) -> HFTokenizer:
    """The tokenizer of a Hugging Face model folder (or of its tokenizer.json file): the
    special tokens and chat template from tokenizer_config.json (and chat_template.jinja),
    extra stop ids from generation_config.json, when they are there beside it."""
    from tokenizers import Tokenizer as Backend

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise GptlabError(f"{file}: no such file")
    _read_json(file)  # a readable message for broken JSON, before tokenizers' own
    try:
        backend = Backend.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception for a bad layout
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GptlabError(f"{file}: not a tokenizer.json ({detail})") from None
    folder = file.parent
    config: dict[str, Any] = {}
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        config = _read_json(config_file)
        if not isinstance(config, dict):
            raise GptlabError(f"{config_file}: not a JSON object")
    special = {}
    for key in SPECIAL_NAMES:
        text = _token_text(config.get(key))
        if text is not None:
            special[key] = text
    if "eos_token" not in special:  # a bare tokenizer.json: the usual end-of-text token
        have = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        found = next((t for t in ("<|endoftext|>", "<|end_of_text|>", "</s>") if t in have), None)
        if found is None:
            raise GptlabError(
                f"{file}: no eos_token named (no tokenizer_config.json beside it says one)"
            )
        special["eos_token"] = found
    template = _config_template(config_file, config.get("chat_template"))
    jinja_file = folder / "chat_template.jinja"
    if template is None and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    stops: list[int] = []
    generation_file = folder / "generation_config.json"
    if generation_file.is_file():
        eos = _read_json(generation_file).get("eos_token_id")
        stops = [eos] if isinstance(eos, int) else [i for i in eos or () if isinstance(i, int)]
    return HFTokenizer(
        backend, name=str(file), special_tokens=special, chat_template=template,
        extra_stop_ids=stops,
    )  # fmt: skip


# -- GGUF -----------------------------------------------------------------------------------


def _pre_tokenizer(kind: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    if kind == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "digits+gpt2":
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    split = {"llama3": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT}[kind]
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _byte_level_bpe(
    metadata: Mapping[str, Any], source: str | Path, tokens: list[str], get: Any
) -> tuple[Any, dict[str, int]]:
    """llama.cpp's 'gpt2' tokenizer: byte-level BPE with the file's merges and the split rule
    its tokenizer.ggml.pre names."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders
    from tokenizers.models import BPE

    pre = metadata.get("tokenizer.ggml.pre", "gpt2")  # older files name none: GPT-2's
    if pre not in PRE_TOKENIZERS:
        raise GptlabError(
            f"{source}: unknown pre-tokenizer {pre!r} (tokenizer.ggml.pre); gptlab knows "
            f"{', '.join(sorted(PRE_TOKENIZERS))}"
        )
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GptlabError(f"{source}: tokenizer.ggml.tokens holds the same token twice")
    pairs = []
    for merge in list(get("merges")):
        left, sep, right = merge.partition(" ")
        if not sep or " " in right:
            raise GptlabError(f"{source}: merge {merge!r} is not two tokens")
        pairs.append((left, right))
    kind = PRE_TOKENIZERS[pre]
    try:
        backend = Backend(
            BPE(vocab, pairs, fuse_unk=False, byte_fallback=False, ignore_merges=kind == "llama3")
        )
    except Exception as exc:  # a merge of tokens not in the vocabulary
        raise GptlabError(f"{source}: tokenizer does not build ({exc})") from None
    backend.pre_tokenizer = _pre_tokenizer(kind)
    backend.decoder = decoders.ByteLevel()
    return backend, vocab


def _sentencepiece_bpe(tokens: list[str], unk: str | None) -> tuple[Any, dict[str, int]]:
    """llama.cpp's 'llama' tokenizer as Gemma files hold it: SentencePiece BPE (spaces as
    U+2581, byte fallback for what the vocabulary lacks, no space prefix) with no merges
    stored. They are rebuilt as transformers does for Gemma: every split of a token into two
    tokens is a merge, ranked by the token's place in the file (Gemma's scores do not follow
    the merge order), then longer left parts first; runs of spaces stored as spaces are
    respelled in U+2581 first."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    space = "\u2581"
    spelled = [space * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {token: i for i, token in enumerate(spelled)}
    order = {token: i for i, token in enumerate(spelled)}  # the last place of a repeated one
    merges = []
    for token in sorted(order, key=order.__getitem__):
        splits = [(token[:i], token[i:]) for i in range(len(token) - 1, 0, -1)]
        merges += [(a, b) for a, b in splits if a in vocab and b in vocab]
    backend = Backend(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", space)
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    backend.decoder = decoders.Sequence(
        [decoders.Replace(space, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return backend, vocab


def from_gguf_metadata(metadata: Mapping[str, Any], source: str | Path = "GGUF") -> HFTokenizer:
    """The tokenizer a GGUF file's metadata describes, byte-level BPE or Gemma's SentencePiece
    (the metadata as
    gptlab.formats.gguf.read_gguf or read_gguf_metadata return it, arrays included); `source`
    (the file) names it in errors."""
    from tokenizers import AddedToken, processors

    def get(key: str) -> Any:
        if f"tokenizer.ggml.{key}" not in metadata:
            raise GptlabError(f"{source}: metadata tokenizer.ggml.{key} missing")
        return metadata[f"tokenizer.ggml.{key}"]

    model = get("model")
    tokens = list(get("tokens"))
    types = list(metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if len(types) != len(tokens):
        raise GptlabError(f"{source}: {len(types)} token types for {len(tokens)} tokens")
    if model == "gpt2":
        backend, vocab = _byte_level_bpe(metadata, source, tokens, get)
    elif model == "llama" and not metadata.get("tokenizer.ggml.add_space_prefix", True):
        unk = metadata.get("tokenizer.ggml.unknown_token_id")
        backend, vocab = _sentencepiece_bpe(tokens, None if unk is None else tokens[int(unk)])
    else:
        raise GptlabError(
            f"{source}: tokenizer model {model!r} is not supported; gptlab builds llama.cpp's "
            "'gpt2' (byte-level BPE) tokenizers and 'llama' (SentencePiece) ones without a "
            "space prefix (Gemma's)"
        )
    control = [t for t, k in zip(tokens, types, strict=True) if k == CONTROL]
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    # (Gemma's runs of spaces are user-defined but respelled in the vocabulary: left to BPE)
    user = [t for t, k in zip(tokens, types, strict=True) if k == USER_DEFINED and t in vocab]
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])

    special = {}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown")):
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            if not 0 <= int(token_id) < len(tokens):
                raise GptlabError(f"{source}: {key} token id {token_id} is outside the vocabulary")
            special[name] = tokens[int(token_id)]
    pad_id = metadata.get("tokenizer.ggml.padding_token_id")
    if pad_id is not None and 0 <= int(pad_id) < len(tokens):
        special["pad_token"] = tokens[int(pad_id)]
    # llama.cpp's flags; absent means no (transformers reads such files the same way)
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    pieces = [special["bos_token"]] if add_bos and "bos_token" in special else []
    pieces += ["$A"] + ([special["eos_token"]] if add_eos and "eos_token" in special else [])
    if len(pieces) > 1:
        ids = [(t, vocab[t]) for t in dict.fromkeys(p for p in pieces if p != "$A")]
        backend.post_processor = processors.TemplateProcessing(
            single=" ".join(pieces), special_tokens=ids
        )
    template = metadata.get("tokenizer.chat_template")
    if template is None:
        template = family_template(str(metadata.get("general.architecture")), control)
    return HFTokenizer(backend, name=str(source), special_tokens=special, chat_template=template)


def family_template(architecture: str, specials: Iterable[str]) -> str | None:
    """The chat template of the `architecture`'s family (FAMILY_TEMPLATES) for a file that
    carries none, when the vocabulary has its turn tokens as `specials`; else None."""
    template, needs = FAMILY_TEMPLATES.get(architecture, (None, ()))
    return template if template is not None and set(needs) <= set(specials) else None


def from_gguf(path: str | Path) -> HFTokenizer:
    """The tokenizer of a GGUF file (its metadata only; no tensor is read)."""
    from gptlab.formats.gguf import read_gguf_metadata

    return from_gguf_metadata(read_gguf_metadata(path), source=path)


# -- chat templates -------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _compiled(template: str) -> Any:
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` (marks the assistant's text for
        transformers' assistant masks): rendered as its body."""

        tags = {"generation"}  # noqa: RUF012 (jinja's own class attribute)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_body")
            return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise GptlabError(f"chat template line {exc.lineno}: {exc.message}") from None


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    **special: Any,
) -> str:
    """`messages` ([{"role": ..., "content": ...}, ...]) rendered by the Jinja chat `template`
    as transformers' apply_chat_template(tokenize=False) renders it. `special` holds the
    template's other variables: bos_token, eos_token... (HFTokenizer.render_chat passes its
    own), tools, documents, enable_thinking and the like. Keys whose value is None are dropped
    from each message, as transformers does. A template's raise_exception (roles must
    alternate, ...) or error is one GptlabError line."""
    import jinja2

    chat = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise GptlabError(f"chat message {message!r} is not a mapping")
        chat.append({k: v for k, v in message.items() if v is not None})
    variables = {"tools": None, "documents": None, **special}
    try:
        return _compiled(template).render(
            messages=chat, add_generation_prompt=add_generation_prompt, **variables
        )
    except jinja2.exceptions.TemplateError as exc:
        raise GptlabError(f"chat template: {exc}") from None
