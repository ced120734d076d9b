"""Hugging Face repositories by id (`--model owner/name`, `gptlab download owner/name`) against
a real HTTP server on 127.0.0.1 that answers like the Hub: its file list with sizes and LFS
hashes, then each file, resumable. A sharded Llama saved by transformers comes back to
transformers' logits with its tokenizer; pickled weights are never fetched; a cut transfer
resumes; a wrong hash, a repository without safetensors, and a typo'd local path are each one
line, and an incomplete download never looks complete."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from gptlab.errors import GptlabError
from gptlab.hub import MANIFEST, ensure_hf_repo, resolve_with_tokenizer
from tests.file_server import FileServer, serve
from tests.serve_process import gptlab_command, gptlab_env
from tests.test_llama import CONFIGS, hf_model

REPO = "tiny-org/tiny-llama"
CFG = CONFIGS["llama3-untied"].replace(vocab_size=320)  # room for 256 bytes + merges
TEXTS = ["the cat sat on the mat", "a dog ran to the park", "the bird sang at dawn"]


def tokenizer_json(vocab_size: int) -> bytes:
    """A small byte-level BPE trained here, as a Hugging Face tokenizer.json."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS * 20, trainer)
    return tok.to_str().encode()


def listing(files: dict[str, bytes]) -> dict[str, object]:
    """The Hub's answer to /api/models/REPO/revision/main?blobs=true."""
    siblings = []
    for name, data in files.items():
        entry: dict[str, object] = {"rfilename": name, "size": len(data)}
        if name.endswith((".safetensors", ".bin")):
            entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        siblings.append(entry)
    return {"id": REPO, "siblings": siblings}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], torch.nn.Module]:
    """The files of a sharded tiny Llama repository and the transformers model they hold."""
    folder = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    hf = hf_model(CFG)
    hf.save_pretrained(folder, max_shard_size="40KB")
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    files["tokenizer.json"] = tokenizer_json(CFG.vocab_size)
    files["pytorch_model.bin"] = b"a pickle gptlab must never fetch"
    return files, hf


def hub_files(files: dict[str, bytes], revision: str = "main") -> dict[str, bytes]:
    served = {f"{REPO}/resolve/{revision}/{name}": data for name, data in files.items()}
    served[f"api/models/{REPO}/revision/{revision}"] = json.dumps(listing(files)).encode()
    return served


@pytest.fixture
def hub(repo: tuple[dict[str, bytes], torch.nn.Module]) -> Iterator[FileServer]:
    with serve(hub_files(repo[0])) as s:
        yield s


@pytest.fixture
def cache(tmp_path: Path, hub: FileServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.chdir(tmp_path)  # a relative "tiny-org/..." must not exist as a folder
    return tmp_path / "cache"


@torch.no_grad()
def test_repository_id_downloads_once_and_reads_to_transformers_logits(
    repo: tuple[dict[str, bytes], torch.nn.Module], hub: FileServer, cache: Path
) -> None:
    files, hf = repo
    shards = sorted(n for n in files if n.startswith("model-"))
    assert len(shards) > 2
    model, meta, tok = resolve_with_tokenizer(REPO)
    folder = cache / "hf" / REPO / "main"
    assert meta["source"] == str(folder)
    x = torch.tensor([tok.encode(t) for t in TEXTS[:1]])
    assert x.shape[1] > 2
    assert (model(x) - hf(x).logits).abs().max().item() < 1e-4
    assert (
        tok.encode(TEXTS[1])
        == Tokenizer.from_str(files["tokenizer.json"].decode()).encode(TEXTS[1]).ids
    )
    fetched = sorted(p.name for p in folder.iterdir())
    assert "pytorch_model.bin" not in fetched and not [n for n in fetched if n.endswith(".part")]
    assert set(shards) <= set(fetched) and MANIFEST in fetched
    for name in shards:
        assert (folder / name).read_bytes() == files[name]
    asked = len(hub.requests)
    resolve_with_tokenizer(REPO)  # complete: read from the cache without asking the server
    assert len(hub.requests) == asked


def test_a_cut_transfer_resumes_and_a_wrong_hash_leaves_nothing_complete(
    repo: tuple[dict[str, bytes], torch.nn.Module], hub: FileServer, cache: Path
) -> None:
    files, _ = repo
    hub.plan, hub.cut_after = ["ok", "ok", "cut"], 100  # list, config.json, then a cut
    folder = ensure_hf_repo(REPO)
    assert (folder / MANIFEST).is_file()
    ranges = [r for _, r in hub.requests if r]
    assert ranges == ["bytes=100-"]  # the cut file resumed where it stopped
    bad = dict(files)
    shard = sorted(n for n in files if n.startswith("model-"))[0]
    served = hub_files(files, "v2")
    served[f"{REPO}/resolve/v2/{shard}"] = bad[shard][:-4] + b"oops"  # same size, other hash
    hub.files.update(served)
    with pytest.raises(GptlabError, match=f"{shard}: SHA-256 mismatch") as err:
        ensure_hf_repo(REPO, revision="v2", base_url=hub.url)
    assert "\n" not in str(err.value)
    v2 = cache / "hf" / REPO / "v2"
    assert not (v2 / MANIFEST).exists() and not (v2 / shard).exists()


def test_bad_repositories_and_paths_are_one_line(
    repo: tuple[dict[str, bytes], torch.nn.Module], hub: FileServer, cache: Path, tmp_path: Path
) -> None:
    pickled = {"config.json": repo[0]["config.json"], "pytorch_model.bin": b"pickle"}
    hub.files.update(hub_files(pickled, "pickled"))
    with pytest.raises(GptlabError, match="no model.safetensors or model.safetensors.index.json"):
        ensure_hf_repo(REPO, revision="pickled")
    with pytest.raises(GptlabError, match="HTTP 404") as err:
        resolve_with_tokenizer("tiny-org/no-such-model")
    assert str(err.value).startswith("tiny-org/no-such-model: no such file or folder; as a Hug")
    (tmp_path / "runs").mkdir()
    asked = len(hub.requests)
    with pytest.raises(GptlabError, match="runs/typo: no such model folder"):
        resolve_with_tokenizer("runs/typo")  # a local path's folder exists: not a download
    assert len(hub.requests) == asked


def test_download_command(repo: tuple[dict[str, bytes], torch.nn.Module], hub: FileServer,
                          tmp_path: Path) -> None:  # fmt: skip
    env = {**gptlab_env(), "GPTLAB_CACHE": str(tmp_path / "c"), "HF_ENDPOINT": hub.url}
    run = subprocess.run(
        [*gptlab_command(), "download", REPO], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{REPO}: {tmp_path / 'c' / 'hf' / REPO / 'main'}"
    bad = subprocess.run(
        [*gptlab_command(), "download", "not a name"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "not a GPT-2 size" in bad.stderr and os.path.isdir(tmp_path / "c")
