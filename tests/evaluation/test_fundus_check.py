"""The fundus check: synthetic fundus images pass, photographs and degraded copies are flagged."""
import dataclasses
import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from benchmarks import bench_fundus_check
from codebase.data import idrid
from codebase.data.synthetic import CAMERAS, image_records, render
from codebase.evaluation.fundus_check import (
    FundusCheck,
    check_fundus,
    disc_iou,
    sharpness,
    working_copy,
)


def fundus(size, seed=0, camera="idrid"):
    """A synthetic fundus photograph without acquisition defects."""
    clean = dataclasses.replace(CAMERAS[camera], defect_rates={})
    return render(np.random.default_rng(seed), size, 2, 1, True, with_masks=False, camera=clean)[0]


def blurred(rgb, sigma=1.5):
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(sigma)))


def exposed(rgb, factor):
    return np.clip(rgb.astype(np.float32) * factor, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photographs():
    """scikit-learn's sample photographs (china.jpg, flower.jpg) downscaled to 256 x 179."""
    from sklearn.datasets import load_sample_images

    return [np.asarray(Image.fromarray(image).resize((256, 179), Image.BILINEAR))
            for image in load_sample_images().images]


@pytest.mark.parametrize("size", [(128, 96), (192, 128), (256, 170)])
@pytest.mark.parametrize("camera", list(CAMERAS))
def test_synthetic_fundus_of_every_camera_is_fundus_and_good(size, camera):
    check = check_fundus(fundus(size, 0, camera))
    assert (check.is_fundus, check.quality, check.reasons) == (True, "good", [])


def test_synthetic_jpegs_of_the_tree_pass(synthetic_root):
    """Every image of the session's tree is a fundus, and those without a recorded defect are good.
    (A recorded blur is below a pixel at this tree's 192x128, so it is not asserted here; the
    benchmark flags it from 256x170 up.)"""
    records = image_records(synthetic_root)
    for record in idrid.grading_records(synthetic_root, "train"):
        path = idrid.grading_image_path(synthetic_root, "train", record.name)
        defects = records[path.relative_to(synthetic_root).as_posix()]["defects"]
        check = check_fundus(Image.open(path))
        assert check.is_fundus, (record.name, check.reasons)
        if not defects:
            assert check.as_dict() == {"is_fundus": True, "quality": "good", "reasons": []}, record.name


def test_sklearn_photographs_are_not_fundus(photographs):
    for photograph in photographs:
        check = check_fundus(photograph)
        assert not check.is_fundus and check.quality == "poor"
        assert "no round field of view on a dark surround" in check.reasons


@pytest.mark.parametrize("name", ["grey", "noise", "greyscale photograph"])
def test_synthetic_non_fundus_inputs(name, photographs):
    inputs = {"grey": np.full((128, 192, 3), 128, np.uint8),
              "noise": np.random.default_rng(0).integers(0, 256, (128, 192, 3), dtype=np.uint8),
              "greyscale photograph": np.asarray(Image.fromarray(photographs[0]).convert("L").convert("RGB"))}
    check = check_fundus(inputs[name])
    assert not check.is_fundus and check.quality == "poor"
    assert "colours unlike a fundus photograph (red not dominant)" in check.reasons


@pytest.mark.parametrize("size", [(128, 96), (256, 170)])
@pytest.mark.parametrize("degrade, reason", [(blurred, "blurred"), (lambda rgb: exposed(rgb, 0.3), "too dark"),
                                             (lambda rgb: exposed(rgb, 2.5), "over-exposed")])
def test_degraded_fundus_is_poor_with_its_reason(size, degrade, reason):
    check = check_fundus(degrade(fundus(size)))
    assert check.is_fundus and check.quality == "poor" and check.reasons == [reason]


def test_pil_and_numpy_inputs_agree_and_bad_input_is_refused():
    rgb = fundus((192, 128))
    assert check_fundus(Image.fromarray(rgb)).features == check_fundus(rgb).features
    assert isinstance(check_fundus(Image.fromarray(rgb).convert("L")), FundusCheck)  # any PIL mode
    with pytest.raises(ValueError, match=r"expected an RGB uint8 array"):
        check_fundus(rgb.astype(np.float32))
    with pytest.raises(ValueError, match=r"expected an RGB uint8 array"):
        check_fundus(rgb[..., 0])


def test_working_copy_is_reduced_to_512_and_never_enlarged():
    assert working_copy(np.zeros((1024, 2048, 3), np.uint8)).shape == (256, 512, 3)
    assert working_copy(np.zeros((96, 128, 3), np.uint8)).shape == (96, 128, 3)


def test_disc_iou_known_answers():
    ys, xs = np.ogrid[:201, :201]
    assert disc_iou((ys - 100) ** 2 + (xs - 100) ** 2 <= 80 ** 2) > 0.98
    # A full 300 x 200 frame against its disc of radius 150 cut at |y| <= 100 (rows give the area):
    # area = 2 * (100 * sqrt(150^2 - 100^2) + 150^2 * asin(100 / 150)), IoU = area / (300 * 200).
    expected = 2 * (100 * math.sqrt(150 ** 2 - 100 ** 2) + 150 ** 2 * math.asin(100 / 150)) / (300 * 200)
    assert disc_iou(np.ones((200, 300), bool)) == pytest.approx(expected, abs=0.01)


def test_sharpness_ignores_contrast_and_brightness_and_falls_with_blur():
    green = fundus((192, 128))[..., 1].astype(np.float32)
    inside = np.ones_like(green, bool)
    assert sharpness(3 * green + 20, inside) == pytest.approx(sharpness(green, inside), rel=1e-4)
    smooth = np.asarray(Image.fromarray(green.astype(np.uint8)).filter(ImageFilter.GaussianBlur(2)), np.float32)
    assert sharpness(smooth, inside) < 0.5 * sharpness(green, inside)


def test_benchmark_smoke_run_agrees_with_every_expected_decision(capsys):
    assert bench_fundus_check.main(["--smoke"]) == 0
    assert "decisions as expected" in capsys.readouterr().out
