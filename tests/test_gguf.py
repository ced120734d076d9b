"""gptlab.formats.gguf: a real quantized SmolLM2 file read by gptlab equals transformers'
reading of it; small files written with gguf's own writer, in llama.cpp's conventions (its
rotary row order for Llama's q and k, Llama 3 scaling as rope_freqs, K-quants), read back to
the model they came from; and every broken file is one GptlabError line naming it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from gptlab.config import PRESETS, LlamaConfig, RopeScaling
from gptlab.errors import GptlabError
from gptlab.formats.gguf import GGUFModel, build_llama, load_gguf, read_gguf, unpermute_rotary
from gptlab.formats.llama_names import from_hf, parameter_names
from gptlab.llama import Llama
from gptlab.model import KVCache
from tests.serve_process import gptlab_command, gptlab_env
from tests.test_llama import hf_model

TEXTS = [
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # {x: [1, 2]}",
    "Crème brûlée, naïve façade, señor Müller: déjà vu à Zürich.",
    "Emoji 🤖🚀🎉 and 中文, then an\ttab.",
]


@pytest.fixture(scope="session")
def smollm2_read(smollm2_file: Path) -> GGUFModel:
    start = time.perf_counter()
    read = read_gguf(smollm2_file)
    print(f"gptlab read_gguf: {time.perf_counter() - start:.1f} s")
    return read


@pytest.fixture(scope="session")
def smollm2(smollm2_file: Path, smollm2_read: GGUFModel):
    """(our model, transformers' model, transformers' tokenizer), all from the one file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours = build_llama(smollm2_read.cfg, smollm2_read.tensors)
    folder, name = smollm2_file.parent, smollm2_file.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    theirs = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return ours, theirs.eval(), tok


def test_real_file_config_is_the_published_one(smollm2_read: GGUFModel) -> None:
    cfg, tensors, meta = smollm2_read
    assert cfg == PRESETS["smollm2-135m"]  # the preset, from config.json, agrees with the file
    assert meta["general.architecture"] == "llama"
    assert "out_head.weight" not in tensors  # tied
    assert all(t.dtype == torch.float32 for t in tensors.values())


@torch.no_grad()
def test_real_file_weights_and_logits_equal_transformers(smollm2) -> None:
    ours, theirs, tok = smollm2
    # The same dequantized weights, q and k back in Hugging Face's row order.
    hf_state = from_hf(theirs.state_dict(), ours.cfg)
    for name, p in ours.state_dict().items():
        if name in hf_state:
            assert torch.equal(p, hf_state[name]), name
    worst = 0.0
    for text in TEXTS:
        ids = torch.tensor([tok(text)["input_ids"]])
        assert ids.shape[1] > 10
        diff = (ours(ids) - theirs(ids).logits).abs().max().item()
        worst = max(worst, diff)
    print(f"max |logit difference| vs transformers: {worst:.3g}")
    assert worst < 1e-4


@torch.no_grad()
def test_real_file_greedy_paris_with_cache(smollm2) -> None:
    model, _, tok = smollm2
    prompt = torch.tensor([tok("The capital of France is")["input_ids"]])
    cache = KVCache(model.cfg, 1, prompt.shape[1] + 4, "cpu", torch.float32)
    logits = model(prompt, cache, last_only=True)
    out = []
    for _ in range(4):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(int(nxt))
        logits = model(nxt, cache)
    text = tok.decode(out)
    assert text.startswith(" Paris"), text
    # the cached steps gave what a full pass over the whole text gives
    full = model(torch.cat([prompt, torch.tensor([out[:-1]])], dim=1))
    assert full[0, prompt.shape[1] - 1 :].argmax(-1).tolist() == out


# --- files written here with gguf's writer, as llama.cpp writes them -----------------------


def permute_like_llama_cpp(w: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's reordering (written from its definition): within each head,
    the two halves (rows i and i + head_dim/2) become adjacent rows (2i and 2i + 1)."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# fp16 scale fields inside each K-quant block: (byte offsets, block bytes)
K_SCALES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def encode(w: np.ndarray, qtype: Q, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(bytes or array for the writer, the float32 values a reader must get back)."""
    if qtype == Q.F32:
        return w.astype(np.float32), w.astype(np.float32)
    if qtype == Q.F16:
        return w.astype(np.float16), w.astype(np.float16).astype(np.float32)
    if qtype in K_SCALES:  # gguf cannot quantize K-quants: random blocks with sane scales
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (w.shape[0], w.shape[1] // block, size), dtype=np.uint8)
        for offset in K_SCALES[qtype]:
            raw[..., offset : offset + 2] = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)
        raw = raw.reshape(w.shape[0], -1)
    else:
        raw = gguf.quants.quantize(w.astype(np.float32), qtype)
    return raw, gguf.quants.dequantize(raw, qtype).reshape(w.shape).astype(np.float32)


def write_file(
    path: Path,
    cfg: LlamaConfig,
    state: dict[str, torch.Tensor],
    types: dict[str, Q],
    arch: str,
    rope_freqs: np.ndarray | None = None,
    tokenizer: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """`state` (gptlab names, HF layout) as llama.cpp would store it; returns the values a
    faithful reader gives back, in HF layout. `tokenizer`: a real file's tokenizer.* metadata
    (gptlab.formats.gguf.read_gguf_metadata) in place of placeholder tokens."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.emb_dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_layer_norm_rms_eps(cfg.rms_eps)
    w.add_vocab_size(cfg.vocab_size)
    if tokenizer is None:
        w.add_token_list([f"<t{i}>" for i in range(cfg.vocab_size)])
    for key, value in (tokenizer or {}).items():
        write_value(w, key, value)
    expected = {}
    for n in parameter_names(cfg):
        value = state[n.gptlab].numpy()
        qtype = next((q for key, q in types.items() if key in n.gguf), Q.F32)
        if value.ndim == 1:
            qtype = Q.F32
        raw, back = encode(value, qtype, rng)
        # quantization blocks run along rows, so reordering rows commutes with it
        if arch == "llama" and ".attn_q." in n.gguf:
            raw = permute_like_llama_cpp(raw, cfg.n_heads)
        elif arch == "llama" and ".attn_k." in n.gguf:
            raw = permute_like_llama_cpp(raw, cfg.n_kv_heads)
        is_raw = qtype not in (Q.F32, Q.F16)
        w.add_tensor(n.gguf, raw, raw_dtype=qtype if is_raw else None)
        expected[n.gptlab] = torch.from_numpy(back)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def write_value(w: gguf.GGUFWriter, key: str, value: Any) -> None:
    """One metadata key/value as read_gguf_metadata gives it (ids as uint32, as llama.cpp)."""
    V = gguf.GGUFValueType
    kinds = {bool: V.BOOL, int: V.UINT32, float: V.FLOAT32, str: V.STRING}
    if isinstance(value, list):
        sub = V.STRING if isinstance(value[0], str) else V.INT32
        w.add_key_value(key, value, V.ARRAY, sub_type=sub)
    else:
        w.add_key_value(key, value, kinds[type(value)])


TYPES = {
    "token_embd": Q.Q6_K,
    "attn_q.": Q.Q4_K,
    "attn_k.": Q.Q5_K,
    "attn_v.": Q.Q3_K,
    "attn_output": Q.Q2_K,
    "ffn_gate": Q.Q8_0,
    "ffn_up": Q.Q4_0,
    "ffn_down": Q.Q5_1,
    "output.": Q.BF16,
}
TYPES_QWEN = {"token_embd": Q.F16, "attn_q.": Q.Q4_1, "attn_k.": Q.Q5_0, "ffn": Q.Q8_0}

# Rows of 256 values (a K-quant block), Llama 3 scaling on an original context of 8192.
LLAMA3 = LlamaConfig(
    vocab_size=64, context_length=16384, emb_dim=256, n_layers=2, n_heads=8, n_kv_heads=2,
    head_dim=32, hidden_dim=256, rope_base=500000.0, tie_weights=False,
    rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                             original_context_length=8192),
)  # fmt: skip
QWEN3 = LlamaConfig(
    vocab_size=64, context_length=128, emb_dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
    head_dim=32, hidden_dim=96, rope_base=1e6, rms_eps=1e-6, qk_norm=True,
)  # fmt: skip


def llama_cpp_rope_factors(cfg: LlamaConfig) -> np.ndarray:
    """llama.cpp's rope_freqs for Llama 3 scaling, written from convert_hf_to_gguf's rule."""
    s = cfg.rope_scaling
    d = cfg.head_dim
    freqs = 1.0 / (cfg.rope_base ** (np.arange(0, d, 2, dtype=np.float64) / d))
    out = []
    for f in freqs:
        wavelength = 2 * np.pi / f
        if wavelength < s.original_context_length / s.high_freq_factor:
            out.append(1.0)
        elif wavelength > s.original_context_length / s.low_freq_factor:
            out.append(s.factor)
        else:
            smooth = (s.original_context_length / wavelength - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor
            )
            out.append(1 / ((1 - smooth) / s.factor + smooth))
    return np.array(out)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@torch.no_grad()
def test_written_file_reads_back_to_the_same_model(tmp_path: Path, arch: str) -> None:
    cfg = LLAMA3 if arch == "llama" else QWEN3
    torch.manual_seed(0)
    hf = hf_model(cfg)
    state = from_hf(hf.state_dict(), cfg)
    path = tmp_path / f"tiny-{arch}.gguf"
    factors = llama_cpp_rope_factors(cfg) if cfg.rope_scaling else None
    types = TYPES if arch == "llama" else TYPES_QWEN
    expected = write_file(path, cfg, state, types, arch, factors)
    got_cfg, tensors, _ = read_gguf(path)
    assert got_cfg == cfg  # Llama 3's rope_scaling too, recovered from rope_freqs
    assert set(tensors) == set(expected)
    for name, want in expected.items():
        assert torch.equal(tensors[name], want), name
    # transformers' model holding the same dequantized values: the same logits
    hf.load_state_dict(
        {n.hf: expected[n.gptlab] for n in parameter_names(cfg)}, strict=not cfg.tie_weights
    )
    model = load_gguf(path)
    assert isinstance(model, Llama) and model.tied == cfg.tie_weights
    idx = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(4))
    assert (model(idx) - hf(idx).logits).abs().max().item() < 1e-4


def test_unpermute_inverts_llama_cpp_order() -> None:
    w = np.arange(6 * 8 * 3, dtype=np.float32).reshape(48, 3)  # 6 heads of 8 rows
    back = unpermute_rotary(torch.from_numpy(permute_like_llama_cpp(w, 6)), 6)
    assert torch.equal(back, torch.from_numpy(w))
    assert not np.array_equal(permute_like_llama_cpp(w, 6), w)


def error_line(path: Path) -> str:
    with pytest.raises(GptlabError) as info:
        read_gguf(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_errors_name_the_file(tmp_path: Path, smollm2_file: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model\n")
    assert "not a GGUF file" in error_line(text)
    assert "no such file" in error_line(tmp_path / "missing.gguf")

    cut = tmp_path / "cut.gguf"
    with smollm2_file.open("rb") as f:
        cut.write_bytes(f.read(20_000_000))  # the header and some tensors, not all
    assert "truncated" in error_line(cut)
    header_only = tmp_path / "header.gguf"
    with smollm2_file.open("rb") as f:
        header_only.write_bytes(f.read(100_000))  # cut inside the key/value metadata
    assert "truncated" in error_line(header_only)

    torch.manual_seed(0)
    cfg = QWEN3
    state = {k: v.detach() for k, v in Llama(cfg).state_dict().items()}
    gpt2 = tmp_path / "gpt2.gguf"
    write_file(gpt2, cfg, state, {}, "gpt2")
    assert "unsupported architecture 'gpt2'" in error_line(gpt2)

    quant = tmp_path / "quant.gguf"
    write_file(quant, cfg, state, {"ffn_up": Q.MXFP4}, "qwen3")
    assert "quant type MXFP4" in error_line(quant)


def test_unsupported_architecture_is_refused_before_the_vocabulary_is_read(
    tmp_path: Path,
) -> None:
    """A file of an architecture gptlab does not read (Phi-3 here) listing 262,144 tokens after
    it: the refusal comes from the header's first key, so it is the same one line even when the
    rest of the file is cut off (a reader that parsed the whole header first would call that
    file truncated)."""
    path = tmp_path / "phi3.gguf"
    w = gguf.GGUFWriter(str(path), "phi3")
    w.add_context_length(32768)
    w.add_token_list([f"<token-{i}>" for i in range(262_144)])
    w.add_token_types([1] * 262_144)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cut = tmp_path / "phi3-cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # inside the vocabulary
    for file in (path, cut):
        message = (
            f"{file}: unsupported architecture 'phi3'; gptlab reads llama, qwen2, qwen3, gemma3"
        )
        assert error_line(file) == message
        proc = subprocess.run(
            gptlab_command("generate", "--model", str(file), "--prompt", "Hi"),
            capture_output=True,
            text=True,
            env=gptlab_env(),
            timeout=120,
        )
        assert (proc.returncode, proc.stderr) == (2, f"gptlab generate: error: {message}\n")
