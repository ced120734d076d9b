"""llama.cpp runs gptlab's GGUF exports as gptlab does (run by scripts/check_llama_cpp.sh).

Exports with the CLI (`gptlab convert ... --to gguf`) the real SmolLM2-135M-Instruct (read
from the test cache's Q4_1 file, written as f32 and q8_0) and a small random GPT-2 saved as an
instruction model (Alpaca template), then hands each file to llama.cpp (llama-cpp-python, in
its own venv, scripts/llama_cpp_worker.py) and checks:

- llama.cpp's tokenization of texts (special tokens included) equals gptlab's;
- its greedy tokens (argmax of its logits) for several prompts equal gptlab's generation from
  the same file (required for f32; for q8_0 llama.cpp also quantizes activations, so the
  agreement is reported);
- a chat completion through llama-cpp-python's chat handler (built from the file's template)
  renders the prompt gptlab renders and replies what gptlab replies;
- with Go installed, Ollama's side: the Modelfile's TEMPLATE, run by Go's text/template (the
  engine Ollama uses; SYSTEM put first as Ollama does), renders what the Jinja template renders;

and records decode speed: llama.cpp's tokens/s against gptlab's own generation on the same
weights. Prints a report; exits 1 when a required check fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from gptlab import text
from gptlab.checkpoints import save_model
from gptlab.config import GPTConfig
from gptlab.formats.modelfile import PROBES, match_format
from gptlab.generation import generate_tokens
from gptlab.hub import resolve_with_tokenizer
from gptlab.model import GPT
from gptlab.prompts import ALPACA_CHAT_TEMPLATE
from gptlab.settings import Sampling

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = Path.home() / ".cache/gptlab-tests/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = {
    "smollm2": [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, there was a",
        "The three primary colors are",
    ],
    "gpt2": ["Hello, my name is", "The meaning of life is", "In 1990, the"],
}
TEXTS = [
    "Hello world<|endoftext|> it's  12345 tokens\n\n  ok",
    "Crème brûlée, naïve façade 🤖 and 中文, then an\ttab.",
    "<|im_start|>user\nHi<|im_end|>\n",
]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct{ Role, Content string }

func main() {
	var job struct {
		Template string
		Messages []Message
	}
	if err := json.NewDecoder(os.Stdin).Decode(&job); err != nil {
		panic(err)
	}
	t := template.Must(template.New("m").Parse(job.Template))
	if err := t.Execute(os.Stdout, map[string]any{"Messages": job.Messages}); err != nil {
		panic(err)
	}
}
"""


def convert(source: Path, out: Path, dtype: str) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "gptlab", "convert", str(source), str(out), "--to", "gguf"]
    subprocess.run([*cmd, "--dtype", dtype], check=True, cwd=ROOT)
    return time.perf_counter() - start


def gptlab_greedy(model: torch.nn.Module, ids: list[int], n_new: int) -> tuple[list[int], float]:
    """gptlab's greedy tokens (no stop) and its decode rate (tokens/s after the first)."""
    s = Sampling(max_new_tokens=n_new, stop_ids=())
    out, start = [], 0.0
    for i, (nxt, _) in enumerate(generate_tokens(model, [ids], s)):
        out.append(int(nxt[0]))
        if i == 0:
            start = time.perf_counter()
    return out, (n_new - 1) / (time.perf_counter() - start)


def gptlab_reply(
    model: torch.nn.Module, tokenizer: text.Tokenizer, template: str, n_new: int
) -> str:
    prompt = text.render_chat(template, CHAT, True, **tokenizer.special_tokens)
    ids = tokenizer.encode(prompt, add_bos=False)
    s = Sampling(max_new_tokens=n_new, stop_ids=tuple(tokenizer.stop_ids))
    reply = [int(nxt[0]) for nxt, active in generate_tokens(model, [ids], s) if active[0]]
    return tokenizer.decode(reply)


def go_check(work: Path, tokenizer: text.Tokenizer, template: str) -> list[str]:
    """Problems found rendering the Modelfile's TEMPLATE with Go (empty: none)."""
    from gptlab.formats.modelfile import _jinja

    fmt, default = match_format(tokenizer, template)  # type: ignore[misc]
    program = work / "render.go"
    program.write_text(GO_RENDER)
    binary = work / "render"
    subprocess.run(["go", "build", "-o", str(binary), str(program)], check=True, cwd=work)
    problems = []
    conversations = [*PROBES, ({"role": "user", "content": "a"}, {"role": "user", "content": "b"})]
    for probe in conversations:
        messages = list(probe)
        if default is not None and messages[0]["role"] != "system":  # Ollama's SYSTEM
            messages.insert(0, {"role": "system", "content": default})
        job = {"Template": fmt.template, "Messages": [
            {"Role": m["role"], "Content": m["content"]} for m in messages
        ]}  # fmt: skip
        proc = subprocess.run(
            [str(binary)], input=json.dumps(job), capture_output=True, text=True, check=True
        )
        if proc.stdout != _jinja(tokenizer, template, probe):
            problems.append(f"{fmt.name}: {probe!r}: Go {proc.stdout!r}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-python", required=True, help="python of the llama-cpp venv")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/gptlab-llama-cpp/work")
    parser.add_argument("--smollm2", type=Path, default=SMOLLM2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    # the files: SmolLM2 f32 and q8_0, and a GPT-2 instruction model (random weights)
    files = {}
    for dtype in ("f32", "q8_0"):
        path = work / f"smollm2-{dtype}" / f"smollm2-135m-{dtype}.gguf"
        seconds = convert(args.smollm2, path, dtype)
        files[f"smollm2 {dtype}"] = (path, "smollm2", None)
        print(f"exported SmolLM2 {dtype}: {path.stat().st_size / 2**20:.0f} MiB in {seconds:.1f} s")
    torch.manual_seed(0)
    gpt2 = GPT(GPTConfig(context_length=256, emb_dim=128, n_layers=2, n_heads=4))
    with torch.no_grad():
        for p in gpt2.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = save_model(gpt2, work / "gpt2-instruct", {"task": "lm", "template": "alpaca"})
    path = work / "gpt2-out" / "gpt2-instruct.gguf"
    convert(folder, path, "f32")
    files["gpt2 f32"] = (path, "gpt2", folder)  # gptlab reads no GPT-2 GGUF: its folder

    # gptlab's side, from the exported files themselves
    jobs, ours = [], {}
    for name, (path, kind, source) in files.items():
        model, _, tokenizer = resolve_with_tokenizer(source or path)
        template = tokenizer.chat_template or ALPACA_CHAT_TEMPLATE  # GPT-2: the Alpaca one
        prompts = [tokenizer.encode(p) for p in PROMPTS[kind]]
        runs = [gptlab_greedy(model, ids, args.new_tokens) for ids in prompts]
        ours[name] = {
            "tokenize": [tokenizer.encode(t) for t in TEXTS],
            "greedy": [r[0] for r in runs],
            "rate": statistics.median(r[1] for r in runs),
            "chat_prompt": text.render_chat(template, CHAT, True, **tokenizer.special_tokens),
            "chat_reply": gptlab_reply(model, tokenizer, template, args.new_tokens),
            "tokenizer": tokenizer,
            "template": template,
        }
        jobs.append({
            "path": str(path), "n_ctx": 512, "add_bos": tokenizer.add_bos, "texts": TEXTS,
            "prompts": prompts, "n_new": args.new_tokens, "chat": CHAT,
        })  # fmt: skip
    job_file = work / "job.json"
    job_file.write_text(json.dumps({"threads": args.threads, "files": jobs}))
    worker = ROOT / "scripts" / "llama_cpp_worker.py"
    proc = subprocess.run(
        [args.llama_python, str(worker), str(job_file)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        print(proc.stderr[-4000:])
        return 1
    theirs = dict(zip(files, json.loads(proc.stdout.splitlines()[-1]), strict=True))

    failed = False
    version = subprocess.run(
        [args.llama_python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    print(f"\nllama-cpp-python {version}, {args.threads} threads, {args.new_tokens} new tokens")
    for name in files:
        o, t = ours[name], theirs[name]
        required = name.endswith("f32")
        same_tok = o["tokenize"] == t["tokenize"]
        agree = [a == b for a, b in zip(o["greedy"], t["greedy"], strict=True)]
        first_diff = [
            next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
            for a, b in zip(o["greedy"], t["greedy"], strict=True)
        ]
        same_prompt = o["chat_prompt"] == t["chat_prompt"]
        same_reply = o["chat_reply"].strip() == t["chat_reply"].strip()
        print(f"\n== {name}: {t['path']}")
        print(f"  llama.cpp loads it: n_vocab {t['n_vocab']}, chat format {t['chat_format']!r}")
        print(f"  tokenization of {len(TEXTS)} texts equal to gptlab's: {same_tok}")
        print(f"  greedy tokens equal to gptlab's: {sum(agree)}/{len(agree)} prompts"
              f" (first differing position per prompt: {first_diff})")  # fmt: skip
        print(f"  chat handler's prompt equals gptlab's render_chat: {same_prompt}")
        print(f"  chat reply equal: {same_reply}: llama.cpp {t['chat_reply']!r}")
        if not same_reply:
            print(f"                        gptlab    {o['chat_reply']!r}")
        rate = statistics.median(t["decode_tokens_per_s"])
        print(f"  decode tokens/s: llama.cpp {rate:.1f}, gptlab {o['rate']:.1f} (median)")
        if required and not (same_tok and all(agree) and same_prompt and same_reply):
            failed = True
        if not same_tok or not same_prompt:
            failed = True
    if shutil.which("go"):
        for name in ("smollm2 f32", "gpt2 f32"):
            problems = go_check(work, ours[name]["tokenizer"], ours[name]["template"])
            print(f"\nOllama TEMPLATE of {name} by Go text/template equals the Jinja rendering"
                  f" of {len(PROBES) + 1} conversations: {not problems}")  # fmt: skip
            for p in problems:
                print(f"  {p}")
            failed |= bool(problems)
    else:
        print("\n(no `go` here: the Ollama TEMPLATE was not rendered)")
    print("\nFAILED" if failed else "\nall required checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
