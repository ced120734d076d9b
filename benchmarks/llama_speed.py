"""CPU speed of gptlab's Llama against transformers' LlamaForCausalLM, in one process.

The Llama-family twin of benchmarks/speed.py (whose helpers it uses: the same interleaved
rounds, medians and machine ceilings), with the same thread count for both sides:

- greedy generation with the real SmolLM2-135M-Instruct weights (the Q4_1 GGUF the tests
  use, dequantized to fp32 by each side's own reader): gptlab through
  hub.resolve_with_tokenizer and generation.generate, as `gptlab generate` runs it (KV cache,
  each decode step's products through numpy's BLAS, gptlab.cpu.decode), against
  LlamaForCausalLM.generate (its DynamicCache, sdpa attention); the same prompt token ids,
  the same number of new tokens and no stop on either side (gptlab: no stop ids;
  transformers: no eos token). Batch 1, and batch 4 of left-padded prompts of different
  lengths. The token ids of both sides are compared, and the first difference reported;
- a training step (forward, cross-entropy, backward, AdamW step; fp32) of the smollm2-135m
  shape with random weights, copied into transformers (gptlab.formats.llama_names), on the
  same random batch: gptlab as its train() runs it (apply_speed_flags installs the chunked
  head loss of gptlab.cpu.head_loss, make_optimizer's fused AdamW, sdpa attention with
  enable_gqa) against LlamaForCausalLM with attn_implementation="sdpa" and torch's AdamW,
  plain and fused. Both losses before the first step are printed.

The machine is shared (other jobs run on its cores), so absolute tokens/s move from run to
run; every round times each side once in turn, so that slow moments fall on both, and the
figures are medians over rounds.

    PYTHONPATH=src python benchmarks/llama_speed.py                    # both, ~10 minutes
    PYTHONPATH=src python benchmarks/llama_speed.py --skip-train --reps 3
    PYTHONPATH=src python benchmarks/llama_speed.py --skip-generate --batch 4 --seq 256
"""

from __future__ import annotations

# First: speed.py applies gptlab's process memory settings before torch's first allocation.
from speed import Ceilings, interleaved, median_rate, memory_tuned, train_step_fn  # isort: split

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

import gptlab
from gptlab.config import get_preset
from gptlab.formats.hf_llama import hf_llama_config_dict
from gptlab.formats.llama_names import to_hf
from gptlab.generation import _left_pad, generate
from gptlab.hub import resolve_with_tokenizer
from gptlab.llama import Llama
from gptlab.settings import Sampling
from gptlab.text import Tokenizer
from gptlab.training import lm_loss

# Where tests/conftest.py's smollm2_file fixture caches the file (running the GGUF tests once
# downloads it).
SMOLLM2 = Path.home() / ".cache/gptlab-tests/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when Johannes "
    "Gutenberg combined movable metal type, oil-based ink and a wooden screw press. Within "
    "fifty years, presses were running in more than two hundred European cities, and the",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. In the",
    "def quicksort(items):\n    if len(items) < 2:\n        return items\n    pivot =",
    "A good night's sleep helps",
]


def generation_runs(
    path: Path, n_new: int, batches: list[int]
) -> dict[str, Callable[[], list[list[int]]]]:
    """For each batch size, a gptlab and a transformers generation of `n_new` tokens per row
    (returning the new token ids), keyed "<side>, batch <n>"."""
    from transformers import AutoModelForCausalLM

    ours, _, tok = resolve_with_tokenizer(path)
    theirs = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    runs: dict[str, Callable[[], list[list[int]]]] = {}
    for b in batches:
        prompts = [tok.encode(p) for p in PROMPTS[:b]]
        runs[f"gptlab, batch {b}"] = gptlab_generate(ours, tok, prompts, n_new)
        runs[f"transformers, batch {b}"] = transformers_generate(theirs, tok, prompts, n_new)
    return runs


def gptlab_generate(
    model: Llama, tok: Tokenizer, prompts: list[list[int]], n_new: int
) -> Callable[[], list[list[int]]]:
    s = Sampling(max_new_tokens=n_new, stop_ids=())  # greedy, no stop
    return lambda: generate(model, prompts, s, tokenizer=tok)


def transformers_generate(
    model: torch.nn.Module, tok: Tokenizer, prompts: list[list[int]], n_new: int
) -> Callable[[], list[list[int]]]:
    ids, n_pad = _left_pad(prompts, torch.device("cpu"))
    mask = (torch.arange(ids.shape[1])[None, :] >= n_pad[:, None]).long()

    def run() -> list[list[int]]:
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n_new,
            do_sample=False,
            eos_token_id=None,  # no stop: every row runs the full n_new tokens
            pad_token_id=tok.pad_id,
        )
        return out[:, ids.shape[1] :].tolist()

    return run


def first_difference(a: list[list[int]], b: list[list[int]]) -> str:
    for row, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            pairs = enumerate(zip(x, y, strict=False))
            i = next((i for i, (p, q) in pairs if p != q), min(len(x), len(y)))
            return f"row {row} differs from new token {i} on"
    return "equal"


def training_models(seq: int) -> tuple[Llama, torch.nn.Module]:
    """The smollm2-135m shape, random weights (seed 0), and transformers' copy of them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = get_preset("smollm2-135m").replace(context_length=max(seq, 256))
    torch.manual_seed(0)
    ours = Llama(cfg)
    config = LlamaConfig(**hf_llama_config_dict(cfg))
    config._attn_implementation = "sdpa"
    theirs = LlamaForCausalLM(config)
    missing, unexpected = theirs.load_state_dict(to_hf(ours.state_dict(), cfg), strict=False)
    if unexpected or missing not in ([], ["lm_head.weight"]):
        raise RuntimeError(f"weights did not map: missing {missing}, unexpected {unexpected}")
    theirs.tie_weights()
    return ours, theirs


@torch.no_grad()
def losses(ours: Llama, theirs: torch.nn.Module, batch: int, seq: int) -> tuple[float, float]:
    """Both sides' mean cross-entropy on the training batch (train_step_fn's), before training."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, ours.cfg.vocab_size, (batch, seq), generator=g)
    y = torch.randint(0, ours.cfg.vocab_size, (batch, seq), generator=g)
    hf_loss = F.cross_entropy(theirs(x).logits.flatten(0, 1), y.flatten())
    return float(lm_loss(ours, (x, y))[0]), float(hf_loss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", type=Path, default=SMOLLM2, help="SmolLM2-135M-Instruct GGUF")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--new", type=int, default=128, help="new tokens per row")
    ap.add_argument("--gen-batches", type=int, nargs="+", default=[1, 4], choices=[1, 2, 3, 4])
    ap.add_argument("--batch", type=int, default=4, help="training batch")
    ap.add_argument("--seq", type=int, default=256, help="training sequence length")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-generate", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads, user_api="blas")  # numpy's BLAS, the same count
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{args.threads} threads, gptlab {gptlab.__version__} memory settings "
        f"{'on' if memory_tuned else 'off'} (for both sides)"
    )
    ceilings = Ceilings()
    ceilings.sample()

    if not args.skip_generate:
        gens = generation_runs(args.gguf, args.new, args.gen_batches)
        outputs: dict[str, object] = {}  # each side's new token ids, from its warm-up call
        with torch.inference_mode():
            gtimes = interleaved(gens, args.reps, ceilings.sample, outputs)
    if not args.skip_train:
        ours, theirs = training_models(args.seq)
        loss_ours, loss_theirs = losses(ours, theirs, args.batch, args.seq)
        n_params = ours.num_params()
        vocab = ours.cfg.vocab_size
        steps = {
            "gptlab": train_step_fn("gptlab", ours, True, args.batch, args.seq, vocab),
            "transformers": train_step_fn(
                "transformers", theirs, False, args.batch, args.seq, vocab
            ),
            "transformers+fused": train_step_fn(
                "transformers", theirs, True, args.batch, args.seq, vocab
            ),
        }
        times = interleaved(steps, args.reps, ceilings.sample)

    print(ceilings.describe())
    if not args.skip_generate:
        print(
            f"\ngreedy generation, SmolLM2-135M-Instruct ({args.gguf.name}, fp32), "
            f"{args.new} new tokens per row, median of {args.reps} rounds"
        )
        for b in args.gen_batches:
            ours_key, theirs_key = f"gptlab, batch {b}", f"transformers, batch {b}"
            rates = {k: median_rate(gtimes[k], b * args.new) for k in (ours_key, theirs_key)}
            same = first_difference(outputs[ours_key], outputs[theirs_key])
            print(
                f"  batch {b}: gptlab {rates[ours_key]:6.1f} tokens/s, transformers "
                f"{rates[theirs_key]:6.1f} tokens/s, gptlab/transformers = "
                f"{rates[ours_key] / rates[theirs_key]:.2f}x  (token ids: {same})"
            )
    if not args.skip_train:
        tokens = args.batch * args.seq
        print(
            f"\ntraining step, smollm2-135m shape ({n_params / 1e6:.0f}M parameters, random "
            f"weights), {args.batch}x{args.seq} tokens, fp32, median of {args.reps} rounds; "
            f"loss before training: gptlab {loss_ours:.6f}, transformers {loss_theirs:.6f}"
        )
        ours_rate = median_rate(times["gptlab"], tokens)
        for name, ts in times.items():
            rate = median_rate(ts, tokens)
            print(f"  {name:20s} {rate:7.1f} tokens/s  gptlab/this = {ours_rate / rate:.2f}x")


if __name__ == "__main__":
    main()
