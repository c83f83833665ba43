"""Where each image came from, when its data root records it: the camera profile of a synthetic image.

Only this module reads synthetic.json, which the generators write at the root of a synthetic tree:
codebase.data.synthetic records {"images": {path relative to the root: {"camera", "defects"}}} and
codebase.data.synthetic_formats one "camera" for the whole tree. Real datasets have no such file,
so their cameras are unknown (None), as is an image synthetic.json does not list.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

SYNTHETIC_INFO = "synthetic.json"


def image_records(root) -> dict[str, dict]:
    """{path in the tree: {"camera", "defects"}} from a synthetic tree's synthetic.json ({} if absent)."""
    path = Path(root) / SYNTHETIC_INFO
    return json.loads(path.read_text()).get("images", {}) if path.exists() else {}


def camera_lookup(root) -> Callable[[str | Path], str | None]:
    """A function from an image's path (under ``root``, or relative to it) to the camera profile
    that took it, or None where the root records none (no synthetic.json, or the image not in it)."""
    root = Path(root)
    path = root / SYNTHETIC_INFO
    info = json.loads(path.read_text()) if path.exists() else {}
    if "images" not in info:
        whole_tree = info.get("camera") if isinstance(info.get("camera"), str) else None
        return lambda image_path: whole_tree
    cameras = {key: record.get("camera") for key, record in info["images"].items()}
    bases = (root, root.resolve())

    def camera_of(image_path):
        image_path = Path(image_path)
        if not image_path.is_absolute() and not image_path.is_relative_to(root):
            return cameras.get(image_path.as_posix())
        for base in bases:
            if image_path.is_relative_to(base):
                return cameras.get(image_path.relative_to(base).as_posix())
        return cameras.get(image_path.resolve().relative_to(bases[1]).as_posix()) \
            if image_path.resolve().is_relative_to(bases[1]) else None

    return camera_of
