"""LAMBADA (Paperno et al., 2016; OpenAI's detokenised test set): the last word of a passage.

5,153 passages, 0-shot. A passage counts as right when greedy decoding produces its last
word exactly (every token of " word" the most likely next token), as GPT-2's paper and
lm-eval score it; the word's perplexity is reported beside. Dataset licence: CC BY 4.0.
"""

from __future__ import annotations

from gptlab.tasks.base import olmes_task

TASK = olmes_task("lambada", {0: "bpb_0shot"}, licence="CC BY 4.0", kind="lambada")
