"""CPU speed of gptlab's GPT against transformers' GPT2LMHeadModel and the book's reference.

Measures, in one process with a fixed number of threads, interleaving the implementations:
- a training step of the gpt2-small shape (batch x seq tokens, fp32, forward + cross-entropy +
  backward + AdamW step), as tokens/s;
- greedy generation with a KV cache (64-token prompt, 128 new tokens), as tokens/s;
- the machine's two ceilings: fp32 matrix-product GFLOP/s and memory bandwidth (GB/s from a
  large matrix-vector product), each the median of samples taken throughout the run, through
  the faster of torch's BLAS (MKL in its CPU wheels) and numpy's (OpenBLAS), and what they
  allow: training at 6 x parameters FLOPs per token, generation at (weight bytes read per
  token) / bandwidth.

Every implementation gets the same random-initialised shape and the same optimizer settings;
peers are also run with torch's fused AdamW so the optimizer's share is visible. The process
runs with gptlab's memory settings (gptlab.cpu.memory, as the CLI applies them), which every
implementation shares; run with GPTLAB_MEMORY_TUNING=0 to measure all of them without. gptlab
trains with the chunked head loss that its train() installs (gptlab.cpu.head_loss) and decodes
through numpy's BLAS (gptlab.cpu.decode); the "gptlab, torch BLAS" row shows decoding without
it (GPTLAB_DECODE_BLAS=0).

    python benchmarks/speed.py                 # full run, about 10 minutes on 2 cores
    python benchmarks/speed.py --reps 2 --skip-train   # generation only
"""

from __future__ import annotations

# First, so that gptlab's process memory settings precede torch's first allocation; like the
# thread count, they then hold for every implementation measured here.
from gptlab.cpu.memory import tune_process_memory  # isort: split

memory_tuned = tune_process_memory()

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

import gptlab
from gptlab.config import get_preset
from gptlab.cpu import decode as cpu_decode
from gptlab.generation import generate
from gptlab.model import GPT
from gptlab.settings import Sampling
from gptlab.training import TrainConfig, apply_speed_flags, lm_loss, make_optimizer


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


LIBS = ("torch", "numpy")
KINDS = ("matmul", "bandwidth")


class Ceilings:
    """The machine's two ceilings: fp32 matrix-product GFLOP/s (2048^3) and memory bandwidth
    (GB/s read by an 8192^2 matrix-vector product), through torch's BLAS and numpy's.

    Sampled (best of 3) at the start and after every round of the implementations, so that
    the ceilings see the same moments of this VM as the implementations; like them, each is
    the median of its samples, taken through the faster library. (A single sample at the
    start once read 92 GFLOP/s, and the best of 11 samples 153, against medians of 140-143.)"""

    def __init__(self, n: int = 2048, rows: int = 8192) -> None:
        self.a, self.b = torch.randn(n, n), torch.randn(n, n)
        self.m, self.v = torch.randn(rows, rows), torch.randn(rows)
        self.rates: dict[tuple[str, str], list[float]] = {
            (k, lib): [] for k in KINDS for lib in LIBS
        }

    def sample(self, reps: int = 3) -> None:
        a, b, m, v = self.a, self.b, self.m, self.v
        work = {"matmul": 2 * a.shape[0] ** 3 / 1e9, "bandwidth": m.numel() * 4 / 1e9}
        products = {
            ("matmul", "torch"): lambda: a @ b,
            ("matmul", "numpy"): lambda: a.numpy() @ b.numpy(),
            ("bandwidth", "torch"): lambda: m @ v,
            ("bandwidth", "numpy"): lambda: m.numpy() @ v.numpy(),
        }
        for key, fn in products.items():
            fn()
            self.rates[key].append(work[key[0]] / min(timed(fn) for _ in range(reps)))

    def median(self, kind: str, lib: str) -> float:
        return statistics.median(self.rates[kind, lib])

    def __getitem__(self, kind: str) -> float:
        return max(self.median(kind, lib) for lib in LIBS)

    def describe(self) -> str:
        def spread(kind: str) -> str:
            return ", ".join(
                f"{lib} {self.median(kind, lib):.1f} "
                f"[{min(self.rates[kind, lib]):.0f}-{max(self.rates[kind, lib]):.0f}]"
                for lib in LIBS
            )

        n = len(self.rates["matmul", "torch"])
        return (
            f"ceilings (median of {n} samples through the run [range], faster library): "
            f"fp32 matmul {self['matmul']:.1f} GFLOP/s ({spread('matmul')}), "
            f"memory bandwidth {self['bandwidth']:.1f} GB/s ({spread('bandwidth')})"
        )


def reference_kv_gpt() -> type[torch.nn.Module]:
    """The reference's KV-cache GPTModel, with one bug fixed so it can decode at all.

    llms-from-scratch 1.0.19 slices its causal mask by columns (`mask[:, -num_tokens:]`), which
    fails as soon as one new token meets a longer cache; the rows were meant
    (`mask[-num_tokens:, :]`). Everything else runs as published.
    """
    import inspect
    import types

    import llms_from_scratch.kv_cache.gpt2 as published

    source = inspect.getsource(published)
    buggy, fixed = "causal_mask[:, -num_tokens:]", "causal_mask[-num_tokens:, :]"
    if buggy not in source:
        return published.GPTModel
    patched = types.ModuleType("reference_kv_gpt2_fixed")
    patched.__dict__["__package__"] = published.__package__
    exec(compile(source.replace(buggy, fixed), published.__file__, "exec"), patched.__dict__)
    return patched.GPTModel


def build_models(ctx: int) -> dict[str, torch.nn.Module]:
    """The three implementations, gpt2-small shape, no dropout, context `ctx`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = get_preset("gpt2-small").replace(context_length=ctx, drop_rate=0.0)
    torch.manual_seed(0)
    ours = GPT(cfg)
    hf = GPT2LMHeadModel(
        GPT2Config(
            n_positions=ctx,
            n_embd=768,
            n_layer=12,
            n_head=12,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            attn_implementation="sdpa",
        )
    )
    ref = reference_kv_gpt()(
        {
            "vocab_size": 50257,
            "context_length": ctx,
            "emb_dim": 768,
            "n_heads": 12,
            "n_layers": 12,
            "drop_rate": 0.0,
            "qkv_bias": True,
        }
    )
    return {"gptlab": ours, "transformers": hf, "reference": ref}


def logits_of(name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if name == "transformers":
        return model(x).logits
    return model(x)


def train_step_fn(
    name: str, model: torch.nn.Module, fused: bool, batch: int, seq: int, vocab: int = 50257
):
    """One full training step, as each implementation is meant to be trained: gptlab's as
    its train() runs it (apply_speed_flags, make_optimizer, lm_loss), a peer with torch's
    AdamW (`fused` or not) on the mean cross-entropy of its logits. Every implementation sees
    the same random batch of `vocab` token ids."""
    model.train()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab, (batch, seq), generator=g)
    y = torch.randint(0, vocab, (batch, seq), generator=g)
    tc = TrainConfig.of(max_steps=1, lr=1e-4, weight_decay=0.1)
    if name == "gptlab":
        apply_speed_flags(model, tc, torch.device("cpu"))  # as train() does: the CPU head loss
        opt = make_optimizer(model, tc, torch.device("cpu"))  # gptlab's own: fused AdamW

        def step() -> None:
            loss, _ = lm_loss(model, (x, y))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=fused or None)

    def peer_step() -> None:
        logits = logits_of(name, model, x)
        F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return peer_step


def generate_fn(name: str, model: torch.nn.Module, prompt: torch.Tensor, n_new: int):
    model.eval()
    if name.startswith("gptlab"):
        s = Sampling(max_new_tokens=n_new, stop_ids=())
        numpy_blas = name == "gptlab"  # "gptlab, torch BLAS": GPTLAB_DECODE_BLAS=0

        def ours() -> None:
            previous, cpu_decode.enabled = cpu_decode.enabled, numpy_blas
            try:
                generate(model, [prompt[0].tolist()], s)
            finally:
                cpu_decode.enabled = previous

        return ours
    if name == "transformers":
        return lambda: model.generate(
            prompt,
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=False,
            use_cache=True,
            pad_token_id=50256,
        )

    from llms_from_scratch.kv_cache.utils import KVCache

    @torch.no_grad()
    def ref_generate() -> None:
        # The reference's cached decoding loop (its packaged generate_text_simple calls a
        # reset_kv_cache() that its GPTModel lacks, so the position counter is reset here).
        cache = KVCache(n_layers=12)
        model.current_pos = 0
        logits = model(prompt, use_cache=True, cache=cache)
        for _ in range(n_new):
            nxt = logits[:, -1].argmax(dim=-1, keepdim=True)
            logits = model(nxt, use_cache=True, cache=cache)

    return ref_generate


def median_rate(samples: list[float], work: float) -> float:
    return work / statistics.median(samples)


def interleaved(
    runs: dict[str, Callable[[], object]],
    reps: int,
    after_round: Callable[[], object],
    first: dict[str, object] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each run: one warm-up call each (allocations, optimizer state;
    its result kept in `first` if given), then `reps` rounds that call every run once in turn
    and then `after_round`, so that the slow and fast moments of a shared machine fall on all
    of them alike."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for name, fn in runs.items():
        result = fn()
        if first is not None:
            first[name] = result
    for _ in range(reps):
        for name, fn in runs.items():
            times[name].append(timed(fn))
        after_round()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-generate", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads, user_api="blas")  # numpy's BLAS, the same count
    print(
        f"torch {torch.__version__}, {args.threads} threads, gptlab {gptlab.__version__} "
        f"memory settings {'on' if memory_tuned else 'off'} (for every implementation)"
    )
    ceilings = Ceilings()
    ceilings.sample()
    models = build_models(ctx=1024)
    n_params = models["gptlab"].num_params()
    tokens = args.batch * args.seq

    if not args.skip_train:
        runs = {
            "gptlab": train_step_fn("gptlab", models["gptlab"], True, args.batch, args.seq),
            "transformers": train_step_fn(
                "transformers", models["transformers"], False, args.batch, args.seq
            ),
            "reference": train_step_fn(
                "reference", models["reference"], False, args.batch, args.seq
            ),
            "transformers+fused": train_step_fn(
                "transformers", models["transformers"], True, args.batch, args.seq
            ),
            "reference+fused": train_step_fn(
                "reference", models["reference"], True, args.batch, args.seq
            ),
        }
        times = interleaved(runs, args.reps, ceilings.sample)

    if not args.skip_generate:
        prompt = torch.randint(
            0, 50257, (1, args.prompt), generator=torch.Generator().manual_seed(2)
        )
        gens = {name: generate_fn(name, m, prompt, args.new) for name, m in models.items()}
        gens["gptlab, torch BLAS"] = generate_fn(
            "gptlab, torch BLAS", models["gptlab"], prompt, args.new
        )
        with torch.inference_mode():
            gtimes = interleaved(gens, args.reps, ceilings.sample)

    print(ceilings.describe())
    if not args.skip_train:
        ceiling = ceilings["matmul"] * 1e9 / (6 * n_params)
        print(
            f"\ntraining step, {args.batch}x{args.seq} tokens, fp32 "
            f"(ceiling at 6N FLOPs/token: {ceiling:.0f} tokens/s)"
        )
        ours = median_rate(times["gptlab"], tokens)
        for name, ts in times.items():
            rate = median_rate(ts, tokens)
            print(
                f"  {name:20s} {rate:7.1f} tokens/s  (median of {len(ts)})  "
                f"gptlab/this = {ours / rate:.2f}x  of ceiling {rate / ceiling:.0%}"
            )
    if not args.skip_generate:
        bound = ceilings["bandwidth"] * 1e9 / (n_params * 4)
        print(
            f"\ngreedy generation with KV cache, prompt {args.prompt}, {args.new} new tokens "
            f"(bandwidth bound: {bound:.1f} tokens/s)"
        )
        ours = median_rate(gtimes["gptlab"], args.new)
        for name, ts in gtimes.items():
            rate = median_rate(ts, args.new)
            print(
                f"  {name:20s} {rate:7.1f} tokens/s  gptlab/this = {ours / rate:.2f}x  "
                f"of bound {rate / bound:.0%}"
            )


if __name__ == "__main__":
    main()
