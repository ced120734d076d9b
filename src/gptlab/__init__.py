"""gptlab: GPT-2 built from scratch, and the whole life of a small LLM on that code."""

from gptlab.memory import tune_process_memory

memory_tuned = tune_process_memory()  # before torch is imported: see gptlab.memory

from gptlab.config import PRESETS, GPTConfig  # noqa: E402
from gptlab.model import GPT  # noqa: E402

__all__ = ["GPT", "PRESETS", "GPTConfig"]
__version__ = "0.1.0"
