"""The jobs: each a small class on one skeleton (gptlab.jobs.base), importable without side
effects. pretrain, finetune-classifier and finetune-instruct are training jobs; the pipeline
(gptlab.pipeline) runs them as stages."""
