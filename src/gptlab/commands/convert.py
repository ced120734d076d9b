"""`gptlab convert`: between OpenAI's TF checkpoints, HF GPT-2 safetensors and gptlab."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gptlab.checkpoints import save_model
from gptlab.commands.common import add_command
from gptlab.formats.hf import export_hf
from gptlab.hub import resolve_model


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "convert",
        run,
        "convert weights between TensorFlow, Hugging Face and gptlab formats",
        "Read SOURCE (an OpenAI TF checkpoint folder with hparams.json, a Hugging Face GPT-2 "
        "model.safetensors file or folder, a gptlab model or run folder, or a pretrained name "
        "such as gpt2-small) and write OUT as a gptlab model folder, or with --to hf as a "
        "Hugging Face GPT-2 folder that GPT2LMHeadModel.from_pretrained loads.",
    )
    p.add_argument("source")
    p.add_argument("out", type=Path)
    p.add_argument("--to", choices=["gptlab", "hf"], default="gptlab", help="output format")


def run(args: argparse.Namespace) -> int:
    model, meta = resolve_model(args.source)
    if args.to == "hf":
        export_hf(model, args.out)
    else:
        extra = {k: v for k, v in meta.items() if k not in ("format", "model")}
        save_model(model, args.out, {**extra, "source": meta.get("source", args.source)})
    print(f"wrote {args.to} model ({model.num_params():,} parameters) to {args.out}")
    return 0
