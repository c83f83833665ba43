"""Anatomy: disc size and shape, disc-fovea distance, a darker macula."""
import numpy as np

from codebase.data.synthetic import anatomy, cameras
from codebase.data.synthetic.render import plan_eye


def eyes():
    for name, camera in cameras.CAMERAS.items():
        for seed in range(25):
            yield plan_eye(np.random.default_rng([seed, len(name)]), camera, (576, 384))


def test_disc_fovea_distance_is_2_to_3_disc_diameters_and_the_fovea_lies_temporal():
    distances = []
    for eye in eyes():
        distance = np.hypot(eye.fovea_x - eye.disc_x, eye.fovea_y - eye.disc_y) / eye.disc_diameter
        distances.append(distance)
        assert 2.0 <= distance <= 3.0
        assert np.sign(eye.fovea_x - eye.disc_x) == eye.temporal
        assert eye.inside(eye.disc_x, eye.disc_y, eye.disc_ry) and eye.inside(eye.fovea_x, eye.fovea_y)
    assert 2.4 < np.mean(distances) < 2.8  # 4.76 mm over a 1.84 mm disc: 2.59


def test_disc_is_a_vertical_oval_one_sixth_to_one_seventh_of_the_field():
    for eye in eyes():
        assert 1 / 7 - 1e-9 <= eye.disc_diameter / (2 * eye.radius) <= 1 / 6 + 1e-9
        assert 1.03 <= eye.disc_ry / eye.disc_rx <= 1.15


def test_macula_is_darker_than_the_fundus_around_it_and_darkest_at_the_fovea():
    for seed in range(3):
        rng = np.random.default_rng(seed)
        eye = plan_eye(rng, cameras.CAMERAS["ddr"], (576, 384))
        green = anatomy.background(rng, eye)[..., 1]
        ys, xs = np.ogrid[:eye.height, :eye.width]
        d = np.hypot(xs + 0.5 - eye.fovea_x, ys + 0.5 - eye.fovea_y) / eye.disc_diameter
        assert green[d < 0.1].mean() < green[(d > 0.4) & (d < 0.6)].mean() < green[(d > 1.8) & (d < 2.2)].mean()
