"""gptlab: GPT-2 built from scratch, and the whole life of a small LLM on that code.

Importing gptlab changes nothing in the process and loads no torch: `GPT`, `GPTConfig` and
`PRESETS` are imported on first use. The CPU memory settings the CLI applies are one call
for library users: `gptlab.cpu.memory.tune_process_memory()`, before torch is imported.
"""

from typing import Any

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
