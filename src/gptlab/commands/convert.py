"""`gptlab convert`: between OpenAI's TF checkpoints, HF GPT-2 safetensors, HF Llama / Qwen3
folders, GGUF files (read only) and gptlab; `--to hf` writes GPT-2 or Llama / Qwen3."""

from __future__ import annotations

import sys

from gptlab.checkpoints import save_model, save_tokenizer
from gptlab.errors import GptlabError
from gptlab.formats.hf import export_hf
from gptlab.hub import load_tokenizer, resolve_model
from gptlab.settings import ConvertConfig


def run(c: ConvertConfig) -> int:
    assert c.out is not None  # positional
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
