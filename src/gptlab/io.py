"""Files, safely: atomic writes, and reads that fail in one line naming the file.

Every file gptlab writes goes through `atomic_write` (temporary file, fsync, rename), so a
reader sees the old file or the complete new one, never a partial one; its permissions are
those the umask gives a new file. Every text or JSON file it reads goes through `read_utf8` /
`read_json`, so a missing file, bad bytes or bad JSON gives one `GptlabError` with the path
(and line) instead of a traceback.

Journals (metrics.jsonl, respond's progress, the judge's scores) are JSON Lines appended one
durable record at a time (`append_jsonl`) and read back by `read_jsonl`, which tolerates the
one thing a crash can leave: a last line cut short.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a rename is only on disk once its folder is)."""
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_temporary(path: Path) -> tuple[Path, int]:
    """(a new empty file `.NAME.XXXXXXXX.tmp` beside `path`, its permission bits): created with
    mode 0666, so the process's umask decides them as for any file the user creates
    (tempfile.mkstemp would make every written file 0600), without changing the umask."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write `path` through `write(tmp_path)`, fsync, then rename over the target, so readers
    see either the old file or the complete new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path, mode = _new_temporary(path)
    try:
        write(tmp_path)
        os.chmod(tmp_path, mode)  # a writer may replace the file (safetensors makes it 0600)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise GptlabError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise GptlabError(f"{path}: is a folder, expected a file") from None
    except OSError as exc:
        raise GptlabError(f"{path}: cannot read ({exc.strerror})") from None


def read_utf8(path: Path, what: str = "file") -> str:
    """Read a text file, with one clear error for a missing or non-UTF-8 file; `what` names
    the file in the not-found message (e.g. "model config")."""
    data = _read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise GptlabError(f"{path}:{line}: not valid UTF-8 (byte {exc.start})") from None


def read_json(path: Path, what: str = "JSON file") -> Any:
    """The parsed contents of a JSON file; a missing, non-UTF-8 or malformed file is one
    GptlabError naming the path (and the line of a syntax error)."""
    text = read_utf8(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GptlabError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def read_json_object(path: Path, what: str = "JSON file") -> dict[str, Any]:
    """`read_json` for files whose top level must be an object (configs, results, manifests)."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise GptlabError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    return data


def append_line(path: str | Path, line: str, whole: Callable[[bytes], bool] | None = None) -> None:
    """Append one line in a single write and fsync it: a kill leaves the file with or without
    it, at worst with the line cut short (no newline). Such a last line, left by an earlier
    kill, is cut off first, or ended where `whole(it)` says it is complete, so every line but
    the last is always whole."""
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        end = os.fstat(fd).st_size
        if end and os.pread(fd, 1, end - 1) != b"\n":
            start = Path(path).read_bytes().rfind(b"\n") + 1
            if whole is not None and whole(os.pread(fd, end - start, start)):
                data = b"\n" + data
            else:
                os.ftruncate(fd, start)
        while data:  # one write unless the disk is nearly full
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_line(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:  # JSONDecodeError, or UnicodeDecodeError for a cut character
        return False
    return True


def append_jsonl(path: str | Path, record: Any) -> None:
    """Append `record` to a JSON Lines journal as one durable line (see `append_line`)."""
    append_line(path, json.dumps(record), whole=_json_line)


def read_jsonl(path: str | Path) -> list[Any]:
    """The records of a JSON Lines journal written by `append_jsonl` (none when it does not
    exist yet). A last line without its newline that is not whole JSON was cut by a crash
    mid-write and is skipped; a bad line anywhere else is one GptlabError naming the file and
    the line (blank lines are skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    *lines, last = _read_bytes(path, "journal").split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not valid UTF-8"
            raise GptlabError(
                f"{path}:{number}: not a JSON line ({reason}); delete or fix that line"
            ) from None
    if last.strip():
        with contextlib.suppress(ValueError):
            records.append(json.loads(last))
    return records
