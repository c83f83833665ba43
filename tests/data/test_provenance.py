"""Which camera took an image, as a synthetic tree's synthetic.json records it."""
import json
import shutil
from pathlib import Path

from codebase.data import idrid
from codebase.data.provenance import camera_lookup, image_records


def test_camera_of_every_image_of_a_synthetic_tree(synthetic_root):
    records = image_records(synthetic_root)
    camera_of = camera_lookup(synthetic_root)
    grading = idrid.grading_records(synthetic_root, "test")
    segmentation = idrid.segmentation_records(synthetic_root, "train")
    for record in grading + segmentation:
        key = record.image_path.relative_to(synthetic_root).as_posix()
        assert camera_of(record.image_path) == records[key]["camera"] is not None
        assert camera_of(key) == records[key]["camera"]  # a path relative to the root
        assert camera_of(record.image_path.resolve()) == records[key]["camera"]
    assert len({camera_of(r.image_path) for r in idrid.grading_records(synthetic_root, "train")}) > 1  # a mix


def test_camera_unknown_without_synthetic_json_or_for_an_unlisted_image(synthetic_root, tmp_path):
    tree = Path(shutil.copytree(synthetic_root, tmp_path / "data", ignore=shutil.ignore_patterns(".cache")))
    image = idrid.grading_records(tree, "test")[0].image_path
    info = json.loads((tree / "synthetic.json").read_text())
    del info["images"][image.relative_to(tree).as_posix()]
    (tree / "synthetic.json").write_text(json.dumps(info))
    camera_of = camera_lookup(tree)
    assert camera_of(image) is None and camera_of(tmp_path / "elsewhere.jpg") is None
    assert camera_of(idrid.grading_records(tree, "test")[1].image_path) is not None
    (tree / "synthetic.json").unlink()
    assert camera_lookup(tree)(image) is None and image_records(tree) == {}


def test_an_external_formats_stand_in_has_one_camera_for_the_tree(tmp_path):
    (tmp_path / "synthetic.json").write_text(json.dumps({"format": "aptos", "camera": "aptos"}))
    assert camera_lookup(tmp_path)(tmp_path / "train_images" / "a.png") == "aptos"
