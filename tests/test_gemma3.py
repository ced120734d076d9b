"""gptlab.gemma3 against Hugging Face's Gemma3ForCausalLM (transformers, as a reference only):
tiny random models with the same weights give the same logits and greedy tokens, on prompts
longer than the sliding window too; the KV cache (one token at a time, and left-padded batches)
gives what the uncached pass gives; configs check themselves. The real Gemma 3 270M file
against transformers' reading of it (computed by transformers on the first run and stored
beside the file: tests/reference.py), and Gemma's chat turns for a file that carries no
template."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from gptlab.config import Gemma3Config
from gptlab.config.gemma3 import PRESETS
from gptlab.errors import GptlabError
from gptlab.families import config_from_dict, config_to_dict
from gptlab.formats.gguf import read_gguf_metadata
from gptlab.formats.llama_names import expected_shapes, from_hf, parameter_names, to_hf
from gptlab.gemma3 import Gemma3
from gptlab.generation import generate
from gptlab.instructions import prompt_format, tokenize_entry
from gptlab.model import KVCache
from gptlab.settings import Sampling
from gptlab.text import GEMMA_TEMPLATE, family_template, from_gguf_metadata, render_chat
from tests.reference import (
    transformers_gguf_output,
    transformers_reference,
    worst_logit_difference,
)
from tests.test_llama import check_left_padding

BASE = dict(vocab_size=97, context_length=128, emb_dim=64, hidden_dim=96, rms_eps=1e-6)
CONFIGS = {
    # window 8 << the 40-token prompts; pattern 3: layers 0, 1 local, 2 global, 3, 4 local
    "gqa-window8": Gemma3Config(
        **BASE, n_layers=5, n_heads=4, n_kv_heads=2, head_dim=16, sliding_window=8,
        sliding_pattern=3, query_scale=24.0, rope_base=1e6, rope_local_base=1e4,
    ),
    # linear rope scaling on the global layers (as Gemma 3 4B), untied head, MQA
    "mqa-scaled-untied": Gemma3Config(
        **BASE, n_layers=3, n_heads=4, n_kv_heads=1, head_dim=32, sliding_window=5,
        sliding_pattern=2, query_scale=32.0, rope_factor=8.0, tie_weights=False,
    ),
}  # fmt: skip


def hf_model(cfg: Gemma3Config) -> torch.nn.Module:
    """The same shape built by transformers, with random norm weights (so a norm that adds 1
    in the wrong place cannot hide behind zeros)."""
    rope: dict = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.rope_factor != 1.0:
        rope = {"rope_type": "linear", "factor": cfg.rope_factor, "rope_theta": cfg.rope_base}
    local = {"rope_type": "default", "rope_theta": cfg.rope_local_base}
    layer_types = [
        "sliding_attention" if cfg.is_sliding(i) else "full_attention" for i in range(cfg.n_layers)
    ]
    config = transformers.Gemma3TextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.emb_dim,
        intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.context_length,
        rms_norm_eps=cfg.rms_eps,
        tie_word_embeddings=cfg.tie_weights,
        query_pre_attn_scalar=int(cfg.query_scale),
        sliding_window=cfg.sliding_window,
        layer_types=layer_types,
        rope_parameters={"full_attention": rope, "sliding_attention": local},
        attn_implementation="eager",
    )
    model = transformers.Gemma3ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request: pytest.FixtureRequest) -> tuple[Gemma3Config, torch.nn.Module, Gemma3]:
    cfg = CONFIGS[request.param]
    torch.manual_seed(0)
    hf = hf_model(cfg)
    model = Gemma3(cfg).eval()
    missing, unexpected = model.load_state_dict(from_hf(hf.state_dict(), cfg), strict=False)
    assert not unexpected
    assert missing == (["out_head.weight"] if model.tied else [])
    return cfg, hf, model


@torch.no_grad()
def test_logits_match_transformers(pair) -> None:
    cfg, hf, model = pair
    idx = torch.randint(0, cfg.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    theirs = hf(idx).logits
    for impl in ("sdpa", "reference"):
        model.set_attention(impl)
        ours = model(idx)
        assert ours.shape == theirs.shape == (3, 40, cfg.vocab_size)
        assert (ours - theirs).abs().max().item() < 1e-4, impl
    model.set_attention("sdpa")
    assert model.num_params() == sum(p.numel() for p in hf.parameters())


@torch.no_grad()
def test_greedy_tokens_match_transformers(pair) -> None:
    cfg, hf, model = pair
    prompt = torch.randint(0, cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(4))
    theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    s = Sampling(max_new_tokens=20, stop_ids=())
    ours = generate(model, prompt.tolist(), s)
    assert ours == generate(model, prompt.tolist(), s, use_cache=False)  # cached = uncached
    assert ours[0] == theirs[0, 12:].tolist()


@torch.no_grad()
def test_cache_one_token_at_a_time_equals_full_pass(pair) -> None:
    cfg, _, model = pair
    idx = torch.randint(0, cfg.vocab_size, (2, 30), generator=torch.Generator().manual_seed(2))
    full = model(idx)
    cache = KVCache(cfg, 2, 32, "cpu", torch.float32)
    prefix = model(idx[:, :3], cache)  # a prompt shorter than the window, then past it
    steps = [model(idx[:, t : t + 1], cache) for t in range(3, 20)]
    chunk = model(idx[:, 20:], cache)  # several new tokens at once, beyond the window
    cached = torch.cat([prefix, *steps, chunk], dim=1)
    assert (cached - full).abs().max().item() < 1e-5


@torch.no_grad()
def test_cache_with_left_padding_equals_each_row_alone(pair) -> None:
    cfg, _, model = pair
    check_left_padding(cfg, model, [14, 4, 9], 8)  # rows longer and shorter than the window


def test_names_presets_and_config_checks() -> None:
    for cfg in CONFIGS.values():
        names, shapes = parameter_names(cfg), expected_shapes(cfg)
        assert {n.gptlab for n in names} == set(shapes) - (
            {"out_head.weight"} if cfg.tie_weights else set()
        )
        state = {k: torch.randn(s) for k, s in shapes.items()}
        back = from_hf(to_hf(state, cfg), cfg)
        assert all(torch.equal(back[k], state[k]) for k in back)
        assert config_from_dict(config_to_dict(cfg)) == cfg
    with torch.device("meta"):
        n = Gemma3(PRESETS["gemma3-270m"]).num_params()
        micro = Gemma3(PRESETS["gemma3-micro"]).num_params()
    assert n == 268_098_176  # google/gemma-3-270m, tied head counted once
    assert 5e6 < micro < 10e6
    assert [PRESETS["gemma3-1b"].is_sliding(i) for i in range(6)] == [True] * 5 + [False]
    with pytest.raises(GptlabError, match="sliding_window must be positive"):
        Gemma3Config(sliding_window=0)
    with pytest.raises(GptlabError, match="not a multiple"):
        Gemma3Config(n_heads=4, n_kv_heads=3)


def test_family_template_needs_gemma3_and_its_turn_tokens() -> None:
    turns = ["<bos>", "<start_of_turn>", "<end_of_turn>"]
    assert family_template("gemma3", turns) == GEMMA_TEMPLATE
    assert family_template("gemma3", ["<|endoftext|>"]) is None  # a micro model on GPT-2's
    assert family_template("llama", turns) is None
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(GptlabError, match="alternate user and assistant"):
        render_chat(GEMMA_TEMPLATE, messages, bos_token="<bos>")


# --- the real file: Gemma 3 270M, Q4_K_M (Gemma Terms of Use: fetched into a cache only) -------

TEXTS = [
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # {x: [1, 2]}",
    "Crème brûlée, naïve façade, señor Müller: déjà vu à Zürich.",
    "Emoji 🤖🚀🎉 and 中文的字符, then an\ttab,   three spaces\n\n\nand newlines 12345.",
]
ID_TEXTS = [*TEXTS, " leading space", "a  b   c    d", "日本語のテキスト", "<end_of_turn>"]
PROMPT = "The capital of France is"
CHAT = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": " What is the capital of Italy?\n"},
    {"role": "assistant", "content": "Rome."},
    {"role": "user", "content": "And of France?"},
]
# the same conversation in Gemma's published turn format, written out by hand
CHAT_TEXT = (
    "<bos><start_of_turn>user\nAnswer in one word.\n\nWhat is the capital of Italy?<end_of_turn>\n"
    "<start_of_turn>model\nRome.<end_of_turn>\n"
    "<start_of_turn>user\nAnd of France?<end_of_turn>\n<start_of_turn>model\n"
)


def transformers_output(path: Path) -> dict:
    """transformers' reading of the file (tests/reference.py), and the chat conversation
    rendered by its own template engine on gptlab's Gemma template and, written out, tokenized
    by its tokenizer (stored too)."""

    def chat_output() -> dict:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        rendered = tok.apply_chat_template(
            CHAT, chat_template=GEMMA_TEMPLATE, add_generation_prompt=True, tokenize=False
        )
        ids = tok(CHAT_TEXT, add_special_tokens=False)["input_ids"]
        return {"chat_rendered": rendered, "chat_ids": ids}

    chat = {"chat": [CHAT, CHAT_TEXT], "template": GEMMA_TEMPLATE, "generation_prompt": True}
    return {
        **transformers_gguf_output(path, ID_TEXTS, TEXTS, PROMPT, 8),
        **transformers_reference(path, chat, chat_output),
    }


@pytest.fixture(scope="module")
def gemma3(gemma3_file: Path):
    """(gptlab's read, model and tokenizer of the file; transformers' output on it)."""
    from gptlab.formats.gguf import build_llama, read_gguf
    from gptlab.text import from_gguf_metadata

    read = read_gguf(gemma3_file)
    ours = build_llama(read.cfg, read.tensors)
    tokenizer = from_gguf_metadata(read.metadata, source=gemma3_file)
    return read, ours, tokenizer, transformers_output(gemma3_file)


@pytest.mark.slow
def test_real_file_config_and_token_ids(gemma3) -> None:
    read, _, ours, theirs = gemma3
    assert read.metadata["general.architecture"] == "gemma3"
    assert read.cfg == PRESETS["gemma3-270m"]  # the preset agrees with the file
    for text in ID_TEXTS:
        ids = ours.encode(text)
        assert ids == theirs["ids"][text], text
        assert ours.decode(ids[1:]) == text  # after the bos the file asks for


@pytest.mark.slow
@torch.no_grad()
def test_real_file_logits_and_greedy_equal_transformers(gemma3) -> None:
    _, model, tokenizer, theirs = gemma3
    assert worst_logit_difference(model, TEXTS, theirs) < 1e-4
    prompt = theirs["prompt"]
    assert tokenizer.encode(PROMPT) == prompt
    ours = generate(model, [prompt], Sampling(max_new_tokens=8, stop_ids=()), tokenizer=tokenizer)
    assert ours[0] == theirs["greedy"]
    # (the 270M base model continues " the capital of the country of France.": it does not
    # know this one, so no answer is asserted, only transformers' tokens)


@pytest.mark.slow
def test_real_file_chat_in_gemmas_turn_format(gemma3) -> None:
    """The file carries no chat template: gptlab gives it Gemma's, whose rendering and ids
    equal transformers' (its template engine on the same template, its tokenizer on the
    format written out), and whose turns end on <end_of_turn>, a stop id."""
    read, _, tokenizer, theirs = gemma3
    assert "tokenizer.chat_template" not in read.metadata
    assert tokenizer.chat_template == GEMMA_TEMPLATE
    rendered = tokenizer.render_chat(CHAT)
    assert rendered == CHAT_TEXT == theirs["chat_rendered"]
    assert tokenizer.encode(rendered, add_bos=False) == theirs["chat_ids"]
    end = tokenizer.encode("<end_of_turn>", add_bos=False)
    assert len(end) == 1 and end[0] in tokenizer.stop_ids
    fmt = prompt_format("chat", tokenizer)
    assert (fmt.end_id, fmt.between) == (end[0], "")
    entry = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    ids, n_prompt = tokenize_entry(entry, fmt)
    assert tokenizer.decode(ids) == (
        "<bos><start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\nBlue."
    )
    assert tokenizer.decode(ids[:n_prompt]).endswith("<start_of_turn>model\n")
    carried = from_gguf_metadata({**read.metadata, "tokenizer.chat_template": "{{ 'own' }}"})
    assert carried.chat_template == "{{ 'own' }}"  # a file's own template comes first


@pytest.mark.slow
@torch.no_grad()
def test_chat_and_serve_prompt_a_file_without_template_in_gemmas(gemma3, tmp_path: Path) -> None:
    """A Gemma 3 GGUF that carries no template (a tiny model with the real vocabulary) is
    prompted in Gemma's turns by what `chat` and the server use (LLM.chat_template,
    Service.chat_ids)."""
    from gptlab.formats.gguf_write import write_gguf
    from gptlab.llm import load
    from gptlab.serve.service import Service

    read, _, tokenizer, theirs = gemma3
    cfg = Gemma3Config(  # the layout a GGUF file can hold: one global layer in six
        vocab_size=tokenizer.vocab_size, context_length=64, emb_dim=32, n_layers=6, n_heads=2,
        n_kv_heads=1, head_dim=256, hidden_dim=64, sliding_window=8,
    )  # fmt: skip
    model = Gemma3(cfg).eval()
    path = write_gguf(model, tmp_path / "tiny.gguf", tokenizer, source=read.metadata)
    llm = load(path)
    assert "tokenizer.chat_template" not in read_gguf_metadata(path)
    assert llm.chat_template == GEMMA_TEMPLATE
    service = Service.load(llm)
    turns = [(m["role"], m["content"]) for m in CHAT]
    assert service.chat_ids(turns) == theirs["chat_ids"]
