"""Write tests/fixtures/tf_gpt2/: a genuine TensorFlow checkpoint in OpenAI's GPT-2 layout.

Run by hand, never in CI, in a separate virtual environment that has TensorFlow:

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy
    /tmp/tfvenv/bin/python scripts/make_tf_fixture.py

The model is a tiny GPT-2 (reduced vocabulary, 2 layers, 32 dims) with seeded random values,
saved by `tf.compat.v1.train.Saver` under OpenAI's variable names (Conv1D weights as
[1, in, out]), beside OpenAI's `hparams.json` and `checkpoint` files. `values.npz` holds every
variable's value as written, so the tests can check gptlab's reader tensor by tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tf_gpt2"
HPARAMS = {"n_vocab": 96, "n_ctx": 32, "n_embd": 32, "n_head": 2, "n_layer": 2}


def variables(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """OpenAI's variables with values large enough that a wrong mapping changes the logits."""
    d, v, c = HPARAMS["n_embd"], HPARAMS["n_vocab"], HPARAMS["n_ctx"]

    def normal(*shape: int, std: float = 0.1) -> np.ndarray:
        return rng.normal(0.0, std, shape).astype(np.float32)

    values = {"model/wte": normal(v, d, std=0.3), "model/wpe": normal(c, d, std=0.1)}
    for i in range(HPARAMS["n_layer"]):
        h = f"model/h{i}"
        for norm in ("ln_1", "ln_2"):
            values[f"{h}/{norm}/g"] = 1.0 + normal(d)
            values[f"{h}/{norm}/b"] = normal(d)
        for name, n_in, n_out in (
            ("attn/c_attn", d, 3 * d),
            ("attn/c_proj", d, d),
            ("mlp/c_fc", d, 4 * d),
            ("mlp/c_proj", 4 * d, d),
        ):
            values[f"{h}/{name}/w"] = normal(1, n_in, n_out, std=0.15)
            values[f"{h}/{name}/b"] = normal(n_out, std=0.05)
    values["model/ln_f/g"] = 1.0 + normal(d)
    values["model/ln_f/b"] = normal(d)
    return values


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    values = variables(np.random.default_rng(1234))
    tf.compat.v1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        tf_vars = [tf.compat.v1.get_variable(k, initializer=v) for k, v in values.items()]
        saver = tf.compat.v1.train.Saver(tf_vars, save_relative_paths=True)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(OUT / "model.ckpt"))
    (OUT / "hparams.json").write_text(json.dumps(HPARAMS, indent=2) + "\n")
    np.savez(OUT / "values.npz", **values)
    written = sorted(p.name for p in OUT.iterdir())
    print(f"wrote {OUT}: {', '.join(written)} (TensorFlow {tf.__version__})")


if __name__ == "__main__":
    main()
