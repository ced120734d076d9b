"""gptlab.io: atomic writes leave no partial file, and reads fail in one line naming the file."""

from pathlib import Path

import pytest

from gptlab.errors import GptlabError
from gptlab.io import atomic_write, atomic_write_text, read_json, read_json_object


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "good")

    class Boom(Exception):
        pass

    def failing(p: Path) -> None:
        p.write_text("partial")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(target, failing)
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_json_reads_fail_in_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    with pytest.raises(GptlabError, match=r"x\.json: results file not found$"):
        read_json(path, "results file")
    path.write_bytes(b'{"a":\n "\xff"}')
    with pytest.raises(GptlabError, match=r"x\.json:2: not valid UTF-8 \(byte 8\)$"):
        read_json(path)
    path.write_text('{"a": 1,\n "b": }')
    with pytest.raises(GptlabError, match=r"x\.json: not valid JSON \(line 2: Expecting value\)$"):
        read_json(path)
    path.write_text("[1, 2]")
    assert read_json(path) == [1, 2]
    with pytest.raises(GptlabError, match=r"x\.json: expected a JSON object, got a list$"):
        read_json_object(path)
    with pytest.raises(GptlabError, match=r"is a folder, expected a file$"):
        read_json(tmp_path)
