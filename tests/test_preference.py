"""Preference tuning (DPO): the pairs, the loss against TRL's DPOTrainer (full and LoRA), the
job on a tiny model (learning, resume, the saved model's template), and bad input."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch

from gptlab.checkpoints import read_safetensors, save_model
from gptlab.config import get_preset
from gptlab.data import bundled
from gptlab.errors import GptlabError
from gptlab.families import new_model
from gptlab.formats.hf_llama import export_hf_llama
from gptlab.formats.llama_names import parameter_names
from gptlab.instructions import load_entries, prompt_format, split_entries
from gptlab.jobs.preference import REFERENCE, finetune_preference
from gptlab.llm import load
from gptlab.lora import adapters_off, apply_lora
from gptlab.preferences import (
    BUNDLED_PAIRS,
    PreferenceDataset,
    PreferenceObjective,
    check_format,
    collate_pairs,
    dpo_loss,
    load_pairs,
    pair_logprobs,
    parse_pair,
    reference_logprobs,
    same_responses,
    split_pairs,
)
from gptlab.respond import model_prompt_format
from gptlab.settings import PreferenceConfig
from gptlab.tokenizer import EOT_ID
from tests.serve_process import gptlab_command, gptlab_env
from tests.test_llama import CONFIGS

SEED = 123
BETA = 0.1


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ---- the pairs -------------------------------------------------------------------------------


def test_bundled_pairs_match_their_source_and_hold_out_the_instruction_test_split() -> None:
    with bundled(BUNDLED_PAIRS) as p:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
    with bundled("SOURCES.md") as p:
        assert f"`{BUNDLED_PAIRS}` |" in p.read_text() and digest in p.read_text()
    pairs = load_pairs(None)
    assert len(pairs) == 1100
    train, held_out = split_pairs(pairs, SEED)
    assert len(train) + len(held_out) == 1094  # the book's 6 pairs with nothing to prefer
    ties = [i for i, p in enumerate(pairs) if same_responses(p)]
    assert len(ties) == 6
    entries = load_entries(None)
    order = split_entries(list(range(len(entries))), SEED)[2]  # type: ignore[arg-type]
    assert split_entries(entries, SEED)[2] == [entries[i] for i in order]  # RUN/test.json
    expected = [pairs[i] for i in order if i not in ties]
    assert held_out == expected and len(held_out) == 110 - len(set(order) & set(ties))


def test_both_shapes_of_pairs() -> None:
    book = {"instruction": "Fix it.", "input": "teh", "chosen": "the", "rejected": "teh, duh"}
    assert parse_pair(book, "f: entry 0") == {
        "prompt": {"instruction": "Fix it.", "input": "teh"},
        "chosen": "the",
        "rejected": "teh, duh",
    }
    one_turn = {
        "prompt": [{"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "What."}],
    }
    assert parse_pair(one_turn, "w")["prompt"] == {"instruction": "Hi?"}
    assert parse_pair({"prompt": "Hi?", "chosen": "a", "rejected": "b"}, "w")["prompt"] == {
        "instruction": "Hi?"
    }
    system = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}]
    conversation = parse_pair({**one_turn, "prompt": system}, "w")
    assert conversation["prompt"] == {"messages": system}
    with pytest.raises(GptlabError, match=r"pairs.json: entry 0 is a conversation .* Alpaca"):
        check_format([conversation], prompt_format("alpaca"), "pairs.json")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"instruction": "a", "rejected": "b"}, "field 'chosen' is missing"),
        (
            {"instruction": "a", "chosen": "b ", "rejected": "b"},
            "'chosen' and 'rejected' are the same",
        ),
        ({"chosen": "a", "rejected": "b"}, "no prompt"),
        (
            {"prompt": "a", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"},
            "one assistant message",
        ),
        ({"instruction": "a", "chosen": "", "rejected": "b"}, "field 'chosen' is empty"),
    ],
)
def test_bad_pairs_are_one_line(record: dict, message: str) -> None:
    with pytest.raises(GptlabError) as info:
        parse_pair(record, "pairs.json: entry 3")
    assert str(info.value).startswith("pairs.json: entry 3: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_batches_interleave_pairs_and_mask_prompts() -> None:
    fmt = prompt_format("alpaca")
    pairs = [{"prompt": {"instruction": "Say yes."}, "chosen": "Yes.", "rejected": "No way."}]
    ds = PreferenceDataset(pairs * 2, fmt)
    ds.reference[:] = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    x, y, ref = collate_pairs([ds[0], ds[1]], None, EOT_ID, EOT_ID)
    assert x.shape[0] == 4 and torch.equal(ref, ds.reference)
    (chosen, n), (rejected, _) = ds.items[0]
    assert chosen[:n] == rejected[:n] == fmt.prompt_ids(pairs[0]["prompt"])
    kept = y[0][y[0] != -100].tolist()
    assert kept == [*chosen[n:], EOT_ID] and y[1][y[1] != -100].tolist() == [*rejected[n:], EOT_ID]
    assert torch.equal(x[0], x[2]) and torch.equal(x[1], x[3])


# ---- the loss against TRL's --------------------------------------------------------------------


def random_items(vocab: int, n_pairs: int = 3) -> list:
    """Pairs of random tokens (prompts and responses of different lengths), as
    PreferenceDataset items."""
    g = torch.Generator().manual_seed(1)
    items = []
    for b in range(n_pairs):
        prompt = torch.randint(3, vocab, (3 + b,), generator=g).tolist()
        chosen = torch.randint(3, vocab, (2 + b,), generator=g).tolist()
        rejected = torch.randint(3, vocab, (4 - b,), generator=g).tolist()
        items.append(
            ((prompt + chosen, len(prompt)), (prompt + rejected, len(prompt)), torch.zeros(2))
        )
    return items


def random_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _ = collate_pairs(random_items(vocab), None, end_id=2, pad_id=1)
    return x, y


def trl_inputs(trainer, items: list) -> dict[str, torch.Tensor]:
    """The same pairs batched by TRL's own collator (chosen rows, then rejected rows), each
    response ending with the end token 2, as ours do."""
    examples = [
        {"prompt_ids": c[:n], "chosen_ids": [*c[n:], 2], "rejected_ids": [*r[n:], 2]}
        for (c, n), (r, _), _ in items
    ]
    return trainer.data_collator(examples)


def trl_trainer(model, ref_model, vocab: int, peft_config=None):
    """TRL 1.16's DPOTrainer around a transformers model (its loss is all we call)."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t1", eos_token="t2")
    data = Dataset.from_dict({"prompt": ["t5 t6"], "chosen": ["t7"], "rejected": ["t8"]})
    args = DPOConfig(
        output_dir="unused",
        report_to=[],
        beta=BETA,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
    )
    return DPOTrainer(
        model=model, ref_model=ref_model, args=args, train_dataset=data, processing_class=tok,
        peft_config=peft_config,
    )  # fmt: skip


def hf_copy(model, folder: Path):
    from transformers import AutoModelForCausalLM

    export_hf_llama(model, folder)
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").train()


def test_loss_and_gradients_equal_trl(tmp_path: Path) -> None:
    cfg = CONFIGS["llama-tied-mqa"]  # SmolLM2's layout: tied head, one kv head
    torch.manual_seed(0)
    base = new_model(cfg)
    policy = copy.deepcopy(base)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))  # a policy some way from its reference
    trainer = trl_trainer(
        hf_copy(policy, tmp_path / "p"), hf_copy(base, tmp_path / "r"), cfg.vocab_size
    )
    items = random_items(cfg.vocab_size)
    x, y, _ = collate_pairs(items, None, end_id=2, pad_id=1)
    objective = PreferenceObjective(policy, BETA)
    ours, _ = objective.loss(policy, (x, y, reference_logprobs(base, x, y)), "train")
    ours.backward()
    theirs = trainer.compute_loss(trainer.model, trl_inputs(trainer, items))
    theirs.backward()
    assert abs(float(ours) - float(theirs)) <= 1e-6
    hf = dict(trainer.model.named_parameters())
    for name in parameter_names(cfg):
        grad, expected = policy.get_parameter(name.gptlab).grad, hf[name.hf].grad
        torch.testing.assert_close(grad, expected, rtol=0, atol=1e-6)
    assert float(policy.blocks[0].attn.q.weight.grad.abs().max()) > 1e-4  # not all zero
    metrics, trl_metrics = objective.collect(0), trainer._metrics["train"]
    assert metrics["train_margin"] == pytest.approx(trl_metrics["rewards/margins"][0], abs=1e-6)
    assert metrics["train_accuracy"] == pytest.approx(trl_metrics["rewards/accuracies"][0])
    assert metrics["train_chosen_logp"] == pytest.approx(trl_metrics["logps/chosen"][0], abs=1e-5)


HF_LAYERS = {
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.o_proj",
    "ff.gate": "mlp.gate_proj",
    "ff.up": "mlp.up_proj",
    "ff.down": "mlp.down_proj",
}


def test_lora_loss_and_gradients_equal_trl_with_peft(tmp_path: Path) -> None:
    import peft  # the test extra's, beside trl

    cfg = CONFIGS["llama-tied-mqa"]
    torch.manual_seed(0)
    model = new_model(cfg)
    hf = hf_copy(model, tmp_path / "m")
    apply_lora(model, rank=4, alpha=8.0)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=sorted({v.split(".")[1] for v in HF_LAYERS.values()}),
    )
    trainer = trl_trainer(hf, None, cfg.vocab_size, peft_config=config)
    peft_params = dict(trainer.model.named_parameters())
    ours = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith(("lora_a", "lora_b")):
                continue
            block, layer, kind = re.fullmatch(
                r"blocks\.(\d+)\.(\w+\.\w+)\.(lora_\w)", name
            ).groups()
            letter = "A" if kind == "lora_a" else "B"
            module = f"base_model.model.model.layers.{block}.{HF_LAYERS[layer]}"
            theirs = f"{module}.lora_{letter}.default.weight"
            p.normal_(0, 0.05)  # B non-zero: the policy differs from the reference
            peft_params[theirs].copy_(p)
            ours[name] = theirs
    assert len(ours) == 2 * 7 * cfg.n_layers
    items = random_items(cfg.vocab_size)
    x, y, _ = collate_pairs(items, None, end_id=2, pad_id=1)
    reference = reference_logprobs(model, x, y)
    with torch.no_grad(), adapters_off(model):  # the base: adapters off is a model without them
        plain = pair_logprobs(model, model, x, y)
    assert torch.equal(reference, plain) and not torch.equal(
        reference, pair_logprobs(model, model, x, y)
    )
    loss, _ = PreferenceObjective(model, BETA)(model, (x, y, reference))
    loss.backward()
    theirs = trainer.compute_loss(trainer.model, trl_inputs(trainer, items))
    theirs.backward()
    assert abs(float(loss) - float(theirs)) <= 1e-6
    for name, their_name in ours.items():
        grad = model.get_parameter(name).grad
        torch.testing.assert_close(grad, peft_params[their_name].grad, rtol=0, atol=1e-6)


def test_beta_near_zero_leaves_the_policy_at_the_reference() -> None:
    """DPO's gradient is beta * sigmoid(-beta * delta) * grad(delta): as beta goes to 0 the loss
    is log 2 and the gradient vanishes in proportion, so gradient steps leave the policy
    where the reference is."""
    torch.manual_seed(0)
    base = new_model(get_preset("gpt-nano"))
    policy = copy.deepcopy(base)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x, y = random_batch(200)
    reference = reference_logprobs(base, x, y)

    def grads(beta: float) -> torch.Tensor:
        policy.zero_grad()
        loss, _ = dpo_loss(pair_logprobs(policy, policy, x, y), reference, beta)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters()]), loss

    small, loss = grads(1e-8)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-7)
    policy.zero_grad()
    logps = pair_logprobs(policy, policy, x, y)
    (0.5 * (logps[:, 1] - logps[:, 0]).mean()).backward()  # beta -> 0: grad / beta
    expected = torch.cat([p.grad.flatten() for p in policy.parameters()])
    torch.testing.assert_close(small / 1e-8, expected, rtol=1e-3, atol=1e-6)
    assert float(small.abs().max()) < 1e-8
    with torch.no_grad():
        before = pair_logprobs(policy, policy, x, y)
        for p, g in zip(
            policy.parameters(), small.split([p.numel() for p in policy.parameters()]), strict=True
        ):
            p.sub_(1.0 * g.view_as(p))  # an SGD step with learning rate 1
        assert float((pair_logprobs(policy, policy, x, y) - before).abs().max()) < 1e-5


# ---- the job on a tiny model ------------------------------------------------------------------

WORDS = ["red", "blue", "tree", "stone", "river", "cloud", "lamp", "door", "bird", "song"]


def synthetic_pairs(n: int) -> list[dict[str, str]]:
    """Instructions with a polite (chosen) and a curt (rejected) answer, as the book's are."""
    g = torch.Generator().manual_seed(7)
    pairs = []
    for _ in range(n):
        a, b = (WORDS[int(k)] for k in torch.randint(len(WORDS), (2,), generator=g))
        pairs.append(
            {
                "instruction": f"Describe the {a} {b}.",
                "input": "",
                "chosen": f"Gladly: the {a} {b} is fine.",
                "rejected": f"Ugh, the {a} {b}. Whatever.",
            }
        )
    return pairs


@pytest.fixture(scope="module")
def instruct_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny language model saved as finetune-instruct saves one (template recorded)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("instruct") / "model"
    return save_model(
        new_model(get_preset("gpt-nano")), folder, {"task": "lm", "template": "alpaca"}
    )


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_json(tmp_path_factory.mktemp("pairs") / "pairs.json", synthetic_pairs(60))


def config(out: Path, base: Path, data: Path, **train) -> PreferenceConfig:
    values = dict(max_steps=12, batch_size=4, lr=3e-3, eval_interval=4, eval_batches=2, seed=SEED)
    return PreferenceConfig.flat(
        out=out, base=str(base), data=data, device="cpu", sample_tokens=4, **{**values, **train}
    )


def test_reward_accuracy_rises_and_the_model_keeps_its_template(
    tmp_path: Path, instruct_model: Path, pairs_file: Path
) -> None:
    results = finetune_preference(config(tmp_path / "run", instruct_model, pairs_file))
    run = tmp_path / "run"
    evals = [
        json.loads(line)
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "preference"
    ]
    margins = [e["val_margin"] for e in evals]
    assert margins == sorted(margins) and margins[0] > 0
    assert results["val_accuracy"] == 1.0 and results["train_accuracy"] == 1.0
    assert results["val_chosen_logp"] > results["val_rejected_logp"]
    assert results["val_loss"] < math.log(2) < 0.7
    for plot in ("loss.png", "rewards.png", "accuracy.png"):
        assert (run / plot).is_file()
    # the policy starts at the reference: its first training loss is log 2
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["kind"] == "train" and first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["template"] == "alpaca" and saved["task"] == "lm"
    llm = load(run, device="cpu")  # respond, chat, serve and GGUF export read the run so
    assert model_prompt_format(llm.metadata, llm.tokenizer).name == "alpaca"


def test_lora_run_resumes_exactly_from_its_saved_reference(
    tmp_path: Path, instruct_model: Path, pairs_file: Path
) -> None:
    lora = {"lora_rank": 4, "lora_alpha": 8.0}
    whole = config(tmp_path / "whole", instruct_model, pairs_file, max_steps=8).replace(**lora)
    finetune_preference(whole)
    split = whole.replace(out=tmp_path / "split")
    assert finetune_preference(split, stop_after=4) == {}
    reference = read_safetensors(split.out / REFERENCE)
    assert set(reference) == {"train", "val"} and not reference["val"].isnan().any()
    finetune_preference(split, resume=True)
    assert torch.equal(
        read_safetensors(split.out / REFERENCE)["train"].nan_to_num(7.0),
        reference["train"].nan_to_num(7.0),
    )
    a = read_safetensors(whole.out / "model" / "model.safetensors")
    b = read_safetensors(split.out / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.endswith("lora_a") for k in a)  # merged


# ---- bad input -------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_leaves_nothing(
    tmp_path: Path, instruct_model: Path, pairs_file: Path
) -> None:
    plain = save_model(new_model(get_preset("gpt-nano")), tmp_path / "plain-model", {"task": "lm"})
    missing = write_json(tmp_path / "missing.json", [{"instruction": "a", "rejected": "b"}])
    same = write_json(
        tmp_path / "same.json", [{"instruction": "a", "chosen": "b", "rejected": "b"}]
    )
    talk = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    chat = write_json(
        tmp_path / "chat.jsonl", [{"prompt": talk, "chosen": "Hello.", "rejected": "What."}]
    )
    cases = {
        "missing": (["--data", str(missing)], f"{missing}: entry 0: field 'chosen' is missing"),
        "same": (["--data", str(same)], f"{same}: entry 0: 'chosen' and 'rejected' are the same"),
        "plain": (["--base", str(plain)], f"{plain}: was not instruction-tuned"),
        "chat": (["--data", str(chat)], f"{chat}: entry 0 is a conversation"),
        "format": (
            ["--prompt-format", "chat"],
            "was instruction-tuned in the alpaca prompt format, not chat",
        ),
    }
    runs = {}
    for name, (args, _) in cases.items():
        flags = {
            "--base": str(instruct_model),
            "--data": str(pairs_file),
            "--out": str(tmp_path / name),
        }
        flags.update(dict(zip(args[::2], args[1::2], strict=True)))
        command = gptlab_command("finetune-preference", *(a for kv in flags.items() for a in kv))
        runs[name] = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=gptlab_env())
    for name, (_, message) in cases.items():
        _, err = runs[name].communicate(timeout=120)
        assert runs[name].returncode == 2, err
        assert err.startswith("gptlab finetune-preference: error: ") and message in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert not (tmp_path / name / "config.json").exists()  # a retry is not refused
