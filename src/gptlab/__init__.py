"""gptlab: GPT-2 built from scratch, and the whole life of a small LLM on that code.

    import gptlab
    llm = gptlab.load("gpt2-small")  # anything --model takes (gptlab.llm)
    print(llm.generate("Every effort moves you", max_new_tokens=20))

Importing gptlab changes nothing in the process and loads no torch: `load`, `LLM`, `GPT`,
`GPTConfig` and `PRESETS` are imported on first use. The CPU memory settings the CLI applies
are one call for library users: `gptlab.cpu.memory.tune_process_memory()`, before torch is
imported.
"""

from typing import Any

__all__ = ["GPT", "LLM", "PRESETS", "GPTConfig", "load"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("LLM", "load"):
        from gptlab import llm

        return getattr(llm, name)
    if name == "GPT":
        from gptlab.model import GPT

        return GPT
    if name in ("GPTConfig", "PRESETS"):
        from gptlab import config

        return getattr(config, name)
    raise AttributeError(f"module 'gptlab' has no attribute {name!r}")
