"""Listing image files: the extensions mofme reads, natural sort order."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mofme.errors import MofmeError

#: File extensions (lower case) treated as images when listing folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pnm",
)


def natural_key(name: str | os.PathLike[str]) -> tuple[list[str | int], str]:
    """Sort key that orders digit runs by value: ``"2.png"`` < ``"10.png"``.

    Paths are keyed by their file name. Text parts compare case-insensitively; the original
    name breaks ties so the order is total and deterministic.
    """
    text = Path(name).name if isinstance(name, os.PathLike) else str(name)
    parts: list[str | int] = []
    for i, part in enumerate(re.split(r"(\d+)", text)):
        # re.split with a capture group alternates text (even) and digits (odd), so positions
        # always hold the same type and keys compare without TypeError.
        parts.append(int(part) if i % 2 else part.casefold())
    return parts, text


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder``, naturally sorted, hidden files skipped.

    Raises:
        MofmeError: ``folder`` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MofmeError(f"image folder {folder} does not exist")
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=natural_key)
