"""`gptlab finetune-preference`: preference-tune (DPO) an instruction-tuned model."""

from __future__ import annotations

from gptlab import distributed
from gptlab.jobs.preference import finetune_preference
from gptlab.settings import PreferenceConfig


def run(c: PreferenceConfig, resume: bool) -> int:
    results = finetune_preference(c, resume=resume)
    if distributed.env_rank() != 0:  # one summary, from rank 0
        return 0
    print(
        f"done: {results['steps']} steps in {results['train_seconds']:.0f} s (reference "
        f"{results['reference_seconds']:.0f} s); held-out pairs: reward accuracy "
        f"{results.get('val_accuracy', float('nan')):.3f}, margin "
        f"{results.get('val_margin', float('nan')):.3f}, DPO loss {results['val_loss']:.3f}"
    )
    print(f"model: {results['model']}  (prompt format: {results['template']})")
    return 0
