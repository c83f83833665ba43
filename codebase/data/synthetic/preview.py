"""A way to look at the generator: a preview grid (one row per camera, each image with its masks
beside it) and a statistics table per camera printed beside the published reference values.

    python -m codebase.data.synthetic --preview OUT.png [--camera NAME,...] [--seed S]
    python -m codebase.data.synthetic --stats [--camera NAME,...] [--seed S]

The statistics are measured on images rendered in each camera's own frame (its aspect ratio at a
height of STATS_HEIGHT pixels), so "whole image" is the camera's whole frame, as in the published
means. Reference values: mean RGB as in cameras.py; vessel area about 12% of the field (DRIVE's
manual segmentations, Staal et al., IEEE TMI 2004, counting vessels down to about a pixel at
565x584); disc diameter 1/7-1/6 of the field's; disc-fovea 4.76 +- 0.34 mm over a 1.84 mm disc,
2.6 +- 0.2 disc diameters; microaneurysms 10-25 px across at 4288x2848 (IDRiD's frame; the MA
column gives each camera's planned diameters in a 4288x2848 frame, where the other cameras' fields
are smaller than IDRiD's cut circle, so their microaneurysms are fewer pixels across).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from codebase.data import idrid
from codebase.data.synthetic import cameras
from codebase.data.synthetic.render import draw_scene, grades
from codebase.data.synthetic.lesions import MA_FIELD

STATS_HEIGHT = 384
MASK_COLOURS = {"MA": (255, 60, 60), "HE": (160, 0, 0), "EX": (255, 230, 0), "SE": (80, 220, 255), "OD": (0, 200, 0)}
PREVIEW_TARGETS = ((4, 2, True), (3, 1, True), (1, 0, False))


def _photograph(seed, camera, size, rg, mer, soft):
    rng = np.random.default_rng([seed, rg, mer, list(cameras.CAMERAS).index(camera.name)])
    scene = draw_scene(rng, camera, size, rg, mer, soft)
    image, info = cameras.photograph(rng, camera, scene.eye, scene.image.copy())
    return scene, image, info


def mask_picture(masks: np.ndarray) -> np.ndarray:
    """bool [5, H, W] -> uint8 [H, W, 3], one colour per lesion (OD under the others)."""
    picture = np.zeros(masks.shape[1:] + (3,), np.uint8)
    for lesion in ("OD", "SE", "EX", "HE", "MA"):
        picture[masks[idrid.LESIONS.index(lesion)]] = MASK_COLOURS[lesion]
    return picture


def preview(path, names=None, seed: int = 0, size=(432, 288)) -> None:
    """Write a grid: one row per camera, each of PREVIEW_TARGETS' images followed by its masks."""
    names = list(names or cameras.CAMERAS)
    width, height = size
    grid = Image.new("RGB", (2 * len(PREVIEW_TARGETS) * width, len(names) * height), (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    for row, name in enumerate(names):
        camera = cameras.camera_named(name)
        for col, (rg, mer, soft) in enumerate(PREVIEW_TARGETS):
            scene, image, info = _photograph(seed, camera, size, rg, mer, soft)
            x, y = 2 * col * width, row * height
            grid.paste(Image.fromarray(image), (x, y))
            grid.paste(Image.fromarray(mask_picture(scene.masks)), (x + width, y))
            got = grades(scene)
            label = f"{name} RG {got[0]} MER {got[1]}" + (f" [{', '.join(info['defects'])}]" if info["defects"] else "")
            draw.text((x + 6, y + 4), label, fill=(255, 255, 255))
    grid.save(path)


def camera_statistics(name: str, seed: int = 0, images: int = 8) -> dict:
    """Measured statistics of one camera's images (see the module docstring)."""
    camera = cameras.camera_named(name)
    size = (round(STATS_HEIGHT * camera.aspect), STATS_HEIGHT)
    whole, field, vessel, disc, fovea, ma = [], [], [], [], [], []
    for i in range(images):
        rg, mer, soft = PREVIEW_TARGETS[i % len(PREVIEW_TARGETS)]
        scene, image, _ = _photograph(seed + 1000 * i, camera, size, rg, mer, soft)
        eye = scene.eye
        inside = cameras.field_mask(camera, eye) > 0.5
        whole.append(image.reshape(-1, 3).mean(axis=0))
        field.append(image[inside].mean(axis=0))
        opacity = np.maximum(scene.vessel_opacity["artery"], scene.vessel_opacity["vein"])
        vessel.append(float((opacity[inside] > 0.5).mean()))
        disc.append(eye.disc_diameter / (2 * eye.radius))
        fovea.append(np.hypot(eye.fovea_x - eye.disc_x, eye.fovea_y - eye.disc_y) / eye.disc_diameter)
        # planned diameters, rescaled to a 4288x2848 frame of this camera's field
        full = 2 * cameras.field_geometry(np.random.default_rng(0), camera, cameras.frame_box(camera, 4288, 2848))[2]
        ma += [2 * l.radius * full / (2 * eye.radius) for l in scene.lesions if l.kind == "MA"]
    return {"camera": name, "whole": np.mean(whole, axis=0), "field": np.mean(field, axis=0),
            "target": camera.mean_rgb, "published": camera.published, "vessel": float(np.mean(vessel)),
            "disc": float(np.mean(disc)), "fovea": (float(np.mean(fovea)), float(np.std(fovea))),
            "ma": np.percentile(ma, [0, 50, 100]) if ma else np.zeros(3)}


def statistics_table(names=None, seed: int = 0, images: int = 8) -> str:
    """The statistics of each camera as a markdown table, with a reference row."""
    rgb = lambda v: "/".join(f"{x:.1f}" for x in v)  # noqa: E731
    lines = ["| camera | mean RGB whole image | target (published?) | mean RGB in field | vessel area | "
             "disc / field diameter | disc-fovea (DD) | MA diameter at 4288x2848 (min/median/max px) |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names or cameras.CAMERAS:
        s = camera_statistics(name, seed, images)
        lines.append(f"| {name} | {rgb(s['whole'])} | {rgb(s['target'])} ({'yes' if s['published'] else 'no'}) | "
                     f"{rgb(s['field'])} | {100 * s['vessel']:.1f}% | {s['disc']:.3f} | "
                     f"{s['fovea'][0]:.2f} +- {s['fovea'][1]:.2f} | {'/'.join(f'{v:.1f}' for v in s['ma'])} |")
    low, high = (3474 * v for v in MA_FIELD)
    lines.append(f"| reference | as target | | | about 12% (DRIVE) | 0.143-0.167 | 2.59 +- 0.19 | "
                 f"10-25 ({low:.1f}-{high:.1f} drawn) |")
    return "\n".join(lines)
