"""download_file against a real HTTP server on 127.0.0.1 that cuts, stalls and fails."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptlab.download import download_file
from gptlab.errors import GptlabError
from tests.file_server import FileServer, serve
from tests.serve_process import gptlab_command, gptlab_env

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
FAST = {"backoff": 0.01, "timeout": 2.0, "progress": False}


@pytest.fixture
def server() -> Iterator[FileServer]:
    with serve({"model.bin": DATA}) as s:
        yield s


def test_full_download_is_exact_and_leaves_no_part_file(server: FileServer, tmp_path: Path):
    dest = download_file(f"{server.url}/model.bin", tmp_path / "m" / "model.bin", sha256=SHA)
    assert dest.read_bytes() == DATA
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.bin"]
    # A second call trusts the complete file (verified by its hash) and fetches nothing.
    download_file(f"{server.url}/model.bin", dest, sha256=SHA, **FAST)
    assert len(server.requests) == 1


def test_cut_transfer_resumes_with_a_range_request(server: FileServer, tmp_path: Path):
    server.cut_after, server.plan = 120_000, ["cut", "cut"]
    dest = download_file(f"{server.url}/model.bin", tmp_path / "model.bin", SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert [r for _, r in server.requests] == [None, "bytes=120000-", "bytes=240000-"]


def test_interrupted_download_resumes_on_the_next_run(server: FileServer, tmp_path: Path):
    server.cut_after, server.plan = 100_000, ["cut", "503"]
    dest = tmp_path / "model.bin"
    with pytest.raises(GptlabError, match=r"model.bin: download failed .* resume from byte 100000"):
        download_file(f"{server.url}/model.bin", dest, retries=0, **FAST)
    assert not dest.exists()  # a cut connection never leaves a file that looks complete
    assert (tmp_path / "model.bin.part").stat().st_size == 100_000
    download_file(f"{server.url}/model.bin", dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert server.requests[-1][1] == "bytes=100000-"


def test_server_that_ignores_range_restarts_cleanly(server: FileServer, tmp_path: Path):
    server.cut_after, server.plan, server.ignore_range = 50_000, ["cut"], True
    dest = download_file(f"{server.url}/model.bin", tmp_path / "model.bin", SHA, **FAST)
    assert dest.read_bytes() == DATA


def test_404_is_one_line_and_not_retried(server: FileServer, tmp_path: Path):
    with pytest.raises(GptlabError, match=r"/missing.bin: HTTP 404") as err:
        download_file(f"{server.url}/missing.bin", tmp_path / "missing.bin", **FAST)
    assert "\n" not in str(err.value)
    assert len(server.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried_with_backoff(server: FileServer, tmp_path: Path):
    server.plan = ["500", "502"]
    dest = download_file(f"{server.url}/model.bin", tmp_path / "model.bin", SHA, **FAST)
    assert dest.read_bytes() == DATA and len(server.requests) == 3


def test_size_mismatch_is_refused(server: FileServer, tmp_path: Path):
    dest = tmp_path / "model.bin"
    with pytest.raises(GptlabError, match=r"size mismatch: the server has 300000 bytes, expected"):
        download_file(f"{server.url}/model.bin", dest, expected_size=299_999, **FAST)
    assert not dest.exists()


def test_hash_mismatch_is_refused_and_discarded(server: FileServer, tmp_path: Path):
    dest = tmp_path / "model.bin"
    with pytest.raises(GptlabError, match=r"SHA-256 mismatch"):
        download_file(f"{server.url}/model.bin", dest, sha256="0" * 64, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_stalled_server_times_out(server: FileServer, tmp_path: Path):
    server.plan = ["stall", "stall"]
    with pytest.raises(GptlabError, match=r"download failed after 1 retries \(ReadTimeout"):
        download_file(
            f"{server.url}/model.bin",
            tmp_path / "model.bin",
            retries=1,
            backoff=0.01,
            timeout=0.3,
            progress=False,
        )
    assert len(server.requests) == 2
    assert not (tmp_path / "model.bin").exists()


def test_a_host_name_that_does_not_resolve_fails_at_once(tmp_path: Path):
    """`gptlab download` from a name that cannot resolve (.invalid, RFC 6761): one line saying
    the host cannot be reached, without the 31 s of back-off (1 + 2 + 4 + 8 + 16) of retries."""
    args = ["download", "gpt2-small", "--base-url", "http://no-such-host.invalid"]
    start = time.monotonic()
    done = subprocess.run(
        gptlab_command(*args, "--cache-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        env={**gptlab_env(), "TQDM_DISABLE": "1"},
        timeout=120,
    )
    assert time.monotonic() - start < 15
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    url = "http://no-such-host.invalid/124M/checkpoint"
    assert line.startswith(
        f"gptlab download: error: {url}: cannot reach no-such-host.invalid: the name does not "
        "resolve ("
    )
    assert line.endswith("); check the address and the network connection")
    assert "rerun" not in line and "byte" not in line


def test_a_refused_connection_is_retried_then_named(tmp_path: Path):
    with socket.socket() as s:  # a loopback port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.bin"
    with pytest.raises(GptlabError) as err:
        download_file(url, tmp_path / "model.bin", retries=2, **FAST)
    assert re.fullmatch(
        rf"{re.escape(url)}: cannot reach 127\.0\.0\.1 after 2 retries \(ConnectError: .*\); "
        "rerun to try again",
        str(err.value),
    )
    assert list(tmp_path.iterdir()) == []
