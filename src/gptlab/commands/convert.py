"""`gptlab convert`: between OpenAI's TF checkpoints, HF GPT-2 safetensors, HF Llama / Qwen3
folders, GGUF files and gptlab; `--to hf` writes GPT-2 or Llama / Qwen3, `--to gguf` one GGUF
file (with `--dtype`) and beside it its Ollama Modelfile, NAME.Modelfile for NAME.gguf."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gptlab import text
from gptlab.checkpoints import save_model, save_tokenizer
from gptlab.errors import GptlabError
from gptlab.formats.gguf import build_llama, read_gguf
from gptlab.formats.gguf_write import write_gguf
from gptlab.formats.hf import export_hf
from gptlab.formats.modelfile import write_modelfile
from gptlab.hub import load_tokenizer, resolve_model
from gptlab.model import Decoder
from gptlab.prompts import ALPACA_CHAT_TEMPLATE, tuned_in_alpaca
from gptlab.settings import ConvertConfig


def run(c: ConvertConfig) -> int:
    assert c.out is not None  # positional
    if c.to == "gguf":
        return _to_gguf(c)
    model, meta = resolve_model(c.source)
    try:  # a non-GPT-2 tokenizer travels with the model (tokenizer.json + its config)
        tokenizer = load_tokenizer(c.source)
    except GptlabError as exc:
        print(f"note: the tokenizer is not kept ({exc})", file=sys.stderr)
        tokenizer = None
    keep = tokenizer if getattr(tokenizer, "backend", None) is not None else None
    if c.to == "hf":
        export_hf(model, c.out)
        if keep is not None:
            save_tokenizer(keep, c.out)
    else:
        extra = {k: v for k, v in meta.items() if k not in ("format", "model")}
        save_model(model, c.out, {**extra, "source": meta.get("source", c.source)}, tokenizer=keep)
    print(f"wrote {c.to} model ({model.num_params():,} parameters) to {c.out}")
    return 0


def chat_template(meta: dict[str, Any], tokenizer: text.Tokenizer) -> str | None:
    """The chat template a GGUF export carries: Alpaca for a model gptlab fine-tuned in it,
    else the tokenizer's."""
    if tuned_in_alpaca(meta):
        return ALPACA_CHAT_TEMPLATE
    return tokenizer.chat_template


def _to_gguf(c: ConvertConfig) -> int:
    out = Path(c.out)  # type: ignore[arg-type]
    if out.suffix.lower() != ".gguf" or out.is_dir():
        raise GptlabError(f"{out}: --to gguf writes one file; name it NAME.gguf")
    source = Path(c.source)
    metadata: dict[str, Any] | None = None
    model: Decoder
    if source.is_file() and source.suffix.lower() == ".gguf":  # read once, metadata kept
        cfg, tensors, metadata = read_gguf(source)
        model, meta = build_llama(cfg, tensors), {}
        tokenizer: text.Tokenizer = text.from_gguf_metadata(metadata, source=source)
    else:
        model, meta = resolve_model(c.source)
        tokenizer = load_tokenizer(c.source)
    template = chat_template(meta, tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(model, out, tokenizer, dtype=c.dtype, chat_template=template, source=metadata)
    modelfile, note = write_modelfile(out, tokenizer, template, model.cfg.context_length)
    if note is not None:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"wrote gguf model ({model.num_params():,} parameters, {c.dtype}) to {out}, "
        f"and {modelfile} for `ollama create NAME -f {modelfile}`"
    )
    return 0
