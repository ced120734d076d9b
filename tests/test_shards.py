import json
from pathlib import Path

import numpy as np
import pytest

from gptlab.cli import main
from gptlab.data import bundled
from gptlab.errors import GptlabError
from gptlab.io import read_utf8
from gptlab.runs import RunDir
from gptlab.shards import (
    MANIFEST,
    RandomWindows,
    ShardStream,
    plan_chunks,
    prepare_data,
    read_manifest,
    verify_shards,
)
from gptlab.tokenizer import EOT_ID, get_tokenizer


@pytest.fixture(scope="module")
def story() -> str:
    with bundled("the-verdict.txt") as p:
        return read_utf8(p)


def expected_tokens(docs: list[str]) -> list[int]:
    out: list[int] = []
    for doc in docs:
        out += [*get_tokenizer().encode_ordinary(doc), EOT_ID]
    return out


def all_tokens(folder: Path) -> list[int]:
    stream = ShardStream(folder)
    return stream.read(0, len(stream)).tolist()


def test_small_chunks_give_exactly_the_tokens_of_whole_documents(tmp_path: Path, story: str):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text(story, encoding="utf-8")
    tricky = "Tabs\t\n\nand  spaces \n x\nÉté\n<|endoftext|> literal\n" * 50
    (src / "sub" / "b.txt").write_text(tricky, encoding="utf-8")
    rows = [{"text": "first doc"}, {"text": story[:3000], "id": 2}, {"text": ""}]
    (src / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", "utf-8")
    m = prepare_data(src, tmp_path / "out", workers=2, chunk_mb=4096 / (1 << 20), progress=False)
    assert len(m["shards"]) > 5  # the story alone is cut into several pieces
    assert m["documents"] == 5
    want = expected_tokens([story, "first doc", story[:3000], "", tricky])
    # Files are taken in sorted path order: a.txt, c.jsonl, sub/b.txt.
    assert all_tokens(tmp_path / "out") == want
    assert m["total_tokens"] == len(want)
    verify_shards(tmp_path / "out")


def test_worker_count_does_not_change_the_tokens(tmp_path: Path, story: str):
    (tmp_path / "s.txt").write_text(story * 3, encoding="utf-8")
    one = prepare_data(tmp_path / "s.txt", tmp_path / "one", workers=1, progress=False)
    two = prepare_data(
        tmp_path / "s.txt", tmp_path / "two", workers=2, chunk_mb=0.01, progress=False
    )
    assert len(two["shards"]) > len(one["shards"])
    assert all_tokens(tmp_path / "one") == all_tokens(tmp_path / "two")
    assert all_tokens(tmp_path / "one") == expected_tokens([story * 3])


def test_cuts_are_only_at_safe_newlines(tmp_path: Path):
    text = ("word " * 300 + "\n") * 20  # every newline follows a space: never safe
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    chunks = plan_chunks([tmp_path / "t.txt"], 100)
    assert len(chunks) == 1
    ok = "abc.\nDef\n\n" * 100
    (tmp_path / "u.txt").write_text(ok, encoding="utf-8")
    pieces = [p for c in plan_chunks([tmp_path / "u.txt"], 100) for p in c]
    data = ok.encode()
    assert len(pieces) > 3
    for p in pieces[:-1]:
        assert data[p.end - 2 : p.end] in (b".\n", b"f\n")
        assert data[p.end : p.end + 1] in (b"a", b"D", b"\n")


def test_bad_inputs_name_file_and_line(tmp_path: Path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n', "utf-8")
    with pytest.raises(GptlabError, match=r"d\.jsonl:2: field 'text' missing"):
        prepare_data(tmp_path / "d.jsonl", tmp_path / "o1", workers=1, progress=False)
    (tmp_path / "e.jsonl").write_text('{"text": "ok"}\n\n{broken\n', "utf-8")
    with pytest.raises(GptlabError, match=r"e\.jsonl:3: not valid JSON"):
        prepare_data(tmp_path / "e.jsonl", tmp_path / "o2", workers=1, progress=False)
    (tmp_path / "f.txt").write_bytes(b"fine\nline two\n\xff\xfe\n")
    with pytest.raises(GptlabError, match=r"f\.txt:3: not valid UTF-8"):
        prepare_data(tmp_path / "f.txt", tmp_path / "o3", workers=1, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptlabError, match=r"no \.txt or \.jsonl"):
        prepare_data(tmp_path / "empty", tmp_path / "o4", progress=False)


def test_corrupt_shards_are_reported(tmp_path: Path, story: str):
    (tmp_path / "s.txt").write_text(story, encoding="utf-8")
    out = tmp_path / "out"
    prepare_data(tmp_path / "s.txt", out, workers=1, progress=False)
    shard = out / read_manifest(out)["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[10] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(GptlabError, match="sha256 differs"):
        verify_shards(out)
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(GptlabError, match=r"shards\[0\].*expected \d+ tokens"):
        ShardStream(out)
    with pytest.raises(GptlabError, match="already holds prepared data"):
        prepare_data(tmp_path / "s.txt", out, progress=False)
    with pytest.raises(GptlabError, match="prepare-data"):
        ShardStream(tmp_path)


def test_stream_reads_across_shard_boundaries(tmp_path: Path, story: str):
    (tmp_path / "s.txt").write_text(story, encoding="utf-8")
    prepare_data(tmp_path / "s.txt", tmp_path / "o", workers=1, chunk_mb=0.005, progress=False)
    stream = ShardStream(tmp_path / "o")
    assert len(stream.maps) > 3
    whole = np.array(expected_tokens([story]))
    for start in (0, int(stream.offsets[1]) - 3, len(stream) - 7):
        assert stream.read(start, 7).tolist() == whole[start : start + 7].tolist()


def test_random_windows_are_deterministic_and_resume_mid_run(tmp_path: Path, story: str):
    (tmp_path / "s.txt").write_text(story, encoding="utf-8")
    prepare_data(tmp_path / "s.txt", tmp_path / "o", workers=1, progress=False)
    stream = ShardStream(tmp_path / "o")
    whole = stream.read(0, len(stream))
    w = RandomWindows(stream, 0, 4000, window=16, batch_size=3, seed=7)
    it = w.iterate(0)
    run = [next(it) for _ in range(6)]
    resumed = w.iterate(4)
    for k in (4, 5):
        x, y = next(resumed)
        assert x.equal(run[k][0]) and y.equal(run[k][1])
    starts = set()
    for x, y in run:
        assert x.shape == (3, 16) and y[:, :-1].equal(x[:, 1:])
        for row in x:
            s = int(
                np.flatnonzero(
                    np.all(
                        np.lib.stride_tricks.sliding_window_view(whole[:4000], 16) == row.numpy(),
                        axis=1,
                    )
                )[0]
            )
            starts.add(s)
    assert len(starts) > 10  # random offsets, not a fixed few
    other = RandomWindows(stream, 0, 4000, window=16, batch_size=3, seed=8)
    assert not next(other.iterate(0))[0].equal(run[0][0])
    evals = list(w.first(2))
    assert len(evals) == 2 and evals[0][0][1].tolist() == whole[16:32].tolist()


def test_cli_prepare_data(tmp_path: Path, story: str, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "s.txt").write_text(story, encoding="utf-8")
    out = tmp_path / "o"
    assert main(["prepare-data", str(tmp_path / "s.txt"), "--out", str(out), "--verify"]) == 0
    assert "tokens in 1 shards" in capsys.readouterr().out
    assert (out / MANIFEST).is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["total_tokens"] == read_manifest(out)["total_tokens"] > 5000
    assert len(RunDir(out).metrics()) == 1  # one record per shard
    assert main(["prepare-data", str(tmp_path / "missing"), "--out", str(out / "x")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
