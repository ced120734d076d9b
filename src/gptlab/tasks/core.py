"""An estimate of the CORE score (DCLM; nanochat's yardstick for base models).

CORE averages the centred accuracy, (accuracy - chance) / (1 - chance), of 22 tasks. Six of
them, the ones gptlab has data for, predict it well: CORE ~= 0.6639 x their mean centred
accuracy + 0.0168 (the fit nanochat's regression gives). It is an estimate, and its inputs
differ from CORE's own: CORE runs HellaSwag 10-shot and PIQA and ARC 10-shot where the data
here has 5-shot contexts, and the prompts are OLMES's renders, not DCLM's. Multiple choice is
scored as CORE scores it: the choice with the best mean log-probability per token.
"""

from __future__ import annotations

from typing import Any

# (task, shots here, CORE's shots, chance)
COMPONENTS = (
    ("hellaswag", 0, 0, 0.25),
    ("hellaswag", 5, 10, 0.25),
    ("lambada", 0, 0, 0.0),
    ("piqa", 5, 10, 0.5),
    ("arc_easy", 5, 10, 0.25),
    ("arc_challenge", 5, 10, 0.25),
)
SLOPE, INTERCEPT = 0.6639, 0.0168
GPT2_CORE = {
    "gpt2 (124M)": 0.1139,
    "gpt2-medium (355M)": 0.1849,
    "gpt2-large (774M)": 0.2146,
    "gpt2-xl (1.5B)": 0.2565,
}


def label(task: str, shots: int) -> str:
    return f"{task}_{shots}shot"


def estimate(accuracies: dict[str, float]) -> dict[str, Any]:
    """The CORE estimate from each component's accuracy (keyed by `label`)."""
    centred = {}
    for task, shots, _, chance in COMPONENTS:
        key = label(task, shots)
        centred[key] = (accuracies[key] - chance) / (1 - chance)
    mean = sum(centred.values()) / len(centred)
    return {
        "core_estimate": SLOPE * mean + INTERCEPT,
        "note": "an estimate from 6 of CORE's 22 tasks; HellaSwag, PIQA and ARC run 5-shot "
        "here where CORE runs them 10-shot, with OLMES's prompts",
        "centred": centred,
        "differs_from_core": [
            f"{label(t, s)} (CORE: {c}-shot)" for t, s, c, _ in COMPONENTS if s != c
        ],
        "published_gpt2": GPT2_CORE,
    }
