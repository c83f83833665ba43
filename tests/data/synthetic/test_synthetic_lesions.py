"""Synthetic lesions (codebase/data/synthetic/lesions.py): masks are exactly the painted pixels, lesions look as
they should, sizes as published."""
import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from codebase.data import idrid
from codebase.data.synthetic import anatomy, cameras, lesions, render, vessels
from codebase.data.synthetic.render import LESION_INDEX, draw_scene, paint_all, plan_eye

IDRID = cameras.CAMERAS["idrid"]
CLEAN = dataclasses.replace(IDRID, defect_rates={})  # no acquisition defect


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masks_are_exactly_the_painted_pixels(seed):
    rng = np.random.default_rng(seed)
    scene = draw_scene(rng, IDRID, (576, 384), 4, 2, True, paint_lesions=False)
    before = scene.image.copy()
    assert not scene.masks[[LESION_INDEX[k] for k in ("MA", "HE", "EX", "SE")]].any()
    paint_all(rng, scene)
    changed = (scene.image != before).any(axis=2)
    painted = scene.masks[[LESION_INDEX[k] for k in ("MA", "HE", "EX", "SE")]].any(axis=0)
    assert painted.any() and np.array_equal(changed, painted)


def test_the_disc_mask_is_exactly_the_painted_disc():
    eye = plan_eye(np.random.default_rng(3), IDRID, (576, 384))
    image = np.full((384, 576, 3), 0.5, np.float32)
    masks = np.zeros((5, 384, 576), bool)
    anatomy.paint_disc(np.random.default_rng(0), image, masks, eye, LESION_INDEX["OD"])
    assert np.array_equal((image != 0.5).any(axis=2), masks[LESION_INDEX["OD"]])
    assert masks[LESION_INDEX["OD"]].sum() > 0.9 * np.pi * eye.disc_rx * eye.disc_ry


def ring(mask, width=2):
    return ndimage.binary_dilation(mask, iterations=width) & ~mask


@pytest.mark.parametrize("seed", [0, 1])
def test_lesions_look_as_they_should_in_the_photograph(seed):
    image, masks, rg, mer = render(np.random.default_rng(seed), (1152, 768), 4, 2, True, camera=CLEAN)
    red, green, blue = (image[..., c].astype(float) for c in range(3))
    m = dict(zip(idrid.LESIONS, masks))
    assert all(m[k].any() for k in idrid.LESIONS)
    for lesion in ("EX", "SE"):  # bright, yellowish-white: green and blue above their surroundings
        assert green[m[lesion]].mean() > 1.15 * green[ring(m[lesion])].mean(), lesion
    assert green[m["EX"]].mean() > green[m["SE"]].mean()  # exudates brighter and sharper than cotton wool
    assert green[m["HE"]].mean() < 0.8 * green[ring(m["HE"])].mean()
    assert red[m["HE"]].mean() > 1.5 * green[m["HE"]].mean()  # dark red
    ma_contrast = green[m["MA"]].mean() / green[ring(m["MA"])].mean()
    assert 0.6 < ma_contrast < 0.97  # microaneurysms: darker, but faint
    assert green[m["OD"]].mean() > 1.3 * green[ring(m["OD"], 6)].mean()
    assert image[0, 0].max() < 15 and image[-1, -1].max() < 15  # dark surround


def planned_ma_diameters(ma_scale=1.0, images=6):
    diameters = []
    for seed in range(images):
        rng = np.random.default_rng(seed)
        eye = plan_eye(rng, IDRID, (4288, 2848))
        planned = lesions.plan(rng, eye, np.zeros((0, 2)), 3, 0, False, ma_scale=ma_scale)
        diameters += [2 * l.radius for l in planned if l.kind == "MA"]
    return np.array(diameters)


def test_microaneurysms_are_10_to_25_px_across_at_4288x2848_and_ma_scale_shrinks_them():
    diameters = planned_ma_diameters()
    assert len(diameters) > 20 and 10 <= diameters.min() and diameters.max() <= 25
    assert np.median(diameters) == pytest.approx(17.5, abs=3)
    np.testing.assert_allclose(planned_ma_diameters(ma_scale=0.5), 0.5 * diameters)  # as many, each half as wide


@pytest.mark.slow
def test_drawn_microaneurysm_masks_have_their_planned_size():
    """Rendered at half IDRiD's size: each MA mask component's equivalent diameter, doubled, lies in
    10-25 px give or take the rasterisation (one pixel at this size, two at 4288x2848)."""
    _, masks, _, _ = render(np.random.default_rng(11), (2144, 1424), 1, 0, False, camera=CLEAN)
    labelled, count = ndimage.label(masks[LESION_INDEX["MA"]])
    areas = ndimage.sum_labels(np.ones_like(labelled), labelled, range(1, count + 1))
    diameters = 2 * np.sqrt(4 * areas / np.pi)
    assert count >= 3 and diameters.min() >= 10 - 2 and diameters.max() <= 25 + 2


def test_lesion_size_scales_with_image():
    planned = {}
    for size in ((576, 384), (1152, 768)):
        rng = np.random.default_rng(5)
        eye = plan_eye(rng, IDRID, size)
        planned[size] = [(l.kind, l.radius) for l in lesions.plan(rng, eye, np.zeros((0, 2)), 3, 1, True)]
    small, large = planned.values()
    assert [k for k, _ in small] == [k for k, _ in large] and len(small) > 10
    assert all(r2 == pytest.approx(2 * r1) for (_, r1), (_, r2) in zip(small, large))
    od = LESION_INDEX["OD"]
    ratio = (render(np.random.default_rng(5), (1152, 768), 0, 0, False)[1][od].sum()
             / render(np.random.default_rng(5), (576, 384), 0, 0, False)[1][od].sum())
    assert ratio == pytest.approx(4, rel=0.02)


def test_flame_haemorrhages_lie_along_the_nerve_fibres():
    flames = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        eye = plan_eye(rng, IDRID, (576, 384))
        tree = vessels.grow_tree(rng, eye)
        flames += [(l, eye) for l in lesions.plan(rng, eye, tree.arcade_points(), 3, 0, False) if l.style == "flame"]
    assert flames
    for lesion, eye in flames:
        radial = np.arctan2(lesion.y - eye.disc_y, lesion.x - eye.disc_x)
        assert abs(np.sin(lesion.angle - radial)) < 1e-6 and lesion.aspect > 2
