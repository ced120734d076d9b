"""`gptlab convert`: between OpenAI's TF checkpoints, HF GPT-2 safetensors, HF Llama / Qwen3
folders, GGUF files (read only) and gptlab; `--to hf` writes GPT-2 or Llama / Qwen3."""

from __future__ import annotations

from gptlab.checkpoints import save_model
from gptlab.formats.hf import export_hf
from gptlab.hub import resolve_model
from gptlab.settings import ConvertConfig


def run(c: ConvertConfig) -> int:
    assert c.out is not None  # positional
    model, meta = resolve_model(c.source)
    if c.to == "hf":
        export_hf(model, c.out)
    else:
        extra = {k: v for k, v in meta.items() if k not in ("format", "model")}
        save_model(model, c.out, {**extra, "source": meta.get("source", c.source)})
    print(f"wrote {c.to} model ({model.num_params():,} parameters) to {c.out}")
    return 0
