"""Reading image and mask files: a dataset's photographs and masks, or anyone's own photographs.

Every decode goes through here, so each file format quirk is handled once: images and masks read
as viewers show them (EXIF orientation applied first; sizes are the shown ones; an animated file's
first frame, with a warning), JPEG draft decoding at a reduced scale, 16-bit greyscale scaled to 8
bits, float and 32-bit images and float masks refused, masks of any integer pixel format read as
0/1, Pillow's decompression-bomb limit, and truncated or empty files named.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

# EXIF orientations that turn the stored picture a quarter turn (its width becomes the shown height)
_QUARTER_TURNS = (5, 6, 7, 8)
_ORIENTATION = 0x0112

from codebase.errors import ProjectError


class ImageFileError(ProjectError, ValueError):
    """An image or mask file that cannot be read as expected. `problems` lists every problem found
    (the message joins them)."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def _open(path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageFileError(f"{path}: empty file (0 bytes), expected an image")
    try:
        return Image.open(path)
    except Image.DecompressionBombError as error:
        raise ImageFileError(_too_large(path, error)) from None
    except (UnidentifiedImageError, OSError) as error:
        raise ImageFileError(f"{path}: not a readable image ({error})") from error


def _too_large(path, error: Exception) -> str:
    return (f"{path}: image too large to decode safely ({error}); expected a photograph of at most a few "
            "tens of millions of pixels (IDRiD's have 12 million): downscale it first")


def _load(image: Image.Image, path) -> None:
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageFileError(_too_large(path, error)) from None
    except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt data
        raise ImageFileError(f"{path}: unreadable or truncated image data ({error})") from error


def _orients_itself(image: Image.Image) -> bool:
    """Pillow's TIFF reader handles the orientation tag itself (and drops it on load): not turned twice."""
    return image.format == "TIFF"


def _turned(image: Image.Image) -> bool:
    """Whether the file's EXIF orientation shows it a quarter turn from how `image.size` has it."""
    if _orients_itself(image):
        return False
    try:
        return image.getexif().get(_ORIENTATION, 1) in _QUARTER_TURNS
    except Exception:  # an unreadable EXIF block: the picture is shown as stored
        return False


def _as_shown(image: Image.Image, path) -> Image.Image:
    """The decoded picture as viewers show it: EXIF orientation applied, an animation's first frame."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        warnings.warn(f"{path}: an animated image of {frames} frames; its first frame is used", stacklevel=3)
    if _orients_itself(image):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # an unreadable EXIF block: the picture is shown as stored
        return image


def _to_8_bit(image: Image.Image, path) -> Image.Image:
    """16-bit greyscale ('I;16*', or 'I' holding 16-bit values) scaled to 8 bits (0-65535 -> 0-255);
    float or wider integer images are refused rather than clipped."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageFileError(f"{path}: 32-bit image with values {values.min()}..{values.max()}, "
                             "expected 8- or 16-bit pixels")
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")
    if image.mode == "F":
        raise ImageFileError(f"{path}: floating-point image, expected 8- or 16-bit pixels")
    return image


def read_size(path) -> tuple[int, int]:
    """(W, H) as viewers show the image (EXIF orientation applied), from the header, without decoding pixels."""
    with _open(path) as image:
        width, height = image.size
        return (height, width) if _turned(image) else (width, height)


def read_image(path, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an RGB image (greyscale, CMYK, palette... are converted).

    draft_size=(W, H): a JPEG may be decoded at a reduced scale (1/2, 1/4, 1/8) that is still at
    least this big, which is much faster for full-size fundus photographs. The image is as viewers
    show it: EXIF orientation applied (draft_size is the shown size), an animation's first frame.
    """
    with _open(path) as image:
        if draft_size is not None:
            image.draft(None, tuple(reversed(draft_size)) if _turned(image) else tuple(draft_size))
        _load(image, path)
        image = _as_shown(image, path)
    image = _to_8_bit(image, path)
    return image if image.mode == "RGB" else image.convert("RGB")


def read_mask_image(path, expected_size: tuple[int, int] | None = None, threshold: int = 1) -> Image.Image:
    """A lesion mask as an 'L' image of 0 / 255, whatever the file's pixel format.

    Foreground is any non-zero value, or with ``threshold`` any value >= it (anti-aliased masks,
    whose grey edges are not lesion: 128); a float mask is refused (NaN is no lesion and no
    background). As viewers show it, like its image (EXIF orientation, an animation's first
    frame). RGBA / LA masks keep it in alpha where the alpha varies (a
    transparent background); with a constant alpha (an opaque channel that other tools add) it
    is the colour. Palette masks by colour.
    expected_size=(W, H): the size of the image the mask belongs to.
    """

    def _foreground(channel: Image.Image) -> Image.Image:
        return channel.point(lambda value: 255 if value >= threshold else 0)

    with _open(path) as image:
        _load(image, path)
        image = _as_shown(image, path)
    if image.mode == "F":
        raise ImageFileError(f"{path}: floating-point mask, expected integer pixels (0 for background, "
                             "non-zero for the lesion: 1-, 8- or 16-bit)")
    if expected_size is not None and image.size != tuple(expected_size):
        raise ImageFileError(
            f"{path}: mask is {image.size[0]}x{image.size[1]}, expected "
            f"{expected_size[0]}x{expected_size[1]} (the size of its image)"
        )
    mode = image.mode
    if mode == "1":
        return image.convert("L")
    if mode == "L":
        return _foreground(image)
    if mode in ("RGBA", "LA", "PA"):
        alpha = image.getchannel("A")
        low, high = alpha.getextrema()
        if low != high:
            return _foreground(alpha)
        mode = {"RGBA": "RGB", "LA": "L", "PA": "P"}[mode]
        image = image.convert(mode)
        if mode == "L":
            return _foreground(image)
    if mode == "P":
        palette = np.zeros((256, 3), np.uint8)
        colours = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)[:256]
        palette[: len(colours)] = colours
        lookup = np.where(palette.any(axis=1), 255, 0).astype(np.uint8)
        return Image.fromarray(lookup[np.asarray(image)])
    if mode.startswith("I"):
        values = np.asarray(image)
        return Image.fromarray(np.where(values >= threshold if threshold > 1 else values != 0, 255, 0).astype(np.uint8))
    rgb = image if mode == "RGB" else image.convert("RGB")
    red, green, blue = rgb.split()
    return _foreground(ImageChops.lighter(ImageChops.lighter(red, green), blue))


def read_mask(path, expected_size: tuple[int, int] | None = None, threshold: int = 1) -> np.ndarray:
    """A lesion mask as uint8 [H, W] of 0/1 (see `read_mask_image`)."""
    return (np.asarray(read_mask_image(path, expected_size, threshold)) > 0).astype(np.uint8)


def verify_image(path) -> tuple[int, int]:
    """Decode at 1/8 scale (which still reads every byte) to catch truncation; return (W, H) as shown
    (`read_size`)."""
    with _open(path) as image:
        width, height = image.size
        image.draft(None, (max(1, width // 8), max(1, height // 8)))
        _load(image, path)
        return (height, width) if _turned(image) else (width, height)
