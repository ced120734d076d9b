"""`gptlab bench`: standard benchmarks of any model `--model` takes, with offline data."""

from __future__ import annotations

from typing import Any

from gptlab.bench import Options, bench_model, plan
from gptlab.llm import load
from gptlab.settings import BenchConfig


def run(c: BenchConfig) -> int:
    plan(c.tasks, c.shots)  # an unknown task is refused before the model loads
    llm = load(c.model, **c.device.load_options())
    llm.check_language_model()
    opts = Options(
        data_dir=c.data_dir,
        index_url=c.index_url,
        batch_tokens=c.batch_tokens,
        gen_batch=c.gen_batch,
        max_new_tokens=c.max_new_tokens,
    )
    results = bench_model(llm.model, llm.tokenizer, c.tasks, c.shots, c.limit, c.out, opts)
    for label, r in results["tasks"].items():
        print(summary_line(label, r))
    if "core" in results:
        core = results["core"]
        print(f"CORE estimate {core['core_estimate']:.4f} ({core['note']})")
    if c.out is not None:
        print(f"results: {c.out / 'results.json'}")
    return 0


def summary_line(label: str, r: dict[str, Any]) -> str:
    shown = []
    for name, value in r["metrics"].items():
        if isinstance(value, dict):
            shown.append(f"{name} {value['value']:.4f} ± {value['stderr']:.4f}")
        elif name != "chance" and isinstance(value, float):
            shown.append(f"{name} {value:.4f}")
    return (
        f"{label} ({r['shots']}-shot, {r['documents']}/{r['of']} docs, {r['seconds']:.1f} s): "
        + ", ".join(shown)
    )
