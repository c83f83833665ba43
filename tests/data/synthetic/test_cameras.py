"""Camera profiles: colour response against the published means, field shapes, defects."""
import dataclasses

import numpy as np
import pytest

from codebase.data.synthetic import cameras, render
from codebase.evaluation.fundus_check import sharpness

PUBLISHED = [name for name, camera in cameras.CAMERAS.items() if camera.published]


def frame_size(camera, height=256):
    return round(height * camera.aspect), height


@pytest.mark.parametrize("name", PUBLISHED)
def test_mean_rgb_over_the_whole_image_is_within_10_of_the_published_mean(name):
    camera = cameras.CAMERAS[name]
    means = [render(np.random.default_rng([seed, 7]), frame_size(camera), seed % 5, seed % 3 if seed % 5 >= 2 else 0,
                    True, with_masks=False, camera=camera)[0].reshape(-1, 3).mean(axis=0) for seed in range(10)]
    assert np.abs(np.mean(means, axis=0) - camera.mean_rgb).max() <= 10, np.mean(means, axis=0)


def test_at_least_four_profiles_three_of_them_on_published_datasets():
    assert len(cameras.CAMERAS) >= 4 and set(PUBLISHED) >= {"idrid", "ddr", "eyepacs"}
    with pytest.raises(ValueError, match="camera 'x': expected one of idrid"):
        cameras.camera_named("x")


def test_field_shapes():
    def image(name):
        camera = dataclasses.replace(cameras.CAMERAS[name], defect_rates={})
        return render(np.random.default_rng(0), (384, 256), 0, 0, False, with_masks=False, camera=camera)[0]

    idrid, ddr, notched = image("idrid"), image("ddr"), image("notched")
    assert idrid[0, 192].max() > 60 and idrid[-1, 192].max() > 60  # circle cut at top and bottom
    assert ddr[1, 192].max() < 15 and ddr[-2, 192].max() < 15       # full circle
    def first_bright_row(column):
        return int(np.argmax(notched[:, column].max(axis=1) > 40))

    assert first_bright_row(192) >= first_bright_row(180) + 4  # a notch at the top of the rim


def test_defects_are_drawn_recorded_and_leave_the_masks_alone():
    camera = dataclasses.replace(cameras.CAMERAS["idrid"], defect_rates=dict.fromkeys(cameras.DEFECTS, 1.0))
    clean = dataclasses.replace(camera, defect_rates={})
    record = {}
    bad, bad_masks, *bad_grades = render(np.random.default_rng(4), (384, 256), 3, 1, True, camera=camera, record=record)
    good, good_masks, *good_grades = render(np.random.default_rng(4), (384, 256), 3, 1, True, camera=clean)
    assert record == {"camera": "idrid", "defects": list(cameras.DEFECTS)}
    assert np.array_equal(bad_masks, good_masks) and bad_grades == good_grades
    inside = good.max(axis=2) > 30
    assert sharpness(bad[..., 1].astype(np.float32), inside) < 0.7 * sharpness(good[..., 1].astype(np.float32), inside)
