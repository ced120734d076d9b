"""Read TensorFlow checkpoints (the V2 "tensor bundle" format) without TensorFlow.

A checkpoint `PREFIX` is `PREFIX.index` plus data shards `PREFIX.data-NNNNN-of-MMMMM`. The index
is a LevelDB-style SSTable: a 48-byte footer points at an index block, whose entries point at
data blocks; each block is prefix-compressed key/value entries followed by a restart array and a
5-byte trailer (compression type, masked CRC32C). Keys are variable names, except the empty key,
whose value is a BundleHeaderProto; every other value is a BundleEntryProto (dtype, shape,
shard, offset, size, masked CRC32C of the tensor's bytes), decoded here by a dozen lines of
protobuf wire-format parsing instead of a protobuf dependency.

Shards are memory-mapped, so reading a tensor costs no copy until it is used, and each tensor's
CRC32C is checked before it is returned.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

from gptlab.errors import GptlabError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5
CRC_MASK_DELTA = 0xA282EAD8

# TensorFlow's DataType enum values -> numpy dtypes (strings and resources are not readable).
DTYPES = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("i1"),
    9: np.dtype("<i8"),
    10: np.dtype("?"),
    17: np.dtype("<u2"),
    19: np.dtype("<f2"),
    22: np.dtype("<u4"),
    23: np.dtype("<u8"),
}
DTYPE_NAMES = {7: "string", 14: "bfloat16", 20: "resource", 21: "variant"}


def unmask_crc(masked: int) -> int:
    """LevelDB and TensorFlow store CRCs masked (rotated and offset); undo that."""
    rot = (masked - CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("varint runs past the end of its buffer")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _proto_fields(buf: bytes | memoryview) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a protobuf message: ints for varint and fixed fields,
    bytes for length-delimited ones (sub-messages, strings, packed arrays)."""
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value = bytes(buf[pos : pos + length])
            pos += length
        elif wire == 5:
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("protobuf field runs past the end of its message")
        fields.append((number, value))
    return fields


@dataclass(frozen=True)
class TensorEntry:
    """Where one variable lives: BundleEntryProto, decoded."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int  # unmasked
    sliced: bool

    @property
    def dtype_name(self) -> str:
        if self.dtype in DTYPES:
            return str(DTYPES[self.dtype])
        return DTYPE_NAMES.get(self.dtype, f"dtype#{self.dtype}")


def _decode_entry(name: str, value: bytes) -> TensorEntry:
    f = dict.fromkeys(("dtype", "shard", "offset", "size", "crc"), 0)
    shape: list[int] = []
    sliced = False
    for number, v in _proto_fields(value):
        if number == 2 and isinstance(v, bytes):  # TensorShapeProto
            for dim_number, dim in _proto_fields(v):
                if dim_number == 2 and isinstance(dim, bytes):  # Dim {size, name}
                    shape.append(next((s for n, s in _proto_fields(dim) if n == 1), 0))
        elif number == 7:  # slices of a partitioned variable
            sliced = True
        elif number in (1, 3, 4, 5, 6) and isinstance(v, int):
            f[{1: "dtype", 3: "shard", 4: "offset", 5: "size", 6: "crc"}[number]] = v
    return TensorEntry(
        name=name,
        dtype=f["dtype"],
        shape=tuple(int(s) for s in shape),
        shard=f["shard"],
        offset=f["offset"],
        size=f["size"],
        crc32c=unmask_crc(f["crc"]),
        sliced=sliced,
    )


class TFCheckpoint:
    """The variables of a TensorFlow V2 checkpoint: `entries` by name, `read(name)` a tensor."""

    def __init__(self, prefix: str | Path) -> None:
        prefix = str(prefix)
        for suffix in (".index", ".data-00000-of-00001"):  # accept a file name for the prefix
            prefix = prefix.removesuffix(suffix)
        self.prefix = Path(prefix)
        self.index_path = Path(prefix + ".index")
        try:
            index = self.index_path.read_bytes()
        except FileNotFoundError:
            raise GptlabError(f"{self.index_path}: checkpoint index not found") from None
        except OSError as exc:
            raise GptlabError(f"{self.index_path}: cannot read ({exc.strerror})") from None
        try:
            header, self.entries = self._parse_index(index)
        except (ValueError, struct.error, IndexError) as exc:
            raise GptlabError(
                f"{self.index_path}: not a TensorFlow checkpoint index ({exc})"
            ) from None
        self.num_shards = header.get(1, 1)
        if header.get(2, 0) != 0:
            raise GptlabError(f"{self.index_path}: big-endian checkpoints are not supported")
        self._shards: dict[int, mmap.mmap] = {}

    def _parse_index(self, data: bytes) -> tuple[dict[int, int], dict[str, TensorEntry]]:
        if len(data) < FOOTER_SIZE:
            raise ValueError(f"{len(data)} bytes, shorter than the table footer")
        footer = data[-FOOTER_SIZE:]
        if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
            raise ValueError("bad table magic number")
        _, pos = _varint(footer, 0)  # the metaindex handle: unused
        _, pos = _varint(footer, pos)
        index_offset, pos = _varint(footer, pos)
        index_size, _ = _varint(footer, pos)
        header: dict[int, int] = {}
        entries: dict[str, TensorEntry] = {}
        for _, handle in self._block_entries(data, index_offset, index_size):
            offset, pos = _varint(handle, 0)
            size, _ = _varint(handle, pos)
            for key, value in self._block_entries(data, offset, size):
                if not key:
                    header = {n: v for n, v in _proto_fields(value) if isinstance(v, int)}
                    continue
                name = key.decode("utf-8")
                entries[name] = _decode_entry(name, value)
        return header, entries

    @staticmethod
    def _block_entries(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
        """The (key, value) pairs of one SSTable block, after checking its CRC."""
        end = offset + size
        if end + BLOCK_TRAILER_SIZE > len(data):
            raise ValueError(f"block at {offset} runs past the end of the file")
        compression = data[end]
        if compression != 0:
            raise ValueError(f"compressed blocks (type {compression}) are not supported")
        stored = unmask_crc(struct.unpack_from("<I", data, end + 1)[0])
        if google_crc32c.value(data[offset : end + 1]) != stored:
            raise ValueError(f"CRC mismatch in the block at byte {offset}")
        block = memoryview(data)[offset:end]
        n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
        limit = len(block) - 4 - 4 * n_restarts
        pairs: list[tuple[bytes, bytes]] = []
        key = b""
        pos = 0
        while pos < limit:
            shared, pos = _varint(block, pos)
            unshared, pos = _varint(block, pos)
            value_len, pos = _varint(block, pos)
            key = key[:shared] + bytes(block[pos : pos + unshared])
            pos += unshared
            pairs.append((key, bytes(block[pos : pos + value_len])))
            pos += value_len
        return pairs

    def shard_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def _shard(self, shard: int) -> mmap.mmap:
        if shard not in self._shards:
            path = self.shard_path(shard)
            try:
                with open(path, "rb") as f:
                    self._shards[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except FileNotFoundError:
                raise GptlabError(f"{path}: checkpoint data shard not found") from None
            except (OSError, ValueError) as exc:  # an empty file cannot be mapped
                raise GptlabError(f"{path}: cannot map the data shard ({exc})") from None
        return self._shards[shard]

    def read(self, name: str, verify: bool = True) -> np.ndarray:
        """The tensor `name`, a read-only view of the memory-mapped shard, its CRC32C checked."""
        entry = self.entries.get(name)
        if entry is None:
            raise GptlabError(f"{self.index_path}: no variable {name} in this checkpoint")
        path = self.shard_path(entry.shard)
        if entry.sliced:
            raise GptlabError(f"{path}: tensor {name} is partitioned; not supported")
        if entry.dtype not in DTYPES:
            raise GptlabError(f"{path}: tensor {name} has dtype {entry.dtype_name}; not readable")
        dtype = DTYPES[entry.dtype]
        count = int(np.prod(entry.shape, dtype=np.int64))
        if count * dtype.itemsize != entry.size:
            raise GptlabError(
                f"{self.index_path}: tensor {name} has {entry.size} bytes, its shape "
                f"{entry.shape} and dtype {entry.dtype_name} imply {count * dtype.itemsize}"
            )
        data = self._shard(entry.shard)
        if entry.offset + entry.size > len(data):
            raise GptlabError(
                f"{path}: tensor {name} ends at byte {entry.offset + entry.size}, past the end "
                f"of the file ({len(data)} bytes); the shard is truncated"
            )
        raw = np.frombuffer(data, dtype=np.uint8, count=entry.size, offset=entry.offset)
        if verify and google_crc32c.value(raw) != entry.crc32c:  # reads the map, copies nothing
            raise GptlabError(f"{path}: tensor {name} fails its CRC32C check; the file is corrupt")
        return raw.view(dtype).reshape(entry.shape)

    def close(self) -> None:
        """Unmap the shards (arrays already returned keep their own reference to the map)."""
        self._shards.clear()

    def __enter__(self) -> TFCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
