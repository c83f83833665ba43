"""Decoded, resized images and masks cached on disk as uint8 .npy files.

Full-size IDRiD files take most of a second to decode; the cache does it once per (source file,
target size) and later reads only the small array. An entry's name carries a hash of the source's
absolute path, the target size, and the source's modification time and byte size, so a changed
source gets a new entry (the stale one is removed). Entries are written to a temporary file in the
cache folder and renamed into place, so DataLoader workers racing on one entry never read half a file.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from codebase.data import idrid
from codebase.data.images import read_image, read_mask_image, read_size

_VERSION = 3  # bump when the decoding or resizing below changes


def load_resized_image(path, size_hw: tuple[int, int]) -> np.ndarray:
    """Decode and resize an image (no cache): uint8 [H, W, 3].

    JPEGs are decoded at the smallest DCT scale that is still at least the target size.
    """
    height, width = size_hw
    image = read_image(path, draft_size=(width, height))
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    return np.array(image)  # a writable copy


def load_resized_mask(path, size_hw: tuple[int, int], expected_size: tuple[int, int] | None = None,
                      threshold: int = 1) -> np.ndarray:
    """Read and resize a mask (no cache): uint8 [H, W] of 0/1, by area then threshold at one half.

    expected_size=(W, H): the full size of the mask's image; a mask of another size is an IDRiDError.
    threshold: the file's foreground grey level (`read_mask_image`; 1: any non-zero value).
    """
    height, width = size_hw
    mask = read_mask_image(path, expected_size, threshold)
    if mask.size != (width, height):
        # reducing_gap=1: block means over the whole-number part of the scale (Image.reduce, ~4x faster
        # than a box resize at full size), then a box resize of what is left; both average by area.
        mask = mask.resize((width, height), Image.BOX, reducing_gap=1.0)
    return (np.asarray(mask) >= 128).astype(np.uint8)


class ResizedCache:
    """On-disk cache of `load_resized_image` / `load_resized_mask`; directory=None disables it."""

    def __init__(self, directory):
        self.directory = Path(directory) if directory is not None else None

    def image(self, path, size_hw: tuple[int, int]) -> np.ndarray:
        """uint8 [H, W, 3]."""
        return self._get("image", path, size_hw, (), lambda: load_resized_image(path, size_hw))

    def mask(self, path, size_hw: tuple[int, int], image_path=None) -> np.ndarray:
        """uint8 [H, W] of 0/1; image_path: the image the mask belongs to (its size must match)."""

        def decode():
            expected = read_size(image_path) if image_path is not None else None
            return load_resized_mask(path, size_hw, expected)

        return self._get("mask", path, size_hw, (image_path,) if image_path else (), decode)

    def entry_path(self, kind: str, path, size_hw, depends_on=()) -> Path:
        """Where the entry for this source, size and source state lives."""
        path = Path(path).resolve()
        identity = f"{_VERSION}|{kind}|{path}|{size_hw[0]}x{size_hw[1]}"
        state = "|".join(_file_state(p) for p in (path, *depends_on))
        prefix = f"{path.stem}.{kind}.{size_hw[0]}x{size_hw[1]}.{_digest(identity)}"
        return self.directory / f"{prefix}.{_digest(state)}.npy"

    def _get(self, kind, path, size_hw, depends_on, decode) -> np.ndarray:
        if self.directory is None:
            return decode()
        entry = self.entry_path(kind, path, size_hw, depends_on)
        try:
            return np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError):  # missing, or damaged (e.g. by a full disk): rebuild
            pass
        array = decode()
        self._write(entry, array)
        return array

    def _write(self, entry: Path, array: np.ndarray) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(handle, "wb") as file:
                np.save(file, array, allow_pickle=False)
            os.replace(temporary, entry)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        prefix = entry.name.rsplit(".", 2)[0] + "."
        for name in os.listdir(entry.parent):  # entries of older versions of this source
            if name.startswith(prefix) and name != entry.name:
                (entry.parent / name).unlink(missing_ok=True)


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _file_state(path) -> str:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise idrid.IDRiDError(f"{path}: file not found") from None
    return f"{stat.st_mtime_ns}:{stat.st_size}"
