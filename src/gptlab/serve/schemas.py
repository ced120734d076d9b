"""The request bodies of both dialects. Field bounds refuse, with a 400, what sampling could
not take; unknown fields are ignored, as the real servers do."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Loose(BaseModel):
    """Clients send many fields gptlab does not use (keep_alive, format, ...): ignore them."""

    model_config = ConfigDict(extra="ignore")


Stop = str | list[str] | None
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


class OllamaOptions(Loose):
    temperature: float | None = Field(None, ge=0, le=100)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    num_predict: int | None = Field(None, ge=-2)  # -1: until the context is full, as in Ollama
    stop: Stop = None


class OllamaMessage(Loose):
    role: str
    content: str = ""


class OllamaGenerate(Loose):
    model: str
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    stream: bool = True
    options: OllamaOptions = Field(default_factory=OllamaOptions)


class OllamaChat(Loose):
    model: str
    messages: list[OllamaMessage]
    stream: bool = True
    options: OllamaOptions = Field(default_factory=OllamaOptions)


class OllamaShow(Loose):
    model: str | None = None
    name: str | None = None  # older clients


class TextPart(Loose):
    type: Literal["text"]
    text: str


class OpenAIMessage(Loose):
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class OpenAISampling(Loose):
    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: Stop = None
    n: int = Field(1, ge=1, le=1)  # one choice per request
    stream: bool = False


class OpenAIChat(OpenAISampling):
    messages: list[OpenAIMessage]
    max_completion_tokens: int | None = Field(None, ge=0)


class OpenAICompletion(OpenAISampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default for completions
