"""Download a file over HTTP so that an interruption never leaves a file that looks complete.

Bytes go to `DEST.part`; a later attempt (a retry, or a rerun after Ctrl-C) asks the server for
the rest with an HTTP Range request and appends. Only when the size is right (the server's
Content-Length / Content-Range, and `expected_size` if given) and the SHA-256 matches (if
given) is the part file fsynced and renamed to DEST. Network errors and 5xx answers are retried
with exponential back-off; a read that stalls longer than `timeout` counts as a network error.
A host name that does not resolve is reported at once: retrying it only makes the user wait.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from pathlib import Path

import httpx
from tqdm.auto import tqdm

from gptlab.errors import GptlabError
from gptlab.io import fsync_dir

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class _Retry(Exception):
    """A failure worth another attempt (network error, server error, short body)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _unresolved_name(exc: BaseException) -> str | None:
    """The resolver's message when `exc` comes from a host name that does not resolve: no
    retry will make it resolve within seconds, so it is reported at once."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return cause.strerror or str(cause)
        cause = cause.__cause__ or cause.__context__
    return None


def _total_size(response: httpx.Response, offset: int) -> int | None:
    """The full size of the remote file, from Content-Range (206) or Content-Length (200)."""
    if response.status_code == 206:
        total = response.headers.get("content-range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


def _fetch(
    client: httpx.Client, url: str, part: Path, expected_size: int | None, progress: bool
) -> None:
    """One attempt: continue `part` from its current size to the end of the remote file."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()  # longer than the file can be: stale, start over
        offset = 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset:  # the part is at least as long as the file
            part.unlink()
            raise _Retry(f"{url}: server refused resuming at byte {offset}; starting over")
        if response.status_code >= 500 or response.status_code == 429:
            raise _Retry(f"{url}: HTTP {response.status_code}")
        if response.status_code not in (200, 206):
            raise GptlabError(f"{url}: HTTP {response.status_code} {response.reason_phrase}")
        if response.status_code == 206:
            start = response.headers.get("content-range", "").removeprefix("bytes ").split("-")[0]
            if start != str(offset):
                raise GptlabError(f"{url}: server resumed at byte {start}, asked for {offset}")
        else:
            offset = 0  # the server ignored the Range header and sends the whole file
        total = _total_size(response, offset)
        if expected_size is not None and total is not None and total != expected_size:
            raise GptlabError(
                f"{url}: size mismatch: the server has {total} bytes, expected {expected_size}"
            )
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            for chunk in response.iter_bytes():  # as it arrives: a cut keeps what came
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Retry(f"{url}: connection closed at byte {size} of {total}")
    if total is not None and size > total:
        part.unlink()
        raise GptlabError(f"{url}: size mismatch: received {size} bytes, the server said {total}")


def download_file(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    expected_size: int | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: bool = True,
    headers: dict[str, str] | None = None,
) -> Path:
    """Download `url` to `dest` (resuming a `dest.part` left by an earlier attempt) and return
    `dest`. An existing `dest` is trusted (it only appears complete) but re-checked against
    `sha256` when one is given. Raises GptlabError naming the URL when it cannot succeed."""
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    host = httpx.URL(url).host
    with httpx.Client(
        timeout=httpx.Timeout(timeout), follow_redirects=True, headers=headers
    ) as client:
        while True:
            before = part.stat().st_size if part.exists() else 0
            try:
                _fetch(client, url, part, expected_size, progress)
                break
            except (_Retry, httpx.TransportError) as exc:
                if (unresolved := _unresolved_name(exc)) is not None:
                    raise GptlabError(
                        f"{url}: cannot reach {host}: the name does not resolve "
                        f"({unresolved}); check the address and the network connection"
                    ) from None
                now = part.stat().st_size if part.exists() else 0
                failures = 0 if now > before else failures + 1  # progress resets the count
                reason = exc if isinstance(exc, _Retry) else f"{exc.__class__.__name__}: {exc}"
                if failures > retries:
                    unreachable = isinstance(exc, httpx.ConnectError)
                    what = f"cannot reach {host}" if unreachable else "download failed"
                    again = f"resume from byte {now}" if now else "try again"
                    raise GptlabError(
                        f"{url}: {what} after {retries} retries ({reason}); rerun to {again}"
                    ) from None
                delay = backoff * 2 ** max(failures - 1, 0)
                log.info("%s: %s; retrying in %.1f s", url, reason, delay)
                time.sleep(delay)
    if expected_size is not None and part.stat().st_size != expected_size:
        size = part.stat().st_size
        part.unlink()
        raise GptlabError(f"{url}: size mismatch: received {size} bytes, expected {expected_size}")
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink()
            raise GptlabError(f"{url}: SHA-256 mismatch: got {actual}, expected {sha256}")
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest
