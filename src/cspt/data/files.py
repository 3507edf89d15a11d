"""Find image files in folders (recursively), single files or text file lists."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from cspt.data.images import IMAGE_SUFFIXES, virtual_path
from cspt.data.shards import expand_braces, shard_members
from cspt.errors import CsptError

LIST_SUFFIXES = {".txt", ".lst", ".list"}


def files_under(folder: Path) -> Iterator[Path]:
    """Every file under ``folder``, following symlinked folders (each real folder visited once, so a link back
    up the tree ends there)."""
    seen: set[str] = set()
    for root, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        yield from (Path(root) / name for name in names)


def find_images(sources: list[str | Path], exclude: Sequence[str | Path | None] = ()) -> list[Path]:
    """All image files named by ``sources``, sorted within each source.

    A source is a folder (searched recursively, symlinked folders followed), an image file, a GDAL virtual path
    (``/vsizip/A.zip/scene.tif``, ``/vsicurl/https://...``), a text file with one
    image path per line (relative paths are relative to the list's folder), or a tar
    shard (its members; ``DIR/shard-{000000..000099}.tar`` names a hundred). Folder
    searches skip everything under ``exclude`` (a run's own output directory: its
    reconstructions and predictions are not data).
    """
    if not sources:
        raise CsptError("no data given: pass one or more image folders or file lists")
    skipped = [Path(e).resolve() for e in exclude if e]
    files: list[Path] = []
    for name in (name for pattern in sources for name in expand_braces(str(pattern))):
        if name.startswith("/vsi"):  # a GDAL virtual path (/vsizip/, /vsicurl/, /vsis3/...) is GDAL's to find
            files.append(virtual_path(name))
            continue
        source = Path(name)
        if source.suffix.lower() == ".tar":
            files += shard_members(source)
        elif source.is_dir():
            found = sorted(
                p for p in files_under(source)
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not inside_any(p, skipped)
            )
            if not found:
                raise CsptError(f"{source}: folder contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        elif source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
            files += read_file_list(source)
        elif source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
            files.append(source)
        elif source.exists():
            raise CsptError(f"{source}: not a folder, an image or a .txt list of images")
        else:
            raise CsptError(f"{source}: no such file or folder")
    return files


def read_file_list(path: Path) -> list[Path]:
    """Image paths from a text file, one per line; blank lines and ``#`` comments skipped."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise CsptError(f"{path}: file list is not text") from None
    files = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        file = Path(line) if Path(line).is_absolute() else path.parent / line
        if not file.is_file():
            raise CsptError(f"{path}:{number}: no such image {line}")
        files.append(file)
    if not files:
        raise CsptError(f"{path}: file list names no images")
    return files


def inside_any(path: Path, folders: Sequence[Path]) -> bool:
    """Whether ``path`` lies in one of the (resolved) ``folders``."""
    if not folders:
        return False
    resolved = path.resolve()
    return any(resolved.is_relative_to(folder) for folder in folders)
