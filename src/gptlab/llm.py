"""One loader for every model gptlab runs: `gptlab.load(spec)` gives an `LLM`, the model, its
tokenizer and its config.json facts together, placed once on its device and dtype.

    import gptlab
    llm = gptlab.load("runs/first/instruct/model")
    print(llm.generate("Every effort moves you", max_new_tokens=20))

`spec` is anything `--model` takes (gptlab.hub: a run or model folder, a Hugging Face folder,
file or repository id, an OpenAI TF checkpoint, a .gguf file, a name such as gpt2-small). Every
verb that runs a model and the server load through here, so a library user gets exactly what
`gptlab generate` and `gptlab serve` run. `quantize` ("int8", "int4", "int8-dynamic"; None or
"none": as stored) runs the blocks and the head on quantized weights (docs/quantize.md): a
.gguf file on the CPU keeps its own 4- and 8-bit blocks (gptlab.formats.gguf_quant), anything
else is loaded, placed on its device, then quantized there (gptlab.quantize.quantize_model).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import torch

from gptlab import text
from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.families import family_of
from gptlab.generation import GenerationStats, TextStream, generate_text, generate_tokens
from gptlab.hub import Resolved, is_gguf, resolve_gguf_quantized, resolve_with_tokenizer
from gptlab.model import Decoder
from gptlab.prompts import own_chat_template
from gptlab.quantize import check_device, footprint, quantize_model
from gptlab.settings import Sampling

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise GptlabError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


class LLM:
    """A loaded model ready to run: `model` (in eval mode, on `device`), its `tokenizer` and
    its `metadata` (config.json: the model section, and what the job that made it recorded,
    such as its task, labels and prompt template)."""

    def __init__(
        self,
        model: Decoder,
        tokenizer: text.Tokenizer,
        metadata: dict[str, Any],
        spec: str,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.spec = spec  # what it was loaded from

    @classmethod
    def load(
        cls,
        spec: str | Path,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        quantize: str | None = None,
    ) -> LLM:
        """The model `spec` names on `device` ("auto": the best available), its weights in
        `dtype` (None: as stored, float32 for every foreign format) and, with `quantize`, its
        linear layers quantized (see the module docstring); a bad choice is one GptlabError
        before anything is read. With a dtype, the weights are read on the CPU and moved once,
        already cast, so the device never holds a float32 copy."""
        target, cast = pick_device(str(device)), _dtype(dtype)
        mode = None if quantize in (None, "none") else quantize
        if mode is not None:
            check_device(mode, target)
        model, meta, tokenizer = _read(spec, target, cast, mode)
        return cls(model.eval(), tokenizer, meta, str(spec))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def family(self) -> str:
        """ "gpt2" or "llama" (gptlab.families)."""
        return family_of(self.model.cfg)

    @property
    def task(self) -> str | None:
        """What the job that made it trained it for ("lm", "classify"), when it says."""
        return self.metadata.get("task")

    @property
    def chat_template(self) -> str | None:
        """The chat template its chat messages go into; None: the Alpaca prompt
        (gptlab.prompts.own_chat_template)."""
        return own_chat_template(self.metadata, self.tokenizer.chat_template)

    def check_language_model(self) -> None:
        """A classifier generates no text: one GptlabError naming it."""
        if self.model.cfg.n_classes is not None:
            raise GptlabError(f"{self.spec}: is a classifier; it cannot generate text")

    @staticmethod
    def sampling(
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
    ) -> Sampling:
        """Sampling settings (temperature 0: greedy); generation also stops at the
        tokenizer's own stop ids (eos, end of turn) and before any `stop` text."""
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        return Sampling(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop_strings=stops,
        )

    @overload
    def generate(self, prompt: str, **options: Any) -> str: ...
    @overload
    def generate(self, prompt: Sequence[str], **options: Any) -> list[str]: ...

    def generate(self, prompt: str | Sequence[str], **options: Any) -> str | list[str]:
        """The continuation of `prompt`, or of each of a list of prompts (generated together
        as one batch). `options` are `sampling`'s (max_new_tokens, temperature, top_k, top_p,
        seed, stop), or `sampling=` a Sampling itself."""
        self.check_language_model()
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        texts = generate_text(self.model, prompts, self._options(options), self.tokenizer)
        return texts[0] if isinstance(prompt, str) else texts

    def stream(self, prompt: str, **options: Any) -> Iterator[str]:
        """The continuation of `prompt` piece by piece as it is generated (whole characters,
        ending before a stop text); `options` as for `generate`."""
        s = self._options(options)
        stream = TextStream(s.stop_strings, tokenizer=self.tokenizer)
        for token in self.tokens(self.tokenizer.encode(prompt), s):
            if piece := stream.push(token):
                yield piece
            if stream.stopped:
                return
        if rest := stream.flush():
            yield rest

    def tokens(
        self, prompt: Sequence[int], s: Sampling, stats: GenerationStats | None = None
    ) -> Iterator[int]:
        """The new token ids after `prompt` (ids), one at a time, until a stop id, a stop text
        or `s.max_new_tokens`; `stats` tells afterwards whether the context filled up."""
        self.check_language_model()
        steps = generate_tokens(
            self.model, [list(prompt)], s, stats=stats, tokenizer=self.tokenizer
        )
        for nxt, active in steps:
            if not bool(active[0]):
                return
            yield int(nxt[0])

    def _options(self, options: dict[str, Any]) -> Sampling:
        s = options.pop("sampling", None)
        if s is not None and options:
            raise GptlabError(f"give sampling= or {', '.join(options)}, not both")
        return s if s is not None else self.sampling(**options)

    def __repr__(self) -> str:
        return (
            f"LLM({self.spec!r}, {self.family}, {footprint(self.model)[0]:,} parameters, "
            f"{self.device}, tokenizer {self.tokenizer.name})"
        )


def _read(
    spec: str | Path, target: torch.device, cast: torch.dtype | None, mode: str | None
) -> Resolved:
    """The model on `target` in `cast`, quantized with `mode` (None: not)."""
    on_file = mode is not None and target.type == "cpu" and cast in (None, torch.float32)
    if on_file and is_gguf(Path(spec)):
        return resolve_gguf_quantized(Path(spec), mode)
    model, meta, tokenizer = resolve_with_tokenizer(
        spec, device=str(target if cast is None else "cpu")
    )
    if cast is not None:
        model.to(device=target, dtype=cast)
    if mode is not None:
        quantize_model(model, mode)
    return Resolved(model, meta, tokenizer)


load = LLM.load
