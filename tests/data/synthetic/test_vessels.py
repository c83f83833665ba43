"""The vessel tree: trunks from the disc, Murray-type tapering, branch angles, no vessel at the fovea."""
import numpy as np
import pytest

from codebase.data.synthetic import cameras, vessels
from codebase.data.synthetic.render import draw_scene, plan_eye

MURRAY_TOLERANCE = 1e-6  # relative: w0^k against w1^k + w2^k


def trees(count=4, size=(576, 384)):
    for seed in range(count):
        rng = np.random.default_rng(seed)
        eye = plan_eye(rng, cameras.CAMERAS["idrid"], size)
        yield eye, vessels.grow_tree(rng, eye)


def test_four_arteries_and_four_veins_leave_the_disc_veins_wider():
    for eye, tree in trees():
        trunks = [v for v in tree.vessels if v.parent == -1]
        assert sorted(v.kind for v in trunks) == ["artery"] * 4 + ["vein"] * 4
        for v in trunks:  # each starts on the disc
            assert np.hypot(*(v.points[0] - (eye.disc_x, eye.disc_y))) < eye.disc_ry
        width = {kind: np.mean([v.width for v in trunks if v.kind == kind]) for kind in ("artery", "vein")}
        assert width["vein"] > 1.15 * width["artery"]


def test_widths_decrease_along_every_tree_and_each_branching_obeys_murray():
    for _, tree in trees():
        for vessel in tree.vessels:
            if vessel.parent >= 0:
                assert vessel.width < tree.vessels[vessel.parent].width
        assert len(tree.branchings) > 50
        for b in tree.branchings:
            k = vessels.MURRAY_EXPONENT[b.kind]
            error = abs(b.widths[0] ** k + b.widths[1] ** k - b.parent_width ** k)
            assert error <= MURRAY_TOLERANCE * b.parent_width ** k
        assert max(v.level for v in tree.vessels) >= 4  # about five branching levels


def test_branch_angles_are_about_75_to_80_degrees():
    angles = [b.angle for _, tree in trees() for b in tree.branchings]
    assert 70 <= np.mean(angles) <= 85 and np.percentile(angles, 5) > 50 and np.percentile(angles, 95) < 100


def test_murray_law_and_angles_known_answers():
    w1, w2 = vessels.murray_daughters(1.0, 1.0, 3.0)
    assert w1 == w2 == pytest.approx(2 ** (-1 / 3))
    t1, t2 = vessels.murray_angles(1.0, w1, w2)
    assert np.degrees(t1 + t2) == pytest.approx(75.0, abs=0.5)  # Murray's symmetric optimum, about 75 degrees
    t1, t2 = vessels.murray_angles(1.0, *vessels.murray_daughters(1.0, 0.5, 3.0))
    assert t1 < t2  # the wider daughter deviates less


@pytest.mark.parametrize("name", list(cameras.CAMERAS))
def test_no_vessel_crosses_the_fovea(name):
    for seed in range(3):
        scene = draw_scene(np.random.default_rng(seed), cameras.CAMERAS[name], (576, 384), 0, 0, False)
        eye = scene.eye
        ys, xs = np.ogrid[:eye.height, :eye.width]
        centre = np.hypot(xs + 0.5 - eye.fovea_x, ys + 0.5 - eye.fovea_y) < 0.2 * eye.disc_diameter
        for opacity in scene.vessel_opacity.values():
            assert opacity[centre].max() == 0
        assert max(o.max() for o in scene.vessel_opacity.values()) > 0.9
