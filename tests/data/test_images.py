"""Reading image and mask files: every pixel format of a mask, greyscale and CMYK photographs, draft
decoding, and a clear error for a truncated, empty or foreign file."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codebase.data import idrid
from codebase.data.images import ImageFileError, read_image, read_mask, read_size, verify_image


@pytest.fixture
def tree(synthetic_root, tmp_path):
    """A private copy of the synthetic tree that a test may break."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "data", ignore=shutil.ignore_patterns(".cache")))


def assert_error(call, *fragments):
    with pytest.raises(ImageFileError) as caught:
        call()
    for fragment in fragments:
        assert str(fragment) in str(caught.value), str(caught.value)


MASK = np.zeros((12, 16), bool)


MASK[3:7, 5:11] = True


MASK[10, 0] = True


def _mask_file(fmt):
    if fmt == "1bit":
        return Image.fromarray(MASK)
    if fmt == "grey255":
        return Image.fromarray(MASK.astype(np.uint8) * 255)
    if fmt == "grey_other_values":
        return Image.fromarray(np.where(MASK, np.arange(16, dtype=np.uint8) * 16 + 1, 0).astype(np.uint8))
    if fmt == "grey16":
        return Image.fromarray(MASK.astype(np.uint16) * 300)
    if fmt == "palette":
        image = Image.fromarray(MASK.astype(np.uint8) * 3, "P")
        image.putpalette([0, 0, 0] * 3 + [0, 0, 7] + [0, 0, 0] * 252)
        return image
    if fmt == "rgb":
        rgb = np.zeros(MASK.shape + (3,), np.uint8)
        rgb[MASK] = (0, 1, 0)
        return Image.fromarray(rgb)
    # rgba: colour everywhere, the mask in alpha (IDRiD_81_EX.tif)
    return Image.fromarray(np.dstack([np.full(MASK.shape + (3,), 200, np.uint8), MASK.astype(np.uint8) * 255]))


@pytest.mark.parametrize("fmt", ["1bit", "grey255", "grey_other_values", "grey16", "palette", "rgb", "rgba"])
def test_mask_pixel_formats(tmp_path, fmt):
    path = tmp_path / f"IDRiD_01_EX_{fmt}.tif"
    _mask_file(fmt).save(path)
    mask = read_mask(path, expected_size=(16, 12))
    assert mask.dtype == np.uint8 and mask.shape == (12, 16)
    np.testing.assert_array_equal(mask, MASK.astype(np.uint8))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_greyscale_and_cmyk_images_become_rgb(tmp_path, mode):
    path = tmp_path / "IDRiD_001.jpg"
    Image.new(mode, (20, 10), 128 if mode == "L" else (10, 20, 30, 40)).save(path)
    image = read_image(path)
    assert image.mode == "RGB" and image.size == (20, 10)


def test_read_image_draft_decodes_jpeg_at_reduced_scale(synthetic_root):
    path = idrid.grading_records(synthetic_root, "train")[0].image_path
    assert read_image(path).size == (192, 128)
    assert read_image(path, draft_size=(48, 32)).size == (48, 32)  # 1/4 scale DCT decode
    assert read_image(path, draft_size=(50, 33)).size == (96, 64)  # never below the asked size


def test_mask_size_differs_from_image(tree):
    record = idrid.segmentation_records(tree, "train")[0]
    Image.new("L", (100, 70)).save(record.mask_paths["OD"])
    assert_error(lambda: read_mask(record.mask_paths["OD"], expected_size=(192, 128)),
                 record.mask_paths["OD"], "100x70", "expected 192x128")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_unreadable_truncated_and_empty_files(tree):
    path = idrid.grading_records(tree, "train")[0].image_path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_error(lambda: read_image(path), path, "truncated")
    path.write_bytes(b"")
    assert_error(lambda: read_image(path), path, "empty file")
    path.write_bytes(b"not a JPEG at all")
    assert_error(lambda: read_image(path), path, "not a readable image")
    mask = next(p for p in idrid.segmentation_records(tree, "train")[0].mask_paths.values() if p)
    mask.write_bytes(mask.read_bytes()[:200])
    assert_error(lambda: read_mask(mask), mask)


@pytest.mark.parametrize("orientation, turn", [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_gives_the_picture_as_viewers_show_it(tmp_path, orientation, turn):
    stored = np.zeros((48, 64, 3), np.uint8)
    stored[:12, :16] = 255  # a white corner, stored top left
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / "photo.jpg", quality=95, exif=exif)
    image.convert("L").save(tmp_path / "mask.png", exif=exif)  # a mask that says the same
    shown = np.rot90(stored, k=turn)
    assert read_size(tmp_path / "photo.jpg") == verify_image(tmp_path / "photo.jpg") == shown.shape[1::-1]
    np.testing.assert_allclose(np.asarray(read_image(tmp_path / "photo.jpg"), float), shown, atol=40)
    half = (shown.shape[1] // 2, shown.shape[0] // 2)  # (W, H) as shown: drafted at 1/2 of the stored sides
    assert read_image(tmp_path / "photo.jpg", draft_size=half).size == half
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.png"), (shown[..., 0] > 0).astype(np.uint8))
    assert read_size(tmp_path / "mask.png") == shown.shape[1::-1]


def test_a_float_mask_is_refused_and_nan_is_never_lesion(tmp_path):
    Image.fromarray(np.full((8, 8), np.nan, np.float32), "F").save(tmp_path / "nan.tif")
    assert_error(lambda: read_mask(tmp_path / "nan.tif"), tmp_path / "nan.tif",
                 "floating-point mask, expected integer pixels")


def test_an_animated_image_gives_its_first_frame_and_a_warning(tmp_path):
    frames = [Image.new("L", (32, 24), value) for value in (0, 255)]
    frames[0].save(tmp_path / "mask.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match="an animated image of 2 frames; its first frame is used"):
        assert not read_mask(tmp_path / "mask.gif").any()
