"""Synthetic IDRiD: fundus photographs drawn from measured anatomy, with lesions, exact masks and
rule-based grades, taken by several camera profiles.

`python -m codebase.data.synthetic OUT [--seed S] [--size WxH] [--seg-train N] [--seg-test N]
[--grade-train N] [--grade-test N] [--ma-scale F] [--camera NAME[,NAME...]]` writes the IDRiD tree
(names from `codebase.data.idrid`) with IDRiD's file quirks; `--preview OUT.png` draws a grid, one
row per camera, and `--stats` prints each camera's statistics beside published values.

Modules, each citing the facts it draws from:
  anatomy.py   disc, fovea, macula, background (choroid, mottling, tigroid)
  vessels.py   the vessel tree grown from the disc (Murray-type widths, branch angles, FAZ)
  lesions.py   MA, HE (dot, blot, flame), EX (clusters, circinate rings), SE, NV, PRH; exact masks
  grading.py   the rules by which grades follow the drawn lesions
  cameras.py   camera profiles: field shape, colour response, illumination, blur, noise, JPEG, defects
  render.py    one photograph: scene, then camera
  tree.py      the tree on disk and synthetic.json (each image's camera and defects; read back by
               codebase.data.provenance)
  preview.py   the preview grid and the statistics table
  cli.py       the command line
Same seed, same bytes.
"""
from codebase.data.synthetic.cameras import CAMERAS, DEFAULT_CAMERA, DEFAULT_MIX, HELD_OUT_CAMERA, camera_named
from codebase.data.synthetic.cli import main, parse_size
from codebase.data.synthetic.grading import SEVERE_HAEMORRHAGES, macular_edema_risk, retinopathy_grade
from codebase.data.synthetic.render import render
from codebase.data.provenance import image_records
from codebase.data.synthetic.tree import DEFAULT_COUNTS, DEFAULT_SIZE, ensure_dataset, generate

__all__ = ["CAMERAS", "DEFAULT_CAMERA", "DEFAULT_COUNTS", "DEFAULT_MIX", "DEFAULT_SIZE", "HELD_OUT_CAMERA",
           "SEVERE_HAEMORRHAGES",
           "camera_named", "ensure_dataset", "generate", "image_records", "macular_edema_risk", "main", "parse_size",
           "render", "retinopathy_grade"]
