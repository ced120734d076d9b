"""A GGUF file's f32 export, read back by transformers, gives the logits gptlab gives on the
original file (a one-off check on real files; tests/test_gguf_export.py checks tiny random
models of every family on every run).

For each FILE: gptlab reads it; the CLI writes the export (`gptlab convert FILE OUT.gguf --to
gguf --dtype f32`, into a temporary folder); transformers reads the export
(`AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`, float32) and its tokenizer;
on each prompt, transformers' ids must equal gptlab's and its logits must be within 1e-4 of
gptlab's on the original file. Prints one line per file; exits 1 when a check fails.

    python scripts/check_export_transformers.py FILE.gguf [FILE.gguf ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gptlab.hub import resolve_with_tokenizer

PROMPTS = [
    "The capital of France is",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "Crème brûlée, 🤖 and 中文的字符,   three spaces\n\nand 12345.",
]
BOUND = 1e-4


def transformers_reading(path: Path) -> tuple[torch.nn.Module, object]:
    """transformers' model (float32) and tokenizer of a GGUF file; head_dim is taken from
    attention.key_length, which its loader does not read for every architecture."""
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    fields = gguf.GGUFReader(path).fields
    arch = fields["general.architecture"].contents()
    if f"{arch}.attention.key_length" in fields:
        config.head_dim = int(fields[f"{arch}.attention.key_length"].contents())
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, config=config, dtype=torch.float32
    )
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@torch.no_grad()
def check(file: Path) -> bool:
    """Export `file` as f32 and compare; prints the outcome, True when it holds."""
    start = time.perf_counter()
    model, _, tokenizer = resolve_with_tokenizer(file)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{file.stem}-f32.gguf"
        cmd = [sys.executable, "-m", "gptlab", "convert", str(file), str(out), "--to", "gguf"]
        subprocess.run([*cmd, "--dtype", "f32"], check=True)
        theirs, their_tokenizer = transformers_reading(out)
        worst, same_ids = 0.0, True
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt)
            same_ids &= their_tokenizer(prompt)["input_ids"] == ids
            x = torch.tensor([ids])
            worst = max(worst, (model(x) - theirs(x).logits).abs().max().item())
    ok = same_ids and worst < BOUND
    verdict = "ok" if ok else "FAIL"
    print(
        f"{file.name}: f32 export read by transformers: token ids "
        f"{'equal' if same_ids else 'DIFFER'}, max |logit difference| {worst:.3g} on "
        f"{len(PROMPTS)} prompts ({verdict}, {time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE.gguf")
    results = [check(f) for f in parser.parse_args().files]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
