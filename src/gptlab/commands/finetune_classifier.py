"""`gptlab finetune-classifier`: fine-tune a GPT-2 or Llama-family model into a text classifier
(SMS spam by default), encoding with the base's own tokenizer."""

from __future__ import annotations

from gptlab import distributed
from gptlab.jobs.classify import finetune_classifier
from gptlab.runs import MODEL
from gptlab.settings import ClassifierConfig


def run(c: ClassifierConfig, resume: bool) -> int:
    results = finetune_classifier(c, resume=resume)
    if distributed.env_rank() != 0:  # one summary, from rank 0
        return 0
    print(
        f"test accuracy {results['test_accuracy']:.4f}, precision {results['precision']:.4f}, "
        f"recall {results['recall']:.4f}, f1 {results['f1']:.4f} "
        f"({results['averaging']}; {results['n_test']} test texts)"
    )
    print(f"confusion matrix (rows true, columns predicted {results['labels']}):")
    for name, row in zip(results["labels"], results["confusion_matrix"], strict=True):
        print(f"  {name:>12}: {row}")
    print(f"classifier: {c.out / MODEL}  (gptlab classify --model {c.out} TEXT)")
    return 0
