"""WebDataset-style tar shards of an image pool: writing them, naming and reading their members.

A pool of a million files is slow to list, copy and open one by one; a few hundred
tar files of about a gigabyte are not. ``make_shards`` packs images into
``shard-NNNNNN.tar`` files (``000000123.jpg`` members, byte for byte: JPEGs are not
re-encoded, 16-bit and multi-band TIFFs keep every bit), any tar reader opens them.
Training addresses a member as ``SHARD.tar::NAME``; its bytes are read at the offset
an index of the tar headers gives, so training keeps exact resumption.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from cspt.data.formats import IMAGE_SUFFIXES
from cspt.errors import CsptError

log = logging.getLogger("cspt")

SHARD_NAME = "shard-{:06d}.tar"
#: between a shard's path and a member's name
MEMBER = "::"
#: members stored as they are; other images are re-encoded to PNG (lossless)
KEPT_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """``DIR/shard-{000000..000099}.tar`` as the 100 paths it names (the numbers' width is kept)."""
    found = BRACES.search(pattern)
    if not found:
        return [pattern]
    first, last = found.groups()
    width = len(first)
    return [name for number in range(int(first), int(last) + 1)
            for name in expand_braces(pattern[:found.start()] + f"{number:0{width}d}" + pattern[found.end():])]


def is_member(path: str | Path) -> bool:
    """Whether ``path`` names a member of a tar shard (``SHARD.tar::NAME``)."""
    return MEMBER in str(path)


def shard_members(shard: Path) -> list[Path]:
    """The image members of a shard, in their order in the tar file."""
    if not shard.is_file():
        raise CsptError(f"{shard}: no such shard")
    return [Path(f"{shard}{MEMBER}{name}") for name in member_index(str(shard))
            if Path(name).suffix.lower() in IMAGE_SUFFIXES]


@functools.lru_cache(maxsize=256)
def member_index(shard: str) -> dict[str, tuple[int, int]]:
    """``name -> (offset, size)`` of every regular member, from the tar headers (data is not read)."""
    try:
        with tarfile.open(shard, "r:") as archive:
            return {m.name: (m.offset_data, m.size) for m in archive if m.isfile()}
    except (tarfile.TarError, OSError) as err:
        raise CsptError(f"{shard}: not a readable (uncompressed) tar shard ({err})") from None


def member_bytes(path: str | Path) -> bytes:
    """The stored bytes of ``SHARD.tar::NAME``."""
    shard, name = str(path).split(MEMBER, 1)
    found = member_index(shard).get(name)
    if found is None:
        raise CsptError(f"{shard}: holds no member {name}")
    offset, size = found
    with open(shard, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def open_member(path: str | Path) -> io.BytesIO:
    """The stored bytes of ``SHARD.tar::NAME`` as an in-memory file."""
    return io.BytesIO(member_bytes(path))


def shard_of(path: str | Path) -> str:
    """The shard a member belongs to (the file itself for plain files)."""
    return str(path).split(MEMBER, 1)[0]


def make_shards(files: Sequence[Path], output: str | Path, max_bytes: int = 1 << 30) -> list[Path]:
    """Pack ``files`` into tar shards of at most ``max_bytes`` each (one larger file gets a shard of its own).

    Members are named by the file's position (``000000123.jpg``) and written with fixed
    metadata, so the same files give the same shards; each shard is renamed into place
    once complete. Returns the shards.
    """
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.glob("shard-*.tar")):
        raise CsptError(f"{folder}: already holds shards; give an empty --output")
    shards: list[Path] = []
    archive, size = None, 0
    try:
        for number, path in enumerate(files):
            name, data = _member(number, path)
            if archive is None or (size + len(data) > max_bytes and size > 0):
                if archive is not None:
                    shards.append(_close(archive, folder / SHARD_NAME.format(len(shards))))
                archive, size = tarfile.open(folder / f".{SHARD_NAME.format(len(shards))}.tmp", "w:"), 0
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
            size += len(data) + 1024  # the header and padding, about
        if archive is not None:
            shards.append(_close(archive, folder / SHARD_NAME.format(len(shards))))
            archive = None
    finally:
        if archive is not None:
            archive.close()
            Path(archive.name).unlink(missing_ok=True)
    log.info("wrote %d images into %d shards in %s", len(files), len(shards), folder)
    return shards


def _member(number: int, path: Path) -> tuple[str, bytes]:
    """A member's name and bytes: the file as it is, or PNG for formats kept in no shard reader's list."""
    suffix = path.suffix.lower()
    if suffix in KEPT_SUFFIXES:
        return f"{number:09d}{suffix}", path.read_bytes()
    buffer = io.BytesIO()
    try:
        with Image.open(path) as image:
            image.save(buffer, format="PNG")
    except OSError as err:
        raise CsptError(f"{path}: cannot re-encode for a shard ({err})") from None
    return f"{number:09d}.png", buffer.getvalue()


def _close(archive: tarfile.TarFile, target: Path) -> Path:
    temporary = Path(archive.name)
    archive.close()
    os.replace(temporary, target)
    return target
