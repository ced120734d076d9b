"""DPO training-step speed: gptlab's finetune-preference step against TRL's DPOTrainer step, on
the same model, the same batch of pairs and the same CPU threads, in one process.

The model is a Llama-family preset (default llama-micro; smollm2-135m for SmolLM2's shape) with
random weights, copied into transformers' LlamaForCausalLM (gptlab.formats.llama_names). The
batch is the first --batch bundled preference pairs in the Alpaca prompt, tokenized once by
GPT-2's tokenizer (the presets' vocabulary) and handed to each side as it batches them: gptlab's
collate_pairs (chosen and rejected interleaved) and TRL's DataCollatorForPreference (chosen
rows, then rejected rows). A step is forward, DPO loss, backward and the AdamW step:

    gptlab          PreferenceObjective on the batch, whose reference log-probabilities were
                    computed once beforehand (as the job does for every pair it will see);
                    make_optimizer's AdamW, as gptlab.training.train builds it
    trl             DPOTrainer.training_step with its defaults: the frozen reference model
                    runs on every step (precompute_ref_log_probs=False); the trainer's own
                    optimizer (create_optimizer)
    trl-precomputed the same trainer reading the same precomputed reference log-probabilities
                    from the batch (precompute_ref_log_probs=True)

Every round times each side once in turn (benchmarks/speed.py's `interleaved`), so the slow
moments of a shared machine fall on all of them; figures are medians. fp32, dropout off.

    PYTHONPATH=src python benchmarks/dpo_speed.py
    PYTHONPATH=src python benchmarks/dpo_speed.py --preset smollm2-135m --batch 4 --reps 3
"""

from __future__ import annotations

# First: speed.py applies gptlab's process memory settings before torch's first allocation.
from speed import interleaved  # isort: split

import argparse
import copy
import statistics
from collections.abc import Callable
from typing import Any

import torch

from gptlab import text
from gptlab.config import get_preset
from gptlab.families import new_model
from gptlab.formats.hf_llama import hf_llama_config_dict
from gptlab.formats.llama_names import to_hf
from gptlab.instructions import prompt_format
from gptlab.preferences import (
    PreferenceDataset,
    PreferenceObjective,
    collate_pairs,
    load_pairs,
    reference_logprobs,
)
from gptlab.training import TrainConfig, apply_speed_flags, make_optimizer

BETA = 0.1


def hf_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in transformers' LlamaForCausalLM (sdpa attention, fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**hf_llama_config_dict(model.cfg), attn_implementation="sdpa")
    theirs = LlamaForCausalLM(config)
    theirs.load_state_dict(to_hf(model.state_dict(), model.cfg), strict=False)
    if config.tie_word_embeddings:
        theirs.tie_weights()
    return theirs.float()


def gptlab_step(model: torch.nn.Module, batch: Any) -> Callable[[], float]:
    cpu = torch.device("cpu")
    apply_speed_flags(model, TrainConfig(max_steps=1), cpu)
    optimizer = make_optimizer(model, TrainConfig.of(max_steps=1, lr=1e-6), cpu)
    objective = PreferenceObjective(model, BETA)
    model.train()

    def step() -> float:
        loss, _ = objective(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return step


def trl_steps(policy: torch.nn.Module, items: list, reference: torch.Tensor, eos: int) -> dict:
    """TRL's step with the reference model run each step, and with its log-probabilities
    precomputed (the same trainer, switched)."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    vocab = policy.config.vocab_size
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok = PreTrainedTokenizerFast(tokenizer_object=words, pad_token=f"t{eos}", eos_token=f"t{eos}")
    args = DPOConfig(
        output_dir="unused", report_to=[], beta=BETA, use_cpu=True, bf16=False,
        gradient_checkpointing=False, learning_rate=1e-6,
    )  # fmt: skip
    data = Dataset.from_dict({"prompt": ["t5"], "chosen": ["t6"], "rejected": ["t7"]})
    trainer = DPOTrainer(
        model=policy, ref_model=copy.deepcopy(policy), args=args, train_dataset=data,
        processing_class=tok,
    )  # fmt: skip
    optimizer = trainer.create_optimizer()
    examples = [
        {"prompt_ids": c[:n], "chosen_ids": [*c[n:], eos], "rejected_ids": [*r[n:], eos],
         "ref_chosen_logps": float(ref[0]), "ref_rejected_logps": float(ref[1])}
        for ((c, n), (r, _), _), ref in zip(items, reference, strict=True)
    ]  # fmt: skip
    inputs = DataCollatorForPreference(pad_token_id=eos)(examples)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # what Trainer.train sets before its steps

    def run(precomputed: bool) -> Callable[[], float]:
        def step() -> float:
            trainer.precompute_ref_logps = precomputed
            loss = trainer.training_step(trainer.model, dict(inputs))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss)

        return step

    return {"trl": run(False), "trl-precomputed": run(True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="llama-micro")
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    model = new_model(cfg).float()
    fmt = prompt_format("alpaca", text.gpt2())
    data = PreferenceDataset(load_pairs(None)[: args.batch], fmt)
    items = [data[i] for i in range(len(data))]
    x, y, _ = collate_pairs(items, None, fmt.end_id, fmt.end_id)
    reference = reference_logprobs(model, x, y)  # once, before any step: the job's cache
    tokens = int(x.numel())
    steps = {"gptlab": gptlab_step(copy.deepcopy(model), (x, y, reference))}
    steps.update(trl_steps(hf_copy(model), items, reference, fmt.end_id))
    first: dict[str, object] = {}
    times = interleaved(steps, args.reps, lambda: None, first)
    print(
        f"{args.preset} ({model.num_params():,} parameters), {args.batch} pairs = {len(x)} "
        f"rows of {x.shape[1]} tokens, {args.threads} threads, {args.reps} rounds (medians)"
    )
    # the two TRL rows share one policy: the second's first step follows the first's update
    print(f"first-step losses: {', '.join(f'{k} {v:.6f}' for k, v in first.items())}")
    ours = statistics.median(times["gptlab"])
    print(f"{'step':<16} {'seconds':>8} {'tokens/s':>9} {'gptlab speed-up':>16}")
    for name, samples in times.items():
        s = statistics.median(samples)
        print(f"{name:<16} {s:>8.3f} {tokens / s:>9.0f} {s / ours:>15.2f}x")


if __name__ == "__main__":
    main()
