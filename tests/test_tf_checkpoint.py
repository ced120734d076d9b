"""The TensorFlow checkpoint reader, against a checkpoint TensorFlow itself wrote
(tests/fixtures/tf_gpt2, made by scripts/make_tf_fixture.py), and broken copies of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from gptlab.errors import GptlabError
from gptlab.formats.tf_checkpoint import TFCheckpoint

FIXTURE = Path(__file__).parent / "fixtures" / "tf_gpt2"
SHARD = "model.ckpt.data-00000-of-00001"


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_every_tensor_matches_what_tensorflow_wrote():
    expected = np.load(FIXTURE / "values.npz")
    ckpt = TFCheckpoint(FIXTURE / "model.ckpt")
    assert sorted(ckpt.entries) == sorted(expected.files)
    assert ckpt.num_shards == 1
    for name in expected.files:
        entry = ckpt.entries[name]
        assert entry.dtype_name == "float32"
        assert entry.shape == expected[name].shape
        value = ckpt.read(name)
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, expected[name])
    assert ckpt.entries["model/h1/mlp/c_fc/w"].shape == (1, 32, 128)


def test_tensors_are_read_only_views_of_the_mapped_shard():
    value = TFCheckpoint(FIXTURE / "model.ckpt.index").read("model/wte")
    assert not value.flags.writeable and not value.flags.owndata


def test_missing_index(tmp_path: Path):
    with pytest.raises(GptlabError, match=r"nope\.ckpt\.index: checkpoint index not found"):
        TFCheckpoint(tmp_path / "nope.ckpt")


def test_unknown_variable_is_named(copy: Path):
    with pytest.raises(GptlabError, match=r"model.ckpt.index: no variable model/h9/ln_1/g"):
        TFCheckpoint(copy / "model.ckpt").read("model/h9/ln_1/g")


def test_corrupt_index_fails_its_block_crc(copy: Path):
    index = copy / "model.ckpt.index"
    data = bytearray(index.read_bytes())
    data[20] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(
        GptlabError,
        match=r"model.ckpt.index: not a TensorFlow checkpoint index "
        r"\(CRC mismatch in the block at byte 0\)",
    ):
        TFCheckpoint(copy / "model.ckpt")


def test_not_an_index_at_all(copy: Path):
    (copy / "model.ckpt.index").write_bytes(b"{}" * 40)
    with pytest.raises(GptlabError, match=r"not a TensorFlow checkpoint index \(bad table magic"):
        TFCheckpoint(copy / "model.ckpt")


def test_flipped_byte_fails_that_tensors_crc(copy: Path):
    ckpt = TFCheckpoint(copy / "model.ckpt")
    entry = ckpt.entries["model/h0/attn/c_proj/w"]
    shard = copy / SHARD
    data = bytearray(shard.read_bytes())
    data[entry.offset + 17] ^= 0x01
    shard.write_bytes(bytes(data))
    ckpt = TFCheckpoint(copy / "model.ckpt")
    with pytest.raises(
        GptlabError,
        match=rf"{SHARD}: tensor model/h0/attn/c_proj/w fails its "
        "CRC32C check",
    ):
        ckpt.read("model/h0/attn/c_proj/w")
    ckpt.read("model/h0/attn/c_attn/w")  # the others are intact
    # Without the check the flip goes unnoticed: the CRC is what catches it.
    assert ckpt.read("model/h0/attn/c_proj/w", verify=False).shape == (1, 32, 32)


def test_truncated_shard_names_the_first_tensor_past_the_end(copy: Path):
    shard = copy / SHARD
    ckpt = TFCheckpoint(copy / "model.ckpt")
    last = max(ckpt.entries.values(), key=lambda e: e.offset)
    shard.write_bytes(shard.read_bytes()[: last.offset + 10])
    ckpt = TFCheckpoint(copy / "model.ckpt")
    with pytest.raises(
        GptlabError,
        match=rf"{SHARD}: tensor {last.name} ends at byte "
        rf"{last.offset + last.size}, past the end .* the shard is truncated",
    ):
        ckpt.read(last.name)


def test_missing_shard(copy: Path):
    (copy / SHARD).unlink()
    with pytest.raises(GptlabError, match=rf"{SHARD}: checkpoint data shard not found"):
        TFCheckpoint(copy / "model.ckpt").read("model/wte")
