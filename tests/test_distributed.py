"""Data-parallel training with torchrun: 2 CPU processes (gloo) against 1 process."""

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlab.checkpoints import read_safetensors, save_model
from gptlab.cli import main
from gptlab.config import get_preset
from gptlab.data import bundled
from gptlab.distributed import Dist, rows
from gptlab.errors import GptlabError
from gptlab.io import read_utf8
from gptlab.jobs.pretrain import pretrain
from gptlab.model import GPT
from gptlab.runs import RunDir
from gptlab.settings import PretrainConfig
from gptlab.shards import prepare_data

SRC = Path(__file__).resolve().parents[1] / "src"
ARGS = dict(preset="gpt-nano", batch_size=4, max_steps=4, eval_interval=2, context=32)
ARGS.update(dropout=0.0, lr=1e-3, sample_tokens=4, eval_batches=2, device="cpu", grad_accum=2)
ARGS.update(keep_checkpoints=2, checkpoint_minutes=0)  # the tests resume the step-2 checkpoint


def cli_args(data: Path, out: Path) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in ARGS.items() if k != "sample_tokens"]
    return ["pretrain", f"--data-dir={data}", f"--out={out}", *flags]


def torchrun(n: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={n}", "-m", "gptlab", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def tail(proc: subprocess.CompletedProcess[str]) -> str:
    """The end of a failed run's stderr without its progress bars."""
    lines = re.split(r"[\r\n]+", proc.stderr)
    kept = [line for line in lines if "step/s" not in line and "s/step" not in line]
    return "\n".join(kept)[-3000:]


def weights(run: Path, sub: str = "model") -> dict[str, torch.Tensor]:
    return read_safetensors(run / sub / "model.safetensors")


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("shards")
    with bundled("the-verdict.txt") as p:
        (tmp / "story.txt").write_text(read_utf8(p), encoding="utf-8")
    prepare_data(tmp / "story.txt", tmp / "data", workers=1, progress=False)
    return tmp / "data"


@pytest.fixture(scope="module")
def reference(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    pretrain(PretrainConfig.flat(out=out, data_dir=shards, **ARGS))
    return out


def test_rows_split_a_global_batch_evenly():
    x = torch.arange(12).view(6, 2)
    parts = [rows((x, {"y": x + 1}), Dist(r, 3)) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(parts[2][1]["y"], x[4:6] + 1)
    with pytest.raises(GptlabError, match="not divisible by the 4 processes"):
        rows(x, Dist(0, 4))


@pytest.mark.slow
def test_two_processes_match_one_and_their_checkpoint_resumes_in_one(
    shards: Path, reference: Path, tmp_path: Path
):
    two = tmp_path / "two"
    proc = torchrun(2, cli_args(shards, two))
    assert proc.returncode == 0, tail(proc)
    assert proc.stdout.count("done: 4 steps") == 1  # rank 0 alone reports
    assert max_diff(weights(two), weights(reference)) < 1e-6
    records = RunDir(two).metrics()
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    ref_losses = [r["loss"] for r in RunDir(reference).metrics() if r["kind"] == "train"]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses == pytest.approx(ref_losses, abs=1e-5)

    # The 2-process checkpoint at step 2, resumed by a single process, ends where 1 process does.
    half = tmp_path / "half"
    shutil.copytree(two, half)
    shutil.rmtree(half / "model")
    (half / "results.json").unlink()
    shutil.rmtree(half / "checkpoints" / "step-000004")
    (half / "checkpoints" / "LATEST").write_text("step-000002\n")
    pretrain(PretrainConfig.flat(out=half, data_dir=shards, **ARGS), resume=True)
    assert max_diff(weights(half), weights(reference)) < 1e-6
    assert (half / "results.json").is_file()


@pytest.mark.slow
def test_fsdp_matches_one_process(shards: Path, reference: Path, tmp_path: Path):
    out = tmp_path / "fsdp"
    proc = torchrun(2, [*cli_args(shards, out), "--fsdp"])
    assert proc.returncode == 0, tail(proc)
    assert max_diff(weights(out), weights(reference)) < 1e-6
    # Its checkpoint (full weights, name-keyed optimizer state) resumes in one process.
    shutil.rmtree(out / "model")
    (out / "results.json").unlink()
    shutil.rmtree(out / "checkpoints" / "step-000004")
    (out / "checkpoints" / "LATEST").write_text("step-000002\n")
    pretrain(PretrainConfig.flat(out=out, data_dir=shards, **ARGS), resume=True)
    assert max_diff(weights(out), weights(reference)) < 1e-6


@pytest.mark.slow
def test_fsdp_trains_a_llama_as_one_process_does(shards: Path, tmp_path: Path):
    """FSDP shards a Llama-family model block by block, as it does GPT-2 (the same `blocks`)."""
    args = {**ARGS, "preset": "llama-micro"}
    one = tmp_path / "one"
    pretrain(PretrainConfig.flat(out=one, data_dir=shards, **args))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in args.items() if k != "sample_tokens"]
    proc = torchrun(2, ["pretrain", f"--data-dir={shards}", f"--out={tmp_path / 'two'}", *flags,
                        "--fsdp"])  # fmt: skip
    assert proc.returncode == 0, tail(proc)
    assert "blocks.0.attn.q.weight" in weights(one)
    # Summation order differs across processes; after 4 Adam steps the largest difference was
    # 9.4e-6 (blocks.1.ff.down), the same under DDP as under FSDP (the two agree within 1e-8).
    assert max_diff(weights(tmp_path / "two"), weights(one)) < 5e-5


@pytest.mark.slow
def test_batch_must_split_across_processes(tmp_path: Path):
    proc = torchrun(2, ["pretrain", "--preset=gpt-nano", "--batch-size=3", f"--out={tmp_path}"])
    assert proc.returncode != 0
    assert "gptlab pretrain: error: --batch-size 3 (the global batch) is not divisible" in (
        proc.stderr
    )
    assert "gptlab/pretrain.py" not in proc.stderr  # a one-line error, no traceback of ours


@pytest.mark.slow
def test_finetune_instruct_two_processes_match_one(tmp_path: Path):
    """Masked prompts leave each row a different number of targets: the 2-process loss must
    still be the mean over the global batch's targets, so the weights equal 1 process's."""
    torch.manual_seed(0)
    base = save_model(GPT(get_preset("gpt-nano").replace(drop_rate=0.0)), tmp_path / "base", {})
    flags = [f"--base={base}", "--batch-size=4", "--max-steps=3", "--grad-accum=2"]
    flags += ["--eval-interval=3", "--eval-batches=1", "--lr=1e-3", "--device=cpu"]
    flags += ["--max-length=64", "--mask-prompt", "--group-by-length"]
    assert main(["finetune-instruct", *flags, f"--out={tmp_path / 'one'}"]) == 0
    proc = torchrun(2, ["finetune-instruct", *flags, f"--out={tmp_path / 'two'}"])
    assert proc.returncode == 0, tail(proc)
    assert proc.stdout.count("done: 3 steps") == 1  # rank 0 alone reports
    # Summation order differs across processes (about 1e-6 after Adam); averaging the two
    # processes' per-row-mean losses instead would be off by about 4e-3 here.
    assert max_diff(weights(tmp_path / "two"), weights(tmp_path / "one")) < 1e-5
    assert (tmp_path / "two" / "test.json").read_bytes() == (
        tmp_path / "one" / "test.json"
    ).read_bytes()


@pytest.mark.slow
def test_finetune_classifier_two_processes_match_one(tmp_path: Path):
    data = tmp_path / "toy.tsv"
    words = {"good": "great lovely super nice", "bad": "awful terrible poor sad"}
    rows_ = [f"{label}\t{' '.join(ws.split()[: 1 + i % 4])}" for i in range(40)
             for label, ws in words.items()]  # fmt: skip
    data.write_text("\n".join(rows_) + "\n", encoding="utf-8")
    flags = ["--base=random", "--preset=gpt-nano", f"--data={data}", "--epochs=2"]
    flags += ["--batch-size=4", "--lr=3e-3", "--trainable=all", "--dropout=0", "--device=cpu"]
    assert main(["finetune-classifier", *flags, f"--out={tmp_path / 'one'}"]) == 0
    proc = torchrun(2, ["finetune-classifier", *flags, f"--out={tmp_path / 'two'}"])
    assert proc.returncode == 0, tail(proc)
    assert proc.stdout.count("test accuracy") == 1  # rank 0 alone reports
    one, two = RunDir(tmp_path / "one").metrics(), RunDir(tmp_path / "two").metrics()
    for kind, key in (("train", "loss"), ("eval", "val_loss")):
        a, b = ([r[key] for r in m if r["kind"] == kind] for m in (one, two))
        assert len(a) == len(b) == 2 and a == pytest.approx(b, abs=1e-6)
    accuracy = [[r["val_acc"] for r in m if r["kind"] == "accuracy"] for m in (one, two)]
    assert accuracy[0] == accuracy[1] and len(accuracy[0]) == 2
    # 28 Adam steps near convergence amplify summation-order differences in near-zero
    # gradients (about 2e-4 seen), so the weights are compared more loosely than the losses.
    assert max_diff(weights(tmp_path / "two"), weights(tmp_path / "one")) < 1e-3


def test_contiguous_optimizer_state_resumes_in_the_parameters_layout():
    """A state written under FSDP is contiguous; fused AdamW would mis-update an input-major
    weight (a transposed view, as a Hugging Face file gives) with it unless loading lays it
    out like the parameters."""
    from gptlab.distributed import load_optimizer_state, optimizer_state
    from gptlab.training import TrainConfig, make_optimizer

    torch.manual_seed(0)
    model = GPT(get_preset("gpt-nano"))
    twin = GPT(get_preset("gpt-nano"))
    twin.load_state_dict(model.state_dict())
    for m in (model, twin):
        w = m.blocks[0].attn.qkv.weight
        w.data = w.data.t().contiguous().t()
    tc = TrainConfig.of(max_steps=4, lr=1e-2)
    opt = make_optimizer(model, tc, torch.device("cpu"))
    x = torch.randint(0, 50257, (2, 16))

    def step(m: GPT, o: torch.optim.Optimizer) -> None:
        m(x, targets=x).backward()
        o.step()
        o.zero_grad()

    step(model, opt)
    state = copy.deepcopy(optimizer_state(model, opt))  # as read back from a file
    for moments in state["state"].values():
        for k, v in moments.items():
            if v.dim() == 2:
                moments[k] = v.contiguous()
    twin.load_state_dict(model.state_dict())
    twin_opt = make_optimizer(twin, tc, torch.device("cpu"))
    load_optimizer_state(twin, twin_opt, state)
    qkv = twin.blocks[0].attn.qkv.weight
    assert twin_opt.state[qkv]["exp_avg"].stride() == qkv.stride() == (1, qkv.shape[0])
    step(model, opt)
    step(twin, twin_opt)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
