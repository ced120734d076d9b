"""`gptlab respond`: write a model's response to every entry of an instruction data file."""

from __future__ import annotations

from gptlab.respond import respond
from gptlab.settings import RespondConfig


def run(c: RespondConfig) -> int:
    assert c.data is not None and c.out is not None  # required flags
    out = respond(
        c.model,
        c.data,
        c.out,
        c.sampling,
        c.batch_size,
        c.device.device,
        c.prompt_format,
        c.device.quantize,
    )
    print(f"responses: {out}")
    return 0
