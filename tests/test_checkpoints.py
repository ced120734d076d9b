import json
from pathlib import Path

import pytest
import torch

from gptlab.checkpoints import (
    latest_checkpoint,
    load_model_folder,
    load_train_state,
    save_checkpoint,
    save_model,
)
from gptlab.errors import GptlabError
from gptlab.hub import resolve_model
from gptlab.model import GPT

from .conftest import TINY


def test_save_load_roundtrip(tiny_model: GPT, tmp_path: Path) -> None:
    save_model(tiny_model, tmp_path / "m", {"task": "lm"})
    loaded, meta = load_model_folder(tmp_path / "m")
    assert meta["task"] == "lm" and loaded.cfg == TINY
    assert loaded.out_head.weight is loaded.tok_emb.weight
    idx = torch.randint(0, 50257, (2, 9))
    torch.testing.assert_close(loaded(idx), tiny_model(idx), rtol=0, atol=0)
    assert not list((tmp_path / "m").glob("*.tmp"))


def test_resolve_model_resolves_run_folders(tiny_model: GPT, tmp_path: Path) -> None:
    save_model(tiny_model, tmp_path / "run" / "model")
    model, _ = resolve_model(tmp_path / "run")
    torch.testing.assert_close(model.tok_emb.weight, tiny_model.tok_emb.weight)
    with pytest.raises(GptlabError, match="no such model folder, run folder or preset"):
        resolve_model("not-a-model")
    with pytest.raises(GptlabError, match="no model here"):
        resolve_model(tmp_path)


def test_truncated_weights_give_one_clear_error(tiny_model: GPT, tmp_path: Path) -> None:
    save_model(tiny_model, tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(GptlabError, match=r"model.safetensors: cannot read weights"):
        load_model_folder(tmp_path)


def test_config_mismatch_names_the_tensor(tiny_model: GPT, tmp_path: Path) -> None:
    save_model(tiny_model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"]["emb_dim"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptlabError, match=r"tensor tok_emb.weight has shape \(50257, 32\)"):
        load_model_folder(tmp_path)
    cfg["model"]["n_layers"] = 1
    cfg["model"]["emb_dim"] = 32
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptlabError, match="unexpected tensor blocks.1"):
        load_model_folder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(GptlabError, match="config.json: not valid JSON"):
        load_model_folder(tmp_path)


def _steps(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step-*"))


def test_checkpoints_rotate_and_latest_is_complete(tiny_model: GPT, tmp_path: Path) -> None:
    for step in (1, 2, 3):
        state = {"step": step, "rng": torch.get_rng_state()}
        save_checkpoint(tmp_path, step, tiny_model, state, keep=2)
    assert _steps(tmp_path) == ["step-000002", "step-000003"]
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and load_train_state(latest)["step"] == 3
    # A crash mid-save leaves only a .partial folder, which LATEST never names.
    (tmp_path / "checkpoints" / ".step-000004.partial").mkdir()
    assert latest_checkpoint(tmp_path) == latest
    (latest / "train_state.pt").write_bytes(b"garbage")
    with pytest.raises(GptlabError, match="cannot read training state"):
        load_train_state(latest)


def test_keep_one_leaves_only_what_latest_names(tiny_model: GPT, tmp_path: Path) -> None:
    for step in (1, 2):
        save_checkpoint(tmp_path, step, tiny_model, {"step": step}, keep=3)
    # A folder of a later step that LATEST never named (killed between rename and LATEST),
    # then a resume from step 2 that saves step 3: only step 3 is left, and LATEST names it.
    (tmp_path / "checkpoints" / "step-000004").mkdir()
    save_checkpoint(tmp_path, 3, tiny_model, {"step": 3}, keep=1)
    assert _steps(tmp_path) == ["step-000003"]
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and load_train_state(latest)["step"] == 3
    with pytest.raises(GptlabError, match="keep at least the latest checkpoint"):
        save_checkpoint(tmp_path, 4, tiny_model, {"step": 4}, keep=0)
    assert _steps(tmp_path) == ["step-000003"]
