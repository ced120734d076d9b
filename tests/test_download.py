"""download_file against a real HTTP server on 127.0.0.1 that cuts, stalls and fails."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptlab.download import download_file
from gptlab.errors import GptlabError
from tests.file_server import FileServer, serve

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
