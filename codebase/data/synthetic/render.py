"""One synthetic fundus photograph: anatomy, vessels and lesions drawn in a scene, then photographed
by a camera profile. Masks are the lesions' exact footprints; grades follow what was drawn."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codebase.data import idrid
from codebase.data.synthetic import anatomy, cameras, lesions, vessels
from codebase.data.synthetic.grading import macular_edema_risk, retinopathy_grade

LESION_INDEX = {code: i for i, code in enumerate(idrid.LESIONS)}


@dataclass
class Scene:
    """What was drawn before the camera: the eye, its vessel tree, the lesions and the scene image
    (float32 [H, W, 3], linear reflectance) with the masks (bool [5, H, W] or None)."""

    eye: anatomy.Eye
    tree: vessels.VesselTree
    lesions: list[lesions.Lesion]
    image: np.ndarray
    masks: np.ndarray | None
    vessel_opacity: dict[str, np.ndarray]


def plan_eye(rng, camera: cameras.Camera, size: tuple[int, int]) -> anatomy.Eye:
    width, height = size
    box = cameras.frame_box(camera, width, height)
    return anatomy.make_eye(rng, width, height, box, *cameras.field_geometry(rng, camera, box))


def draw_scene(rng, camera: cameras.Camera, size, rg: int, mer: int, soft_exudates: bool, haemorrhages: bool = True,
               with_masks: bool = True, ma_scale: float = 1.0, paint_lesions: bool = True) -> Scene:
    """The scene before the camera (see Scene); paint_lesions=False stops before the lesions are painted."""
    eye = plan_eye(rng, camera, size)
    tree = vessels.grow_tree(rng, eye)
    planned = lesions.plan(rng, eye, tree.arcade_points(), rg, mer, soft_exudates, haemorrhages, ma_scale)
    vessels.add_tufts(rng, tree, [(l.x, l.y, l.radius) for l in planned if l.kind == "NV"])
    image = anatomy.background(rng, eye)
    masks = np.zeros((len(idrid.LESIONS), eye.height, eye.width), bool) if with_masks else None
    anatomy.paint_disc(rng, image, masks, eye, LESION_INDEX["OD"])
    opacity = vessels.draw(image, tree, rng, tuft_width=max(0.4, 0.012 * eye.disc_diameter))
    scene = Scene(eye, tree, planned, image, masks, opacity)
    if paint_lesions:
        paint_all(rng, scene)
    return scene


def paint_all(rng, scene: Scene) -> None:
    for lesion in scene.lesions:
        if lesion.kind != "NV":
            lesions.paint(rng, scene.image, scene.masks, lesion, LESION_INDEX)


def grades(scene: Scene) -> tuple[int, int]:
    counts, distances = lesions.labels(scene.lesions, scene.eye)
    return retinopathy_grade(counts), macular_edema_risk(distances)


def render(rng: np.random.Generator, size: tuple[int, int], rg: int, mer: int, soft_exudates: bool,
           haemorrhages: bool = True, with_masks: bool = True, ma_scale: float = 1.0, camera=cameras.DEFAULT_CAMERA,
           record: dict | None = None):
    """One synthetic fundus photograph: (uint8 [H, W, 3], masks bool [5, H, W] in LESIONS order or None,
    rg, mer). `camera`: a profile name or Camera. rg/mer are targets; the grades returned are
    recomputed from what was drawn. `record`, if given, receives {"camera", "defects"}."""
    if isinstance(camera, str):
        camera = cameras.camera_named(camera)
    scene = draw_scene(rng, camera, size, rg, mer, soft_exudates, haemorrhages, with_masks, ma_scale)
    image, info = cameras.photograph(rng, camera, scene.eye, scene.image)
    if record is not None:
        record.update(info)
    return (image, scene.masks, *grades(scene))
