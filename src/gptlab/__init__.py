"""gptlab: GPT-2 built from scratch, and the whole life of a small LLM on that code."""

from gptlab.config import PRESETS, GPTConfig
from gptlab.model import GPT

__all__ = ["GPT", "PRESETS", "GPTConfig"]
__version__ = "0.1.0"
