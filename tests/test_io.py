"""gptlab.io: atomic writes leave no partial file, and reads fail in one line naming the file."""

import os
import stat
from pathlib import Path

import pytest

from gptlab.errors import GptlabError
from gptlab.io import (
    append_jsonl,
    atomic_write,
    atomic_write_text,
    read_json,
    read_json_object,
    read_jsonl,
)


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


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_get_the_permissions_the_umask_gives(tmp_path: Path, umask: int) -> None:
    """config.json, results.json, model.safetensors and a user's --output CSV all go through
    atomic_write: each must get what any new file gets (0644 under umask 022), not 0600."""
    import torch

    from gptlab.checkpoints import save_model
    from gptlab.config import GPTConfig
    from gptlab.model import GPT

    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "out.csv", "text,label\n")
        atomic_write_text(tmp_path / "out.csv", "text,label,probability\n")  # replaced
        torch.manual_seed(0)
        tiny = GPT(GPTConfig(vocab_size=8, context_length=4, emb_dim=4, n_layers=1, n_heads=1))
        folder = save_model(tiny, tmp_path / "model")
    finally:
        os.umask(previous)
    for path in (tmp_path / "out.csv", folder / "config.json", folder / "model.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out.csv"]  # no temporaries


def test_jsonl_journal_survives_a_torn_last_line_and_names_a_bad_middle_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.jsonl"
    assert read_jsonl(path) == []  # not started yet
    append_jsonl(path, {"step": 1})
    append_jsonl(path, {"step": 2, "text": "é"})
    # A crash mid-write: the last record cut short, in the middle of a two-byte character.
    whole = path.read_bytes()
    cut = whole + '{"step": 3, "text": "é'.encode()[:-1]
    path.write_bytes(cut)
    assert read_jsonl(path) == [{"step": 1}, {"step": 2, "text": "é"}]
    # The next append drops the cut line, so it never ends up between two whole ones.
    append_jsonl(path, {"step": 3})
    assert path.read_bytes() == whole + b'{"step": 3}\n'
    assert read_jsonl(path) == [{"step": 1}, {"step": 2, "text": "é"}, {"step": 3}]
    # A whole record that only lost its newline is kept, and ended before the next one.
    path.write_bytes(whole + b'{"step": 3}')
    assert read_jsonl(path)[-1] == {"step": 3}
    append_jsonl(path, {"step": 4})
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3, 4]
    # A bad line before the last is no crash's doing: one line naming the file and line.
    path.write_bytes(b'{"step": 1}\n{"step": 2,\n\n{"step": 3}\n')
    with pytest.raises(GptlabError, match=r"j\.jsonl:2: not a JSON line \(Expecting"):
        read_jsonl(path)
    path.write_bytes(b'{"step": 1}\n"\xff"\n{"step": 3}\n')
    with pytest.raises(GptlabError, match=r"j\.jsonl:2: not a JSON line \(not valid UTF-8\)"):
        read_jsonl(path)
