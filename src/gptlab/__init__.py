"""gptlab: GPT-2 built from scratch, and the whole life of a small LLM on that code.

`GPT`, `GPTConfig` and `PRESETS` are imported on first use, so `import gptlab` (and
`gptlab --help`) loads no torch.
"""

from typing import Any

from gptlab.memory import tune_process_memory

memory_tuned = tune_process_memory()  # before torch is imported: see gptlab.memory

__all__ = ["GPT", "PRESETS", "GPTConfig"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "GPT":
        from gptlab.model import GPT

        return GPT
    if name in ("GPTConfig", "PRESETS"):
        from gptlab import config

        return getattr(config, name)
    raise AttributeError(f"module 'gptlab' has no attribute {name!r}")
