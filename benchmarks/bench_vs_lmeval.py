"""gptlab bench against lm-evaluation-harness's HFLM: same documents, same weights, same
tokens; per-document predictions compared and documents per second timed, in one process.

    pip install lm-eval==0.4.13   # into the venv; not a gptlab dependency
    python benchmarks/bench_vs_lmeval.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --tasks hellaswag,arc_easy --limit 100 --data-dir WHEELS

The model is exported with gptlab's Hugging Face writer (`convert --to hf`) and loaded by
transformers for HFLM, in float32 on the CPU. HFLM is handed gptlab's own tokenizer (the
same `tokenizers` object, wrapped), so both score the same token ids; it gets each
document's (context, continuation) pairs as log-likelihood requests, which is what a
custom lm-eval task over these documents would send it. A difference in prediction is
listed with the gap between the two best choices' log-probabilities.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from gptlab.bench import Options, bench_model, load_docs, plan
from gptlab.formats.hf import export_hf
from gptlab.llm import load
from gptlab.tasks.base import ChoiceDoc, argmax


def lmeval_model(model, tokenizer, folder: Path, batch_size: int):
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        sys.exit("lm-eval is not installed: pip install lm-eval==0.4.13")
    import transformers

    export_hf(model, folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    special = {k: v for k, v in tokenizer.special_tokens.items() if k.endswith("_token")}
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, **special)
    return HFLM(pretrained=hf, tokenizer=tok, device="cpu", batch_size=batch_size)


def lmeval_predictions(lm, docs: list[ChoiceDoc]) -> tuple[list[dict], float]:
    from lm_eval.api.instance import Instance

    requests, owner = [], []
    for d, doc in enumerate(docs):
        for i, choice in enumerate(doc.choices):
            args = (doc.context(i), choice)
            requests.append(Instance("loglikelihood", {}, args, len(requests), ("bench", d, 1)))
            owner.append(d)
    start = time.perf_counter()
    scores = lm.loglikelihood(requests, disable_tqdm=True)
    seconds = time.perf_counter() - start
    logps: list[list[float]] = [[] for _ in docs]
    for d, (logp, _) in zip(owner, scores, strict=True):
        logps[d].append(float(logp))
    preds = []
    for doc, lp in zip(docs, logps, strict=True):
        per_char = [x / len(c) for x, c in zip(lp, doc.choices, strict=True)]
        preds.append({"acc": argmax(lp), "acc_norm": argmax(per_char), "logprobs": lp})
    return preds, seconds


def compare(label: str, ours: dict, docs: list[ChoiceDoc], theirs: list[dict], secs: float) -> None:
    records = ours["records"]
    n = len(docs)
    for metric in ("acc", "acc_norm"):
        same = sum(r["pred"][metric] == t[metric] for r, t in zip(records, theirs, strict=True))
        acc_ours = sum(r["pred"][metric] == r["gold"] for r in records) / n
        acc_theirs = sum(t[metric] == d.gold for t, d in zip(theirs, docs, strict=True)) / n
        print(
            f"{label} {metric}: predictions equal on {same}/{n}; "
            f"accuracy gptlab {acc_ours:.4f}, lm-eval {acc_theirs:.4f}"
        )
        for r, t in zip(records, theirs, strict=True):
            if r["pred"][metric] != t[metric]:
                top = sorted(t["logprobs"], reverse=True)[:2]
                print(
                    f"  doc {r['doc_id']}: gptlab {r['pred'][metric]}, lm-eval {t[metric]}, "
                    f"lm-eval's two best log-probs differ by {top[0] - top[1]:.2e}"
                )
    diff = max(
        abs(a - b)
        for r, t in zip(records, theirs, strict=True)
        for a, b in zip(r["logprobs"], t["logprobs"], strict=True)
    )
    rate_ours, rate_theirs = n / ours["seconds"], n / secs
    print(
        f"{label}: largest log-prob difference {diff:.2e}; documents/s gptlab {rate_ours:.3f}, "
        f"lm-eval {rate_theirs:.3f}, ratio {rate_ours / rate_theirs:.2f}x"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tasks", default="hellaswag,arc_easy")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--batch-size", type=int, default=16, help="HFLM's batch size")
    args = p.parse_args()
    torch.manual_seed(0)
    llm = load(args.model, device="cpu")
    model, tokenizer = llm.model, llm.tokenizer
    opts = Options(data_dir=args.data_dir, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        lm = lmeval_model(model, tokenizer, Path(tmp) / "hf", args.batch_size)
        for run in plan(args.tasks.split(","), 0):
            docs, _, _ = load_docs(run, args.limit, opts)
            out = Path(tmp) / "out"
            results = bench_model(model, tokenizer, [run.label], 0, args.limit, out, opts)
            lines = (out / f"{run.label}.jsonl").read_text().splitlines()
            ours = {
                "records": [json.loads(x) for x in lines],
                "seconds": results["tasks"][run.label]["seconds"],
            }
            theirs, secs = lmeval_predictions(lm, docs)
            compare(run.label, ours, docs, theirs, secs)


if __name__ == "__main__":
    main()
